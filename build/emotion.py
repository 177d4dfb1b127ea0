"""Stage 4, categorical SER: an emotion2vec+ ensemble run through FunASR, posteriors averaged.

Input columns (one row per labelling window): ``audio_path``, ``ctx_start``, ``ctx_end`` (seconds;
the span the model hears). Output columns, and only these (``schema.CATEGORICAL_OUTPUT``):

- ``emotion``: the label with the highest averaged posterior, one of ``schema.EMOTION_LABELS``;
- ``emotion_scores``: nine floats, the ensemble's mean posterior in ``EMOTION_LABELS`` order;
- ``emotion_error``: null, or a message naming the file and the problem (then the other two are
  null). A window that fails never fails its batch; a member that fails on a window fails that
  window only (the batch is retried clip by clip to find it).

Two entry points: ``classify_clips`` labels clips that are already decoded (``build.label`` slices
them out of one decode per segment), and ``label_categorical_emotion`` is the batched map function
over window rows, which decodes its spans and calls ``classify_clips``.

Each member is a FunASR ``AutoModel`` (hub id or local folder), loaded once per process, device and
precision. Its labels are bilingual tokens (``生气/angry``, ``<unk>``); they are parsed and each
member's scores are put into ``EMOTION_LABELS`` order by label, never by position, because
checkpoints differ (the 5-class releases of emotion2vec+ hide four labels, which then get
probability 0).

Precision: FunASR's ``Emotion2vec.inference`` runs each clip alone (no padding, so a window's
posterior does not depend on its batch) and feeds it to the model in the dtype it was given.
``float16`` builds the member with FunASR's own ``fp16`` switch and hands it float16 clips.
``bfloat16`` is not possible there (the inference converts features to numpy, which has no
bfloat16): those members run in float32. Scores come back as Python floats either way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from . import devices
from .audio import SAMPLE_RATE
from .batching import Span, over_windows
from .errors import first_line, span_label
from .models import funasr_side_effects_contained, model_dtype
from .schema import CATEGORICAL_OUTPUT, EMOTION_LABELS

_log = logging.getLogger(__name__)

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


def member_dtype(precision: str, device: str):
    """The dtype an emotion2vec member runs in: ``model_dtype``, except bfloat16 -> float32 (see above)."""
    import torch

    dtype = model_dtype(precision, device)
    return torch.float32 if dtype == torch.bfloat16 else dtype


def _load_member(model_id: str, device: str, hub: str, dtype):
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
            fp16=dtype == torch.float16,
        )


def _load_member_or_explain(model_id: str, device: str, hub: str, dtype):
    try:
        return _load_member(model_id, device, hub, dtype)
    except Exception as exc:
        # FunASR prints a failed download and then fails with "model '<id>' is not registered".
        raise RuntimeError(
            f"cannot load emotion2vec model {model_id!r} (hub={hub!r}, device={device!r}): {first_line(exc)}. "
            "A hub id needs network access or a warm cache; a local folder needs config.yaml, model.pt "
            "and tokens.txt."
        ) from exc


def _member(model_id: str, device: str, hub: str, precision: str):
    """(FunASR AutoModel, the dtype it runs in), loaded once per process."""
    dtype = member_dtype(precision, device)

    def load():
        if dtype != model_dtype(precision, device):
            _log.warning("emotion2vec %s runs in %s: FunASR's emotion2vec cannot run in %s", model_id, dtype, precision)
        return _load_member_or_explain(model_id, device, hub, dtype), dtype

    return devices.cached(("emotion2vec", model_id, device, hub, str(dtype)), load)


def _generate(model, clips: Sequence[np.ndarray]) -> list[dict]:
    with funasr_side_effects_contained():  # generate draws its random item keys from `random`
        results = model.generate(
            list(clips),
            batch_size=len(clips),
            fs=SAMPLE_RATE,
            granularity="utterance",
            extract_embedding=False,
        )
    if len(results) != len(clips):
        raise RuntimeError(f"FunASR returned {len(results)} results for {len(clips)} clips")
    return results


def _member_posteriors(model_id: str, model, clips: Sequence[np.ndarray]) -> list[list[float] | Exception]:
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




def classify_clips(
    clips: Sequence[np.ndarray],
    spans: Sequence[Span],
    *,
    model_ids: Sequence[str],
    device: str,
    hub: str = DEFAULT_HUB,
    precision: str = "float32",
) -> dict[str, list]:
    """emotion, emotion_scores, emotion_error for decoded 16 kHz clips, in input order.

    ``spans`` (path, start, end) say where each clip comes from, for the error messages; ``device``
    is a torch device ("cpu", "cuda:0"). Members are loaded only when some clip is usable."""
    if not model_ids:
        raise ValueError("model_ids is empty: the emotion stage needs at least one emotion2vec model")
    if len(clips) != len(spans):
        raise ValueError(f"{len(clips)} clips but {len(spans)} spans")
    errors: list[str | None] = [None if clip.size else f"{span_label(*span)}: empty span" for clip, span in zip(clips, spans)]
    usable = [i for i, error in enumerate(errors) if error is None]

    posteriors: dict[int, list[list[float]]] = {i: [] for i in usable}
    if usable:
        for model_id in model_ids:
            member, dtype = _member(model_id, device, hub, precision)
            np_dtype = np.float16 if str(dtype) == "torch.float16" else np.float32
            inputs = [np.asarray(clips[i], dtype=np_dtype) for i in usable]  # FunASR keeps the array's dtype
            for i, posterior in zip(usable, _member_posteriors(model_id, member, inputs)):
                if isinstance(posterior, Exception):
                    if errors[i] is None:
                        errors[i] = f"{span_label(*spans[i])}: {model_id} failed ({first_line(posterior)})"
                else:
                    posteriors[i].append(posterior)

    emotions: list[str | None] = [None] * len(clips)
    scores: list[list[float] | None] = [None] * len(clips)
    for i in usable:
        if errors[i] is not None:
            continue
        try:  # a member can emit NaN (e.g. in half precision); that fails this window only
            scores[i] = average_posteriors(posteriors[i])
        except ValueError as exc:
            errors[i] = f"{span_label(*spans[i])}: {exc}"
            continue
        emotions[i] = EMOTION_LABELS[int(np.argmax(scores[i]))]
    return {"emotion": emotions, "emotion_scores": scores, "emotion_error": errors}


def label_categorical_emotion(
    batch: dict[str, list],
    rank: int | None = None,
    *,
    model_ids: list[str],
    device: str = "auto",
    hub: str = DEFAULT_HUB,
    precision: str = "float32",
) -> dict[str, list]:
    """Batched map function: emotion, emotion_scores, emotion_error for each window."""
    if not model_ids:
        raise ValueError("model_ids is empty: the emotion stage needs at least one emotion2vec model")
    run_device = devices.device_for(rank, device)
    return over_windows(
        batch,
        lambda clips, spans: classify_clips(
            clips, spans, model_ids=model_ids, device=run_device, hub=hub, precision=precision
        ),
        CATEGORICAL_OUTPUT,
        "emotion_error",
    )
