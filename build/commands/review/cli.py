"""``cpqa.py review``: serve the review app, export its configs, or import human pairs.

    cpqa.py review OUT [--host H] [--port P] [--share] [--auth FILE|env:NAME] [--overlap K] [--audio-root DIR]
    cpqa.py review export OUT
    cpqa.py review import OUT FILE.csv|FILE.jsonl

``OUT`` is a folder written by ``cpqa.py build`` (to review a folder named ``export`` or ``import``,
write ``./export``). ``export`` and ``import`` read no audio (a metadata-only build needs no
``--audio-root`` for them). Every error a user can cause ends in one line (``import``: one per bad row).
"""

from __future__ import annotations

import argparse
import sys

from .export import export_review
from .imports import ImportErrors, import_pairs
from .options import USAGE
from .serve import check_access, read_auth, serve
from .session import Review


def run(args: argparse.Namespace, say=print) -> int:
    words = args.words
    if words[0] == "export" and len(words) == 2:
        review = Review.open(words[1], audio=False)
        rows, section = export_review(review.state())
        say(section.rstrip())
        say(
            "wrote "
            + ", ".join(f"{name} ({n} rows)" if n else f"{name} (none)" for name, n in rows.items())
            + f" in {review.build.out / 'data'}"
        )
        return 0
    if words[0] == "import" and len(words) == 3:
        review = Review.open(words[1], audio=False)
        try:
            n = import_pairs(review, words[2])
        except ImportErrors as errors:
            for line in errors.lines:
                print(f"cpqa review import: {line}", file=sys.stderr)
            print("cpqa review import: nothing imported", file=sys.stderr)
            return 1
        say(f"imported {n} human pairs into {review.store.path}")
        return 0
    if len(words) != 1:
        raise ValueError(f"expected {USAGE}, got: {' '.join(words)}")
    users = read_auth(args.auth) if args.auth else None
    check_access(args.host, args.share, users)  # before anything is read
    serve(Review.open(words[0], args.audio_root, args.overlap), args.host, args.port, args.share, users, say)
    return 0
