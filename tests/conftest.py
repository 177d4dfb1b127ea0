"""Shared fixtures: the bundled real audio and the tiny random-weight models (built once per session)."""

import os

# Tests never download: fail loudly if anything tries to reach a hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import csv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
AMI = SAMPLES / "ami_es2004_excerpt.flac"
APOLLO = SAMPLES / "apollo11.mp3"
RAVDESS_CLIPS = SAMPLES / "ravdess_clips.csv"


def ravdess_recording(actor: int) -> Path:
    return SAMPLES / f"ravdess_actor{actor:02d}.flac"


def ravdess_clips() -> list[dict]:
    """Where each RAVDESS clip lies in the joined recordings, with its human labels."""
    with open(RAVDESS_CLIPS, newline="") as f:
        return [{**row, "start": float(row["start"]), "end": float(row["end"])} for row in csv.DictReader(f)]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    from build.models.tiny import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture(scope="session")
def tiny_config(tiny_models):
    from build.core.config import tiny_config

    return tiny_config(str(tiny_models))


@pytest.fixture
def silence_wav(tmp_path) -> Path:
    import numpy as np
    import soundfile as sf

    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16_000 * 5, dtype=np.float32), 16_000)
    return path


@pytest.fixture(scope="session")
def audited_build(tmp_path_factory, tiny_config):
    """A small full build with drops at most stages (tests/audited_build.py), built once per session."""
    from audited_build import build_audited

    return build_audited(tmp_path_factory.mktemp("audited"), tiny_config)
