"""Stages 3-6 in one pass: segments -> windows -> emotion2vec+ ensemble, dimensions, gender.

Input columns (``schema.SEGMENT``): ``segment_id``, ``recording_id``, ``audio_path``, ``start``,
``end`` (seconds in the recording). Output columns, and only these (``schema.LABEL_OUTPUT``), one
entry per input segment, in input order:

- ``emotion_windows``: one ``schema.RAW_EMOTION_WINDOW`` per window of ``windows.window_spans`` with
  the emotion spec: ``start``/``end`` (the labelled span), ``emotion`` (the ensemble's own label,
  before the consistency filter), ``emotion_scores`` (nine, ``EMOTION_LABELS`` order), ``arousal``,
  ``dominance``, ``valence``;
- ``gender_windows``: one ``schema.GENDER_WINDOW`` per window of the gender spec: ``start``, ``end``,
  ``gender``, ``gender_score``;
- ``label_error``: null, or the segment's first error: the decode error when the segment's audio
  cannot be read (file and span named), else the first failed window in the order emotion windows
  (categorical, then dimensional) then gender windows, as ``<file> [<ctx span> s]: <problem>``.

Edge rules:
- Every window of ``window_spans`` is listed, failed or not (so window bounds never depend on
  the models); a failed window keeps what did succeed and has nulls for the rest. A segment whose
  audio does not decode lists its windows with null labels; the other segments are labelled.
- A segment too short for any window has empty window lists and no error (if its audio decodes).
- Each segment is decoded once, at 16 kHz, over ``[start, end)`` (``audio.decode_span``); a window
  is the slice ``[a, a + n)`` of it with ``a = round((ctx_start - start) * 16000)`` and
  ``n = round((ctx_end - ctx_start) * 16000)``, the same samples ``audio.decode_spans`` cuts when it
  decodes the segment's windows together.
- Decoding runs ahead of the models in ``loader_workers`` DataLoader processes (0: in this
  process); a decoding process dies with the process that started it (a killed rank leaves none
  behind holding its files and sockets).
- A segment's windows are batched on their own, never with another segment's: sorted by length
  (longest first, ties in window order) and cut into batches of ``batch_size``. Padding (masked,
  see ``build.models.emotion`` and ``build.models.batching``) moves a model's outputs by float rounding, so this
  makes a segment's labels a function of its own samples (with ``batch_size``, the device and the
  precision): the other segments of its shard, their order, the shard size, the number of
  processes and whatever a process labelled before (a build resumed after a crash) change
  nothing, bit for bit.
- ``on_segment_done(seconds)`` is called once per segment, failed or not, when its labels are
  final, with ``end - start``.
- ``precision``: ``auto`` (float16 on CUDA, float32 on CPU), ``float32``, ``float16``,
  ``bfloat16``, for all models on CUDA (emotion2vec stays in float32 on the CPU, see
  ``build.models.emotion``). Inputs are cast to the model's dtype; outputs come back as float32.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import devices
from ..core.config import Config
from ..core.errors import first_line, span_label
from ..core.schema import DIMENSIONS, SEGMENT
from ..core.windows import window_spans
from ..models import dimension, emotion, gender
from ..models.base import model_dtype
from ..sources.audio import SAMPLE_RATE, AudioError, decode_span

# Segments each loader worker decodes ahead of the models.
_PREFETCH = 4
_PR_SET_PDEATHSIG = 1  # prctl option (linux/prctl.h): the signal a process gets when its parent dies


class _SegmentAudio:
    """Map-style dataset: item i is ``(i, samples, None)`` or ``(i, None, error message)``."""

    def __init__(self, paths: Sequence[str], starts: Sequence[float], ends: Sequence[float]):
        self.paths, self.starts, self.ends = list(paths), list(starts), list(ends)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        path, start, end = self.paths[i], self.starts[i], self.ends[i]
        try:
            return i, decode_span(path, start, end), None
        except Exception as exc:  # a worker must never die: the error travels with the item
            return i, None, _decode_error(path, start, end, exc)


def _decode_error(path: str, start: float, end: float, exc: Exception) -> str:
    if isinstance(exc, AudioError):
        message = first_line(exc, with_type=False)
        if message.startswith(f"{path}: "):
            message = message[len(path) + 2 :]  # the span label names the file already
    else:
        message = first_line(exc)
    return f"{span_label(path, start, end)}: {message}"


def _keep(item):
    """Collate that leaves items alone: numpy arrays stay numpy arrays."""
    return item


def _spec(window: Mapping[str, Any] | Any) -> dict[str, float]:
    keys = ("label_s", "context_s", "min_last_fraction")
    if isinstance(window, Mapping):
        missing = [k for k in keys if k not in window]
        if missing:
            raise ValueError(f"window spec {dict(window)} lacks {missing}")
        return {k: float(window[k]) for k in keys}
    return {k: float(getattr(window, k)) for k in keys}


def _decoded_segments(dataset: _SegmentAudio, loader_workers: int):
    """Decoded segments in input order, decoded ahead in worker processes when asked."""
    if loader_workers < 0:
        raise ValueError(f"loader_workers must be >= 0, got {loader_workers}")
    if len(dataset) == 0:
        return iter(())
    from torch.utils.data import DataLoader

    extra = {"prefetch_factor": _PREFETCH, "worker_init_fn": functools.partial(_die_with_parent, os.getpid())}
    return iter(
        DataLoader(
            dataset, batch_size=None, shuffle=False, num_workers=loader_workers, collate_fn=_keep,
            **(extra if loader_workers else {}),
        )  # fmt: skip
    )


def _die_with_parent(parent: int, worker_id: int) -> None:
    """In a decoding process: have Linux kill it when ``parent`` (the rank) dies. Without this, a rank
    killed with SIGKILL leaves decoders blocked on a full pipe, holding its sockets: a restarted
    process group can then hang on the dead rank's address. The SIGTERM a launcher sends to the
    whole process group is the rank's to handle; the decoders end with it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the rank died before the line above ran
        os.kill(os.getpid(), signal.SIGKILL)


class _Job:
    """One window waiting for a model: where its result goes and the samples it hears."""

    __slots__ = ("window", "clip", "span")

    def __init__(self, window: int, clip: np.ndarray, span: tuple[str, float, float]):
        self.window, self.clip, self.span = window, clip, span


@dataclass(frozen=True)
class _Models:
    """What labels a window: model names, where and how they run, the batch size."""

    emotion: list[str]
    dimension: str
    gender: str
    device: str
    precision: str
    batch_size: int


def _length_batches(jobs: list[_Job], batch_size: int) -> list[list[_Job]]:
    """Jobs sorted by clip length (longest first; ties keep their order), cut into batches."""
    ordered = sorted(range(len(jobs)), key=lambda k: (-len(jobs[k].clip), k))
    return [[jobs[k] for k in ordered[i : i + batch_size]] for i in range(0, len(ordered), batch_size)]


def _label_emotion(jobs: list[_Job], models: _Models, rows: list[dict], errors: list[str | None]) -> None:
    """Categorical and dimensional labels of one segment's emotion windows, into ``rows`` and ``errors``."""
    for batch in _length_batches(jobs, models.batch_size):
        clips, spans = [job.clip for job in batch], [job.span for job in batch]
        categorical = emotion.classify_clips(
            clips, spans, model_ids=models.emotion, device=models.device, precision=models.precision
        )
        dimensional = dimension.classify_clips(
            clips, spans, model_id=models.dimension, device=models.device, precision=models.precision
        )
        for k, job in enumerate(batch):
            row = rows[job.window]
            row["emotion"] = categorical["emotion"][k]
            row["emotion_scores"] = categorical["emotion_scores"][k]
            for name in DIMENSIONS:
                row[name] = dimensional[name][k]
            errors[job.window] = categorical["emotion_error"][k] or dimensional["dimension_error"][k]


def _label_gender(jobs: list[_Job], models: _Models, rows: list[dict], errors: list[str | None]) -> None:
    """Gender labels of one segment's gender windows, into ``rows`` and ``errors``."""
    for batch in _length_batches(jobs, models.batch_size):
        labelled = gender.classify_clips(
            [job.clip for job in batch], [job.span for job in batch],
            model_id=models.gender, device=models.device, precision=models.precision,
        )  # fmt: skip
        for k, job in enumerate(batch):
            row = rows[job.window]
            row["gender"], row["gender_score"] = labelled["gender"][k], labelled["gender_score"][k]
            errors[job.window] = labelled["gender_error"][k]


def label_segments(
    segments: dict[str, list],
    config: Config,
    *,
    rank: int | None = None,
    on_segment_done: Callable[[float], None] | None = None,
) -> dict[str, list]:
    """emotion_windows, gender_windows, label_error for each segment (see the module docstring).

    Reads the config's ``emotion_window``, ``gender_window``, ``models`` and ``runtime`` (device,
    batch_size, loader_workers, precision) sections."""
    emotion_window, gender_window = dataclasses.asdict(config.emotion_window), dataclasses.asdict(config.gender_window)
    emotion_models, dimension_model, gender_model = list(config.models.emotion), config.models.dimension, config.models.gender
    rt = config.runtime
    device, batch_size, loader_workers, precision = rt.device, rt.batch_size, rt.loader_workers, rt.precision
    missing = [name for name in SEGMENT if name not in segments]
    if missing:
        raise ValueError(f"segments lack the column(s) {missing}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not emotion_models:
        raise ValueError("emotion_models is empty: the emotion stage needs at least one emotion2vec model")
    run_device = devices.device_for(rank, device)
    model_dtype(precision, run_device)  # refuse an unknown precision before any decoding
    models = _Models(list(emotion_models), dimension_model, gender_model, run_device, precision, batch_size)
    emotion_spec, gender_spec = _spec(emotion_window), _spec(gender_window)

    paths, starts, ends = segments["audio_path"], segments["start"], segments["end"]
    emotion_spans = [window_spans(s, e, **emotion_spec) for s, e in zip(starts, ends)]
    gender_spans = [window_spans(s, e, **gender_spec) for s, e in zip(starts, ends)]
    emotion_rows = [[_empty_emotion_window(lo, hi) for lo, hi, _, _ in spans] for spans in emotion_spans]
    gender_rows = [
        [{"start": lo, "end": hi, "gender": None, "gender_score": None} for lo, hi, _, _ in spans]
        for spans in gender_spans
    ]
    decode_errors: list[str | None] = [None] * len(paths)
    # Per segment, per window: the first error of the emotion (categorical or dimensional) and gender models.
    emotion_errors: list[list[str | None]] = [[None] * len(spans) for spans in emotion_spans]
    gender_errors: list[list[str | None]] = [[None] * len(spans) for spans in gender_spans]

    for i, audio, error in _decoded_segments(_SegmentAudio(paths, starts, ends), loader_workers):
        if audio is None:
            decode_errors[i] = error
        else:
            emotion_jobs = _jobs(audio, paths[i], starts[i], emotion_spans[i])
            _label_emotion(emotion_jobs, models, emotion_rows[i], emotion_errors[i])
            gender_jobs = _jobs(audio, paths[i], starts[i], gender_spans[i])
            _label_gender(gender_jobs, models, gender_rows[i], gender_errors[i])
        if on_segment_done is not None:
            on_segment_done(float(ends[i] - starts[i]))

    label_errors = [
        decode_errors[i]
        or next((e for e in emotion_errors[i] if e), None)
        or next((e for e in gender_errors[i] if e), None)
        for i in range(len(paths))
    ]
    return {"emotion_windows": emotion_rows, "gender_windows": gender_rows, "label_error": label_errors}


def _empty_emotion_window(start: float, end: float) -> dict:
    return {"start": start, "end": end, "emotion": None, "emotion_scores": None, **{name: None for name in DIMENSIONS}}


def _jobs(audio: np.ndarray, path: str, seg_start: float, spans) -> list[_Job]:
    """The segment's windows as slices of its decoded samples."""
    jobs = []
    for w, (_, _, ctx_start, ctx_end) in enumerate(spans):
        a = int(round((ctx_start - seg_start) * SAMPLE_RATE))
        length = int(round((ctx_end - ctx_start) * SAMPLE_RATE))
        jobs.append(_Job(w, audio[a : a + length], (path, ctx_start, ctx_end)))
    return jobs
