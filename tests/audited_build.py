"""One small end-to-end build with a drop at most stages, shared by tests/test_drops.py and
tests/test_determinism.py (session fixture ``audited_build`` in conftest): the smallest source that
yields QA pairs (one RAVDESS recording, one 57 s segment) plus a file refused at each early step.

The loopback LLM writes four pairs per segment; the post-filter drops two of them (a question about
the transcript, a near-duplicate), so every kind of row the build can drop is written somewhere.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from conftest import AMI, ravdess_recording
from openai_stub import OpenAIStub

from build import pipeline
from build.core.config import PAPER_ALPHA, Config
from build.sources.audio import decode_span

PAIRS = [
    {"question": "How does the speaker feel?", "answer": "Afraid, by the sound of it."},
    {"question": "Is the speaker male or female?", "answer": "Male."},
    {"question": "Which word of the transcript is stressed?", "answer": "Dogs."},  # presupposes a transcript
    {"question": "How does the speaker feel?", "answer": "Scared."},  # near-duplicate of the first
]


def reply(request: dict) -> str:
    return json.dumps({"pairs": PAIRS})


def audited_config(tiny_config: Config, base_url: str) -> Config:
    # α = 1 and x = y = 0: every target-emotion window counts, whatever the random weights say
    alpha = json.dumps({label: 1 for label in PAPER_ALPHA})
    return tiny_config.with_overrides(["condense.x=0", "condense.y=0", f"condense.alpha={alpha}", "qa.max_retries=0", f"qa.base_url={base_url}"])


def audited_source(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ravdess_recording(1), folder / "actor01.flac")
    shutil.copy(ravdess_recording(1), folder / "actor01_copy.flac")  # a duplicate: processed once
    sf.write(folder / "silence.wav", np.zeros(16_000 * 10, dtype=np.float32), 16_000)  # no speech
    sf.write(folder / "short.wav", decode_span(str(AMI), 0.0, 12.0), 16_000)  # shorter than 30 s
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")  # unreadable
    return folder


@dataclass
class AuditedBuild:
    result: pipeline.BuildResult
    source: Path
    out: Path
    config: Config


def build_audited(root: Path, tiny_config: Config) -> AuditedBuild:
    source = audited_source(root / "source")
    with OpenAIStub(reply) as stub:
        config = audited_config(tiny_config, stub.base_url)
        result = pipeline.build(source, config, root / "out", progress=False)
    return AuditedBuild(result, source, root / "out", config)
