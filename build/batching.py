"""Running a waveform classifier over a batch of windows, one failed window costing only its row.

Shared by the dimensional and gender stages (any wav2vec2-family ``transformers`` model).
wav2vec2-family models with a layer-norm feature encoder take padded batches with an attention mask;
every other model runs in groups of equal length, so no model sees padding it was not trained with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from .audio import SAMPLE_RATE, AudioError, decode_spans


def pads_with_attention_mask(config) -> bool:
    """wav2vec2-family models with a layer-norm feature encoder take padded, masked batches."""
    return getattr(config, "feat_extract_norm", None) == "layer"


def predict_logits(model, extractor, clips: list[np.ndarray]) -> np.ndarray:
    """Outputs of a transformers audio model for one batch of 16 kHz clips, shape (len(clips), labels).

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
    if clip.size == 0:
        return "empty span"
    output_lengths = getattr(model, "_get_feat_extract_output_lengths", None)  # wav2vec2 family
    if output_lengths is not None and int(output_lengths(clip.size)) < 1:
        return f"too short for the model ({clip.size} samples give no frame)"
    return None


def span_label(path: str, start: float, end: float) -> str:
    return f"{path} [{start:.3f}-{end:.3f} s]"


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def classify_windows(
    batch: dict[str, list], model_id: str, load: Callable[[], tuple]
) -> tuple[list[np.ndarray | None], list[str | None], tuple | None]:
    """Decode ``audio_path``/``ctx_start``/``ctx_end`` and run the model on them (``predict_logits``).

    ``load`` returns ``(model, feature extractor, ...)`` and is only called when at least one window
    decoded. Returns one output row (or None) and one error (or None) per window, and what ``load``
    returned (None when nothing decoded).
    """
    paths, starts, ends = batch["audio_path"], batch["ctx_start"], batch["ctx_end"]
    rows: list[np.ndarray | None] = [None] * len(paths)
    errors: list[str | None] = [None] * len(paths)
    clips = decode_spans(paths, starts, ends)
    for i, clip in enumerate(clips):
        if isinstance(clip, AudioError):
            errors[i] = str(clip)  # already names the file
    if all(error is not None for error in errors):
        return rows, errors, None  # nothing to run: don't even load the model
    loaded = load()
    model, extractor = loaded[0], loaded[1]
    usable: list[int] = []
    for i, clip in enumerate(clips):
        if errors[i] is None:
            problem = clip_problem(clip, model)
            if problem:
                errors[i] = f"{span_label(paths[i], starts[i], ends[i])}: {problem}"
            else:
                usable.append(i)
    results = run_in_groups([clips[i] for i in usable], lambda group: predict_logits(model, extractor, group), pads_with_attention_mask(model.config))
    for i, row in zip(usable, results):
        if isinstance(row, Exception):
            errors[i] = f"{span_label(paths[i], starts[i], ends[i])}: {model_id} failed ({first_line(row)})"
        else:
            rows[i] = row
    return rows, errors, loaded
