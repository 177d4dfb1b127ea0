"""Stage 6, speaker gender: any transformers audio-classification checkpoint with female/male labels.

Input columns (one row per labelling window): ``audio_path``, ``ctx_start``, ``ctx_end`` (seconds;
the span the model hears). Output columns, and only these (``schema.GENDER_OUTPUT``):

- ``gender``: ``"female"`` or ``"male"``;
- ``gender_score``: the probability of that label, from a softmax over the female and male logits
  (a model with more labels, e.g. ``child``, is renormalised over these two);
- ``gender_error``: null, or a message naming the file and the problem (then the other two are
  null). A window that fails never fails its batch.

The model is loaded with ``AutoModelForAudioClassification`` and ``AutoFeatureExtractor`` (hub id
or local folder), once per process and device. Checkpoints spell their labels differently
(``female``/``male``, ``F``/``M``, ``woman``/``man``): they are read from ``config.id2label`` and
mapped by name, never by position; a model whose labels do not map is refused with a ValueError.

Batching follows the dimensional stage: wav2vec2-family models with a layer-norm feature encoder
take padded batches with an attention mask; every other model runs in groups of equal length, so
no model ever sees padding it was not trained with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np

from . import devices
from .audio import SAMPLE_RATE, AudioError, decode_spans
from .schema import GENDER_LABELS

_GENDER_WORDS = {
    "female": "female",
    "f": "female",
    "woman": "female",
    "women": "female",
    "male": "male",
    "m": "male",
    "man": "male",
    "men": "male",
}


def gender_label_indices(id2label: dict, model_id: str) -> dict[str, int]:
    """``{"female": i, "male": j}``: which output index holds each gender."""
    indices: dict[str, int] = {}
    for index, label in id2label.items():
        gender = _GENDER_WORDS.get(str(label).strip().lower())
        if gender is None:
            continue
        if gender in indices:
            raise ValueError(f"{model_id}: two labels mean {gender!r} in {dict(id2label)}")
        indices[gender] = int(index)
    if set(indices) != set(GENDER_LABELS):
        raise ValueError(
            f"{model_id}: cannot map the model's labels {sorted(map(str, id2label.values()))} "
            f"to {list(GENDER_LABELS)} (accepted spellings: {sorted(_GENDER_WORDS)})"
        )
    return indices


def gender_from_logits(logits: Sequence[float], indices: dict[str, int]) -> tuple[str, float]:
    """(label, probability) from one row of logits, softmax over the female and male entries only."""
    pair = np.array([logits[indices[label]] for label in GENDER_LABELS], dtype=np.float64)
    probabilities = np.exp(pair - pair.max())
    probabilities /= probabilities.sum()
    best = int(np.argmax(probabilities))
    return GENDER_LABELS[best], float(probabilities[best])


def pads_with_attention_mask(config) -> bool:
    """wav2vec2-family models with a layer-norm feature encoder take padded, masked batches."""
    return getattr(config, "feat_extract_norm", None) == "layer"


def load_gender_model(model_id: str, device: str):
    """(model, feature extractor, label indices) for a hub id or a local folder."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(model_id)
    indices = gender_label_indices(model.config.id2label, model_id)
    model.to(device).eval()
    extractor = AutoFeatureExtractor.from_pretrained(model_id)
    return model, extractor, indices


def _model(model_id: str, device: str):
    return devices.cached(("gender", model_id, device), lambda: load_gender_model(model_id, device))


def predict_logits(model, extractor, clips: list[np.ndarray]) -> np.ndarray:
    """Logits for one batch of 16 kHz clips, shape (len(clips), num_labels)."""
    import torch

    if pads_with_attention_mask(model.config):
        inputs = extractor(
            clips, sampling_rate=SAMPLE_RATE, padding=True, return_attention_mask=True, return_tensors="pt"
        )
    else:
        inputs = extractor(clips, sampling_rate=SAMPLE_RATE, return_tensors="pt")
    device = next(model.parameters()).device
    inputs = {name: tensor.to(device) for name, tensor in inputs.items()}
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


def _clip_problem(clip: np.ndarray, model) -> str | None:
    if clip.size == 0:
        return "empty span"
    output_lengths = getattr(model, "_get_feat_extract_output_lengths", None)  # wav2vec2 family
    if output_lengths is not None and int(output_lengths(clip.size)) < 1:
        return f"too short for the model ({clip.size} samples give no frame)"
    return None


def _span(path: str, start: float, end: float) -> str:
    return f"{path} [{start:.3f}-{end:.3f} s]"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def label_gender(
    batch: dict[str, list],
    rank: int | None = None,
    *,
    model_id: str,
    device: str = "auto",
) -> dict[str, list]:
    """Batched map function: gender, gender_score, gender_error for each window."""
    paths, starts, ends = batch["audio_path"], batch["ctx_start"], batch["ctx_end"]
    genders: list[str | None] = [None] * len(paths)
    scores: list[float | None] = [None] * len(paths)
    errors: list[str | None] = [None] * len(paths)
    clips = decode_spans(paths, starts, ends)
    for i, clip in enumerate(clips):
        if isinstance(clip, AudioError):
            errors[i] = str(clip)  # already names the file
    if all(error is not None for error in errors):
        return {"gender": genders, "gender_score": scores, "gender_error": errors}

    model, extractor, indices = _model(model_id, devices.device_for(rank, device))
    usable: list[int] = []
    for i, clip in enumerate(clips):
        if errors[i] is not None:
            continue
        problem = _clip_problem(clip, model)
        if problem:
            errors[i] = f"{_span(paths[i], starts[i], ends[i])}: {problem}"
        else:
            usable.append(i)

    results = run_in_groups(
        [clips[i] for i in usable],
        lambda group: predict_logits(model, extractor, group),
        pads_with_attention_mask(model.config),
    )
    for i, row in zip(usable, results):
        if isinstance(row, Exception):
            errors[i] = f"{_span(paths[i], starts[i], ends[i])}: {model_id} failed ({_first_line(row)})"
        else:
            genders[i], scores[i] = gender_from_logits(row, indices)
    return {"gender": genders, "gender_score": scores, "gender_error": errors}
