"""A small built folder for the review tests, written by the build's own export (``export.write_dataset``)
from hand-made segments, pairs and empathy samples over the bundled audio: three clips on two
recordings in two splits (recording-disjoint), six LLM pairs (one of them hostile HTML), two empathy
samples. Seconds to make, and faithful to what ``cpqa.py build`` writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from conftest import AMI, REPO, ravdess_recording
from datasets import Dataset

from build import pipeline
from build.core.config import paper_config
from build.core.schema import EMOTION_LABELS
from build.publishing import export

XSS = "<img src=x onerror=alert(1)> {{constructor}} ${alert(2)}"
# (segment_id, recording, audio, start, end, primary emotion, gender)
CLIPS = [
    ("ami-0000", "ami", AMI, 2.0, 34.0, "happy", "female"),
    ("ami-0001", "ami", AMI, 30.0, 60.0, "sad", "male"),
    ("rav-0000", "rav", ravdess_recording(1), 1.0, 33.5, "fearful", "male"),
]
PAIRS = {
    "ami-0000": [
        ("How does the speaker feel?", "Pleased.", "emotion"),
        ("Is the speaker a man or a woman?", "A woman.", "speaker"),
        ("Why does she sound pleased?", "The remote works.", "contextual paralinguistic reasoning"),
    ],
    "ami-0001": [
        (XSS, "An answer with <b>tags</b> & ampersands", "other"),
        ("How does he feel?", "Sad.", "emotion"),
    ],
    "rav-0000": [("What is said about the dogs?", "They are by the door.", "other")],
}
WORDS = [
    ("menu", 1.0, 1.4, "happy", "female"),
    ("on", 7.25, 7.5, "neutral", "female"),
    ("<script>x</script>", 15.02, 15.31, "sad", "male"),
    ("remote", 29.4, 29.95, "happy", "female"),
]


def _segment(segment_id, recording, audio, start, end, emotion, gender) -> dict:
    words = [
        {
            "word": w,
            "start": start + lo,
            "end": start + hi,
            "score": 0.9,
            "speaker": None,
            "emotion": e,
            "gender": g,
        }
        for w, lo, hi, e, g in WORDS
    ]
    words.append(
        {
            "word": "uh",
            "start": None,
            "end": None,
            "score": None,
            "speaker": None,
            "emotion": None,
            "gender": None,
        }
    )
    return {
        "segment_id": segment_id,
        "recording_id": recording,
        "audio_path": str(audio),
        "start": start,
        "end": end,
        "emotion_windows": [
            {
                "start": start,
                "end": start + 2,
                "emotion": emotion,
                "raw_emotion": emotion,
                "emotion_scores": [0.1] * 9,
                "arousal": 0.5,
                "dominance": 0.5,
                "valence": 0.7,
                "consistent": True,
            }
        ],
        "gender_windows": [{"start": start, "end": start + 2, "gender": gender, "gender_score": 0.8}],
        "emotion_counts": {label: int(label == emotion) * 5 for label in EMOTION_LABELS},
        "emotions": [emotion],
        "primary_emotion": emotion,
        "gender": gender,
        "transcript": " ".join(w["word"] for w in words),
        "language": "en",
        "aligner": "faster-whisper",
        "tagged_words": words,
        "llm_model": "stub-model",
        "prompt_version": "qa_v2",
    }


def _empathy(segment: dict, emotion: str) -> dict:
    return {
        "segment_id": segment["segment_id"],
        "recording_id": segment["recording_id"],
        "audio_path": segment["audio_path"],
        "clip_start": segment["start"],
        "clip_end": segment["end"],
        "text_context": [{"speaker": "SPEAKER_00", "text": "menu on"}],
        "target_utterance": {
            "text": "the remote",
            "start": 15.0,
            "end": 30.0,
            "emotions": {"primary": emotion, "secondary": None},
        },
        "desired_response": {
            "text": "That sounds hard <i>really</i>.",
            "response_strategy": "validation",
            "emotion_awareness": "tense",
        },
        "empathy_raw": "{}",
        "prompt_version": "empathy_v1",
        "llm_model": "stub-model",
    }


def write_review_build(out: Path, publish: str = "full") -> Path:
    segments = [_segment(*clip) for clip in CLIPS]
    pairs = [
        {
            "segment_id": s["segment_id"],
            "recording_id": s["recording_id"],
            "pair_index": i,
            "question": q,
            "answer": a,
            "category": c,
        }
        for s in segments
        for i, (q, a, c) in enumerate(PAIRS[s["segment_id"]])
    ]
    empathy = [_empathy(segments[0], "happy"), _empathy(segments[2], "fearful")]
    config = paper_config()
    # train a little larger, so that the first recording goes to train (a tie would go to "test" by name)
    config = dataclasses.replace(
        config, export=dataclasses.replace(config.export, publish=publish, splits={"train": 0.51, "test": 0.49})
    )
    report = {"counts": {"recordings": 2, "condensed segments": 3, "QA pairs kept": 6}, "drops": {}}
    export.write_dataset(
        Dataset.from_list(segments),
        Dataset.from_list(pairs),
        config,
        out,
        models=pipeline.model_ids(config),
        report=report,
        card_template=(REPO / "dataset_card.md").read_text(),
        license="cc-by-4.0",
        sources="AMI and RAVDESS excerpts.",
        build_id="review-test-build",
        empathy=Dataset.from_list(empathy),
    )
    return out


_BUILT: dict[str, Path] = {}


def cached_review_build(tmp_path_factory, publish: str = "full") -> Path:
    """The build once per test process (copy it before changing anything in it)."""
    if publish not in _BUILT:
        _BUILT[publish] = write_review_build(
            tmp_path_factory.mktemp(f"review-build-{publish}") / "out", publish
        )
    return _BUILT[publish]
