"""build.stages.label: one decode per segment, windows sliced from it, each segment's windows in its own
length-sorted model batches.

Real bundled audio (AMI at 16 kHz, a RAVDESS actor recording, Apollo 11 as an 8 kHz mp3 that the
decoder resamples) and the tiny random-weight models of ``build.models.tiny``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import AMI, APOLLO, ravdess_recording

from build.core.config import WindowSpec
from build.core.schema import (
    DIMENSIONS,
    EMOTION_LABELS,
    GENDER_LABELS,
    GENDER_WINDOW,
    LABEL_OUTPUT,
    RAW_EMOTION_WINDOW,
)
from build.core.windows import explode_windows, window_spans
from build.models.dimension import label_dimensions
from build.models.emotion import label_categorical_emotion
from build.models.gender import label_gender
from build.stages.label import label_segments

# Every segment's windows reach both of its ends (a kept remainder, or context reaching the end),
# so the window map functions, which decode the range covering a batch's windows, decode exactly
# the segment's range when given one segment's windows: the same samples label_segments slices.
SEGMENTS = {
    "segment_id": ["ami-0000", "ravdess-0000", "apollo-0000", "ami-0001"],
    "recording_id": ["ami", "ravdess", "apollo", "ami"],
    "audio_path": [str(AMI), str(ravdess_recording(1)), str(APOLLO), str(AMI)],
    "start": [3.0, 0.0, 20.0, 12.5],
    "end": [10.0, 9.3, 26.0, 20.9],  # 7 s (1 s remainder kept), 9.3 s, 6 s, 8.4 s (0.4 s dropped)
}


def rows(segments: dict[str, list], indices) -> dict[str, list]:
    return {name: [values[i] for i in indices] for name, values in segments.items()}


def label(config, segments: dict[str, list], on_segment_done=None, gender_window=None, **runtime) -> dict[str, list]:
    """label_segments on CPU, batches of 4, decoding in-process; ``runtime`` overrides those settings."""
    settings = {"device": "cpu", "batch_size": 4, "loader_workers": 0, **runtime}
    config = dataclasses.replace(config, runtime=dataclasses.replace(config.runtime, **settings))
    if gender_window is not None:
        config = dataclasses.replace(config, gender_window=WindowSpec(**gender_window))
    return label_segments(segments, config, on_segment_done=on_segment_done)


def spans(config, segments, i, which: str) -> list[tuple[float, float]]:
    spec = config.emotion_window if which == "emotion" else config.gender_window
    return [
        (lo, hi)
        for lo, hi, _, _ in window_spans(
            segments["start"][i], segments["end"][i], spec.label_s, spec.context_s, spec.min_last_fraction
        )
    ]


@pytest.fixture(scope="module")
def labelled(tiny_config):
    return label(tiny_config, SEGMENTS)


def test_windows_are_those_of_window_spans_with_full_labels(tiny_config, labelled):
    assert set(labelled) == set(LABEL_OUTPUT)
    assert labelled["label_error"] == [None] * 4
    for i in range(4):
        emotion_windows, gender_windows = labelled["emotion_windows"][i], labelled["gender_windows"][i]
        assert [(w["start"], w["end"]) for w in emotion_windows] == spans(tiny_config, SEGMENTS, i, "emotion")
        assert [(w["start"], w["end"]) for w in gender_windows] == spans(tiny_config, SEGMENTS, i, "gender")
        for w in emotion_windows:
            assert set(w) == set(RAW_EMOTION_WINDOW)
            assert len(w["emotion_scores"]) == len(EMOTION_LABELS)
            assert w["emotion"] == EMOTION_LABELS[int(np.argmax(w["emotion_scores"]))]
            assert all(isinstance(w[name], float) for name in DIMENSIONS)
        for w in gender_windows:
            assert set(w) == set(GENDER_WINDOW)
            assert w["gender"] in GENDER_LABELS and 0.5 <= w["gender_score"] <= 1.0
    assert len(labelled["emotion_windows"][0]) == 4  # 3 full windows and the 1 s remainder
    assert len(labelled["emotion_windows"][3]) == 4  # the 0.4 s remainder is dropped


def test_labels_equal_those_of_the_window_map_functions(tiny_config, labelled):
    config = tiny_config
    for i in range(4):
        segment = rows(SEGMENTS, [i])
        emotion_rows = explode_windows(segment, **dataclasses.asdict(config.emotion_window))
        gender_rows = explode_windows(segment, **dataclasses.asdict(config.gender_window))
        for windows in (emotion_rows, gender_rows):  # the precondition of the exact comparison
            assert (min(windows["ctx_start"]), max(windows["ctx_end"])) == (SEGMENTS["start"][i], SEGMENTS["end"][i])
        categorical = label_categorical_emotion(emotion_rows, model_ids=list(config.models.emotion), device="cpu")
        dimensional = label_dimensions(emotion_rows, model_id=config.models.dimension, device="cpu")
        genders = label_gender(gender_rows, model_id=config.models.gender, device="cpu")
        emotion_windows, gender_windows = labelled["emotion_windows"][i], labelled["gender_windows"][i]

        # FunASR runs every clip on its own, and the clip is the same slice of the same decode:
        # the scores are equal, not just close.
        # pooled batches only reorder float32 sums (build.models.emotion pads with the mask FunASR uses)
        np.testing.assert_allclose([w["emotion_scores"] for w in emotion_windows], categorical["emotion_scores"], rtol=0, atol=1e-6)
        assert [w["emotion"] for w in emotion_windows] == categorical["emotion"]
        # The transformers models get other batches here (other windows beside them, padding with
        # a mask where lengths differ), which moves their outputs by float rounding only.
        for name in DIMENSIONS:
            np.testing.assert_allclose([w[name] for w in emotion_windows], dimensional[name], rtol=0, atol=1e-5)
        assert [w["gender"] for w in gender_windows] == genders["gender"]
        np.testing.assert_allclose([w["gender_score"] for w in gender_windows], genders["gender_score"], rtol=0, atol=1e-5)


def test_output_follows_input_order_and_other_segments_do_not_matter(tiny_config, labelled):
    order = [2, 0, 3, 1]
    shuffled = label(tiny_config, rows(SEGMENTS, order))
    alone = [label(tiny_config, rows(SEGMENTS, [i])) for i in range(4)]
    for position, i in enumerate(order):
        # a segment's windows are batched on their own (before, windows of several segments shared
        # a batch and its padding): the same labels bit for bit, whatever segments come with it and
        # in which order (a shard resumed, re-cut or run on another number of processes)
        for other, j in ((shuffled, position), (alone[i], 0)):
            assert other["emotion_windows"][j] == labelled["emotion_windows"][i]
            assert other["gender_windows"][j] == labelled["gender_windows"][i]
    # the segments really differ, so a mix-up would show
    first_scores = {tuple(labelled["emotion_windows"][i][0]["emotion_scores"]) for i in range(4)}
    assert len(first_scores) == 4


def test_missing_file_fails_only_its_segment(tiny_config, labelled, tmp_path):
    missing = str(tmp_path / "gone.wav")
    segments = rows(SEGMENTS, [0, 1])
    segments = {name: [values[0], None, values[1]] for name, values in segments.items()}
    segments.update(segment_id=["ami-0000", "gone-0000", "ravdess-0000"], recording_id=["ami", "gone", "ravdess"])
    segments["audio_path"][1], segments["start"][1], segments["end"][1] = missing, 0.0, 6.0

    out = label(tiny_config, segments)

    assert out["label_error"][0] is None and out["label_error"][2] is None
    assert out["label_error"][1].startswith(f"{missing} [0.000-6.000 s]: cannot open as audio (")
    failed = out["emotion_windows"][1]
    assert [(w["start"], w["end"]) for w in failed] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    assert all(w[key] is None for w in failed for key in ("emotion", "emotion_scores", *DIMENSIONS))
    assert all(w["gender"] is None and w["gender_score"] is None for w in out["gender_windows"][1])
    for got, i in ((0, 0), (2, 1)):  # the failed segment changes nothing for the others
        assert out["emotion_windows"][got] == labelled["emotion_windows"][i]
        assert out["gender_windows"][got] == labelled["gender_windows"][i]


def test_a_window_the_model_rejects_names_its_file_and_span(tiny_config):
    # 10 ms gender windows: 160 samples, shorter than the 400-sample receptive field of wav2vec2.
    # The emotion spec gives this 20 ms segment no window at all.
    segments = rows(SEGMENTS, [1])
    segments["start"][0], segments["end"][0] = 1.0, 1.02
    out = label(tiny_config, segments, gender_window={"label_s": 0.01, "context_s": 0.0, "min_last_fraction": 0.5})

    assert out["emotion_windows"] == [[]]
    assert out["gender_windows"] == [[
        {"start": 1.0, "end": 1.01, "gender": None, "gender_score": None},
        {"start": 1.01, "end": 1.02, "gender": None, "gender_score": None},
    ]]
    path = SEGMENTS["audio_path"][1]
    assert out["label_error"] == [f"{path} [1.000-1.010 s]: too short for the model (160 samples give no frame)"]


def test_loader_workers_and_repeated_calls_give_identical_results(tiny_config, labelled):
    in_workers = label(tiny_config, SEGMENTS, loader_workers=2)
    again = label(tiny_config, SEGMENTS, loader_workers=2)
    assert in_workers == labelled  # loader_workers=0 decoded in this process
    assert again == in_workers


def test_on_segment_done_gets_each_segment_duration_once(tiny_config, tmp_path):
    segments = {name: values + values[:1] for name, values in SEGMENTS.items()}
    segments["audio_path"][-1] = str(tmp_path / "gone.flac")  # a failed segment is done too
    done: list[float] = []
    # batch_size 2: each segment's 7-10 windows run in several batches
    out = label(tiny_config, segments, batch_size=2, on_segment_done=done.append)
    assert done == [end - start for start, end in zip(segments["start"], segments["end"])]
    assert [error is None for error in out["label_error"]] == [True] * 4 + [False]


def test_precision(tiny_config, labelled):
    segments = rows(SEGMENTS, [0])
    bf16 = label(tiny_config, segments, precision="bfloat16")
    # on the CPU emotion2vec runs in float32 whatever the precision: the same scores up to batching
    np.testing.assert_allclose([w["emotion_scores"] for w in bf16["emotion_windows"][0]], [
        w["emotion_scores"] for w in labelled["emotion_windows"][0]
    ], rtol=0, atol=1e-6)
    # the transformers models ran in bfloat16 (8 bits of mantissa) and came back as float32
    valence = [w["valence"] for w in bf16["emotion_windows"][0]]
    reference = [w["valence"] for w in labelled["emotion_windows"][0]]
    assert valence != reference
    np.testing.assert_allclose(valence, reference, atol=2e-3)
    assert all(np.float32(v) == v for v in valence)

    fp16 = label(tiny_config, segments, precision="float16")
    fp16_scores = [w["emotion_scores"] for w in fp16["emotion_windows"][0]]
    reference_scores = [w["emotion_scores"] for w in labelled["emotion_windows"][0]]
    np.testing.assert_allclose(fp16_scores, reference_scores, rtol=0, atol=1e-6)  # float32 on the CPU
    fp16_valence = [w["valence"] for w in fp16["emotion_windows"][0]]
    assert fp16_valence != reference
    np.testing.assert_allclose(fp16_valence, reference, atol=5e-4)

    with pytest.raises(ValueError, match="precision 'float8' is not one of"):
        label(tiny_config, segments, precision="float8")
