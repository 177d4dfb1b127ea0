#!/usr/bin/env bash
# Set up everything cpqa needs on a fresh Debian/Ubuntu machine: FFmpeg's shared libraries (torchcodec
# decodes audio with them), Chromium (the review app's browser tests drive it with Playwright) and a
# virtual environment in .venv with the pinned requirements.
# Idempotent: a second run only checks. Usage: bash setup.sh
set -euo pipefail
cd "$(dirname "$0")"

PACKAGES=""
ldconfig -p 2>/dev/null | grep -q 'libavcodec\.so' || PACKAGES="ffmpeg"
[ -x /usr/bin/chromium ] || PACKAGES="$PACKAGES chromium"
if [ -n "$PACKAGES" ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q $PACKAGES
fi

PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -r requirements.txt
.venv/bin/python -m pip check
