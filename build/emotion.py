"""Stage 4, categorical SER: an emotion2vec+ ensemble run through FunASR, posteriors averaged.

Input columns (one row per labelling window): ``audio_path``, ``ctx_start``, ``ctx_end`` (seconds;
the span the model hears). Output columns, and only these (``schema.CATEGORICAL_OUTPUT``):

- ``emotion``: the label with the highest averaged posterior, one of ``schema.EMOTION_LABELS``;
- ``emotion_scores``: nine floats, the ensemble's mean posterior in ``EMOTION_LABELS`` order;
- ``emotion_error``: null, or a message naming the file and the problem (then the other two are
  null). A window that fails never fails its batch.

Each member is a FunASR ``AutoModel`` (hub id or local folder), loaded once per process and device.
Its labels are bilingual tokens (``生气/angry``, ``<unk>``); they are parsed and each member's scores
are put into ``EMOTION_LABELS`` order by label, never by position, because checkpoints differ
(the 5-class releases of emotion2vec+ hide four labels, which then get probability 0).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from . import devices
from .audio import SAMPLE_RATE, AudioError, decode_spans
from .schema import EMOTION_LABELS

# FunASR maps the ModelScope ids (iic/emotion2vec_plus_*) to their Hugging Face mirrors
# (emotion2vec/emotion2vec_plus_*), so "hf" serves the paper's ids through the HF cache and
# HF_HUB_OFFLINE; "ms" (FunASR's default) downloads the same checkpoints from ModelScope.
DEFAULT_HUB = "hf"
# FunASR's placeholder for a label hidden in a 5-class checkpoint; it masks these to probability 0.
_UNUSED_TOKEN_PREFIX = "unuse"
_LABEL_INDEX = {label: i for i, label in enumerate(EMOTION_LABELS)}


def parse_emotion_label(token: str, model_id: str | None = None) -> str:
    """``生气/angry`` -> ``angry``; ``<unk>`` -> ``unknown``; plain English labels pass through."""
    label = "unknown" if token.strip() == "<unk>" else token.rsplit("/", 1)[-1].strip().lower()
    if label not in _LABEL_INDEX:
        source = f" from {model_id}" if model_id else ""
        raise ValueError(f"unknown emotion2vec label token {token!r}{source}; expected one of {EMOTION_LABELS}")
    return label


def scores_in_label_order(
    labels: Sequence[str], scores: Sequence[float], model_id: str | None = None
) -> list[float]:
    """One member's (labels, scores) as nine scores in ``EMOTION_LABELS`` order; absent labels get 0."""
    if len(labels) != len(scores):
        raise ValueError(f"{model_id}: {len(labels)} labels but {len(scores)} scores")
    ordered = [0.0] * len(EMOTION_LABELS)
    seen: set[str] = set()
    for token, score in zip(labels, scores):
        if token.startswith(_UNUSED_TOKEN_PREFIX):
            continue
        label = parse_emotion_label(token, model_id)
        if label in seen:
            raise ValueError(f"{model_id}: label {label!r} appears twice in {list(labels)}")
        seen.add(label)
        ordered[_LABEL_INDEX[label]] = float(score)
    return ordered


def average_posteriors(posteriors: Sequence[Sequence[float]]) -> list[float]:
    """Mean of the members' posteriors, each renormalised to sum to 1 first."""
    if not posteriors:
        raise ValueError("no posteriors to average")
    matrix = np.asarray(posteriors, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"posteriors must all have the same length, got {[len(p) for p in posteriors]}")
    totals = matrix.sum(axis=1, keepdims=True)
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0) or np.any(totals <= 0):
        raise ValueError(f"posteriors must be finite, non-negative and not all zero: {matrix.tolist()}")
    return (matrix / totals).mean(axis=0).tolist()


@contextmanager
def funasr_side_effects_contained() -> Iterator[None]:
    """Keep FunASR's process-wide side effects out: ``import funasr`` imports every submodule, one of
    which calls ``logging.basicConfig(level=INFO)``; building a model calls ``basicConfig`` again and
    reseeds ``random``, ``numpy`` and ``torch`` (CPU state restored here); ``generate`` draws from
    ``random``. Its prints ("funasr version: ...") go to stderr, leaving stdout to the caller."""
    import contextlib
    import sys

    import torch

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]), contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)


def _load_member(model_id: str, device: str, hub: str):
    import torch

    with funasr_side_effects_contained():
        from funasr import AutoModel
    # A second block, so that AutoModel's basicConfig(level=log_level) is the one in force while it loads.
    with funasr_side_effects_contained():
        return AutoModel(
            model=model_id,
            hub=hub,
            device=device,
            disable_update=True,  # no version check over the network
            disable_pbar=True,
            log_level="WARNING",
            # FunASR sets torch's thread count to ncpu (default 4) on load and on every generate call.
            ncpu=torch.get_num_threads(),
        )


def _load_member_or_explain(model_id: str, device: str, hub: str):
    try:
        return _load_member(model_id, device, hub)
    except Exception as exc:
        # FunASR prints a failed download and then fails with "model '<id>' is not registered".
        raise RuntimeError(
            f"cannot load emotion2vec model {model_id!r} (hub={hub!r}, device={device!r}): {_first_line(exc)}. "
            "A hub id needs network access or a warm cache; a local folder needs config.yaml, model.pt "
            "and tokens.txt."
        ) from exc


def _member(model_id: str, device: str, hub: str):
    key = ("emotion2vec", model_id, device, hub)
    return devices.cached(key, lambda: _load_member_or_explain(model_id, device, hub))


def _generate(model, clips: list[np.ndarray]) -> list[dict]:
    with funasr_side_effects_contained():  # generate draws its random item keys from `random`
        results = model.generate(
            clips,
            batch_size=len(clips),
            fs=SAMPLE_RATE,
            granularity="utterance",
            extract_embedding=False,
        )
    if len(results) != len(clips):
        raise RuntimeError(f"FunASR returned {len(results)} results for {len(clips)} clips")
    return results


def _member_posteriors(model_id: str, model, clips: list[np.ndarray]) -> list[list[float] | Exception]:
    """Posteriors of one member, in input order. FunASR gives every array in a list the same key,
    so results are matched to clips by position. If the batch fails, each clip is retried alone
    to find the ones at fault."""
    try:
        results = _generate(model, clips)
    except Exception:
        results = []
        for clip in clips:
            try:
                results.extend(_generate(model, [clip]))
            except Exception as exc:
                results.append(exc)
    return [
        r if isinstance(r, Exception) else scores_in_label_order(r["labels"], r["scores"], model_id) for r in results
    ]


def _span(path: str, start: float, end: float) -> str:
    return f"{path} [{start:.3f}-{end:.3f} s]"


def _decode_windows(paths: list[str], starts: list[float], ends: list[float]) -> tuple[list, list[str | None]]:
    """The windows' samples, and per window None or why it cannot be labelled."""
    clips = decode_spans(paths, starts, ends)
    errors: list[str | None] = []
    for path, start, end, clip in zip(paths, starts, ends, clips):
        if isinstance(clip, AudioError):
            errors.append(str(clip))  # names the file already
        elif clip.size == 0:
            errors.append(f"{_span(path, start, end)}: empty span")
        else:
            errors.append(None)
    return clips, errors


def label_categorical_emotion(
    batch: dict[str, list],
    rank: int | None = None,
    *,
    model_ids: list[str],
    device: str = "auto",
    hub: str = DEFAULT_HUB,
) -> dict[str, list]:
    """Batched map function: emotion, emotion_scores, emotion_error for each window."""
    if not model_ids:
        raise ValueError("model_ids is empty: the emotion stage needs at least one emotion2vec model")
    paths, starts, ends = batch["audio_path"], batch["ctx_start"], batch["ctx_end"]
    clips, errors = _decode_windows(paths, starts, ends)
    usable = [i for i, error in enumerate(errors) if error is None]

    posteriors: dict[int, list[list[float]]] = {i: [] for i in usable}
    if usable:
        run_device = devices.device_for(rank, device)
        for model_id in model_ids:
            member = _member(model_id, run_device, hub)
            for i, posterior in zip(usable, _member_posteriors(model_id, member, [clips[i] for i in usable])):
                if isinstance(posterior, Exception) and errors[i] is None:
                    errors[i] = f"{_span(paths[i], starts[i], ends[i])}: {model_id} failed ({_first_line(posterior)})"
                elif not isinstance(posterior, Exception):
                    posteriors[i].append(posterior)

    emotions: list[str | None] = [None] * len(paths)
    scores: list[list[float] | None] = [None] * len(paths)
    for i in usable:
        if errors[i] is not None:
            continue
        try:  # a member can emit NaN (e.g. in half precision); that fails this window only
            scores[i] = average_posteriors(posteriors[i])
        except ValueError as exc:
            errors[i] = f"{_span(paths[i], starts[i], ends[i])}: {exc}"
            continue
        emotions[i] = EMOTION_LABELS[int(np.argmax(scores[i]))]
    return {"emotion": emotions, "emotion_scores": scores, "emotion_error": errors}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
