"""Running a waveform classifier over decoded clips, one failed clip costing only its own row.

Shared by the dimensional and gender stages (any wav2vec2-family ``transformers`` model) and by the
window map functions of all three labellers.

- ``classify_clips`` runs a loaded model over clips that are already decoded (16 kHz float32 arrays)
  and returns one output row or one error per clip. Errors name the clip's file and span
  (``errors.span_label``), then the problem.
- wav2vec2-family models with a layer-norm feature encoder take padded batches with an attention
  mask; every other model runs in groups of equal length, so no model sees padding it was not
  trained with. A group that fails is retried clip by clip.
- ``over_windows`` adapts a clip function to window rows (``audio_path``, ``ctx_start``, ``ctx_end``):
  it decodes the spans, gives undecodable windows their decoder error, and calls the clip function
  only when at least one window decoded (so a batch of missing files never loads a model).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from ..core.errors import first_line, span_label
from ..sources.audio import SAMPLE_RATE, AudioError, decode_spans

Span = tuple[str, float, float]  # (audio_path, start, end): where a clip comes from, for messages


def pads_with_attention_mask(config) -> bool:
    """wav2vec2-family models with a layer-norm feature encoder take padded, masked batches."""
    return getattr(config, "feat_extract_norm", None) == "layer"


def predict_logits(model, extractor, clips: list[np.ndarray]) -> np.ndarray:
    """Outputs of a transformers audio model for one batch of 16 kHz clips, shape (len(clips), labels),
    as float32 whatever the model's dtype.

    Clips of unequal length are padded, with an attention mask, only for models that take one
    (``pads_with_attention_mask``); ``run_in_groups`` sends the other models equal lengths only."""
    import torch

    with_mask = pads_with_attention_mask(model.config)
    if with_mask:
        inputs = extractor(clips, sampling_rate=SAMPLE_RATE, padding=True, return_attention_mask=True, return_tensors="pt")
    else:
        inputs = extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    device = next(model.parameters()).device
    # Float inputs follow the model's dtype (a half-precision model on GPU); masks stay integers.
    inputs = {k: v.to(device, model.dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
    with torch.inference_mode():
        logits = model(**inputs).logits
    return logits.float().cpu().numpy()


def batch_plan(lengths: Sequence[int], pad_with_mask: bool) -> list[list[int]]:
    """Which items run together: all of them when padding is allowed, else one group per length."""
    if pad_with_mask:
        return [list(range(len(lengths)))] if lengths else []
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, length in enumerate(lengths):
        by_length[length].append(i)
    return list(by_length.values())


def run_in_groups(
    clips: list[np.ndarray], predict: Callable[[list[np.ndarray]], np.ndarray], pad_with_mask: bool
) -> list[np.ndarray | Exception]:
    """Outputs (or the exception) per clip. A failed group is retried one clip at a time, so a
    clip at fault only costs its own row."""
    results: list[np.ndarray | Exception] = [None] * len(clips)  # type: ignore[list-item]
    for group in batch_plan([len(clip) for clip in clips], pad_with_mask):
        try:
            rows = predict([clips[i] for i in group])
        except Exception:
            rows = []
            for i in group:
                try:
                    rows.append(predict([clips[i]])[0])
                except Exception as exc:
                    rows.append(exc)
        for i, row in zip(group, rows):
            if not isinstance(row, Exception) and not np.all(np.isfinite(row)):
                row = FloatingPointError(f"model output is not finite: {np.asarray(row).tolist()}")
            results[i] = row
    return results


def clip_problem(clip: np.ndarray, model) -> str | None:
    """Why a clip cannot go through a wav2vec2-family model, or None."""
    if clip.size == 0:
        return "empty span"
    output_lengths = getattr(model, "_get_feat_extract_output_lengths", None)  # wav2vec2 family
    if output_lengths is not None and int(output_lengths(clip.size)) < 1:
        return f"too short for the model ({clip.size} samples give no frame)"
    return None


def classify_clips(
    clips: Sequence[np.ndarray], spans: Sequence[Span], model_id: str, model, extractor
) -> tuple[list[np.ndarray | None], list[str | None]]:
    """One output row (or None) and one error (or None) per clip, in input order.

    ``model`` and ``extractor`` are a loaded transformers audio model and its feature extractor;
    ``spans`` say where each clip comes from, for the error messages."""
    if len(clips) != len(spans):
        raise ValueError(f"{len(clips)} clips but {len(spans)} spans")
    rows: list[np.ndarray | None] = [None] * len(clips)
    errors: list[str | None] = [None] * len(clips)
    usable: list[int] = []
    for i, clip in enumerate(clips):
        problem = clip_problem(clip, model)
        if problem:
            errors[i] = f"{span_label(*spans[i])}: {problem}"
        else:
            usable.append(i)
    results = run_in_groups(
        [clips[i] for i in usable],
        lambda group: predict_logits(model, extractor, group),
        pads_with_attention_mask(model.config),
    )
    for i, row in zip(usable, results):
        if isinstance(row, Exception):
            errors[i] = f"{span_label(*spans[i])}: {model_id} failed ({first_line(row)})"
        else:
            rows[i] = row
    return rows, errors


def over_windows(
    batch: dict[str, list],
    classify: Callable[[list[np.ndarray], list[Span]], dict[str, list]],
    columns: Iterable[str],
    error_column: str,
) -> dict[str, list]:
    """Decode the windows of ``batch`` and label the ones that decoded with ``classify(clips, spans)``.

    Returns ``columns`` (the labeller's output columns, ``error_column`` among them) for every row:
    a window that did not decode gets its decoder error (which names the file) and nulls."""
    paths, starts, ends = batch["audio_path"], batch["ctx_start"], batch["ctx_end"]
    decoded = decode_spans(paths, starts, ends)
    out: dict[str, list] = {name: [None] * len(paths) for name in columns}
    usable = []
    for i, clip in enumerate(decoded):
        if isinstance(clip, AudioError):
            out[error_column][i] = str(clip)  # already names the file
        else:
            usable.append(i)
    if not usable:
        return out  # nothing decoded: the model is not even loaded
    labelled = classify([decoded[i] for i in usable], [(paths[i], starts[i], ends[i]) for i in usable])
    for name in out:
        for i, value in zip(usable, labelled[name]):
            out[name][i] = value
    return out
