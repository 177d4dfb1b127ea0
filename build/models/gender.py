"""Stage 6, speaker gender: any transformers audio-classification checkpoint with female/male labels.

Input columns (one row per labelling window): ``audio_path``, ``ctx_start``, ``ctx_end`` (seconds;
the span the model hears). Output columns, and only these (``schema.GENDER_OUTPUT``):

- ``gender``: ``"female"`` or ``"male"``;
- ``gender_score``: the probability of that label, from a softmax (in float64, over float32 logits
  whatever the model's precision) over the female and male logits (a model with more labels,
  e.g. ``child``, is renormalised over these two);
- ``gender_error``: null, or a message naming the file and the problem (then the other two are
  null). A window that fails never fails its batch.

Two entry points: ``classify_clips`` labels clips that are already decoded (``build.stages.label`` slices
them out of one decode per segment), and ``label_gender`` is the batched map function over window
rows, which decodes its spans and calls ``classify_clips``.

The model is loaded with ``AutoModelForAudioClassification`` and ``AutoFeatureExtractor`` (hub id
or local folder), once per process, device and precision. Checkpoints spell their labels
differently (``female``/``male``, ``F``/``M``, ``woman``/``man``): they are read from
``config.id2label`` and mapped by name, never by position; a model whose labels do not map is
refused with a ValueError.

Batching and per-window failures follow ``build.models.batching``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core import devices
from ..core.schema import GENDER_LABELS, GENDER_OUTPUT
from . import batching
from .base import model_dtype

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


def load_gender_model(model_id: str, device: str, precision: str = "float32"):
    """(model, feature extractor, label indices) for a hub id or a local folder."""
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    model = AutoModelForAudioClassification.from_pretrained(model_id, dtype=model_dtype(precision, device))
    indices = gender_label_indices(model.config.id2label, model_id)
    model.to(device).eval()
    extractor = AutoFeatureExtractor.from_pretrained(model_id)
    return model, extractor, indices


def _model(model_id: str, device: str, precision: str):
    dtype = model_dtype(precision, device)
    return devices.cached(("gender", model_id, device, str(dtype)), lambda: load_gender_model(model_id, device, precision))


def classify_clips(
    clips: Sequence[np.ndarray],
    spans: Sequence[batching.Span],
    *,
    model_id: str,
    device: str,
    precision: str = "float32",
) -> dict[str, list]:
    """gender, gender_score, gender_error for decoded 16 kHz clips, in input order.

    ``spans`` (path, start, end) say where each clip comes from, for the error messages; ``device``
    is a torch device ("cpu", "cuda:0")."""
    genders: list[str | None] = [None] * len(clips)
    scores: list[float | None] = [None] * len(clips)
    if not clips:
        return {"gender": [], "gender_score": [], "gender_error": []}
    model, extractor, indices = _model(model_id, device, precision)
    rows, errors = batching.classify_clips(clips, spans, model_id, model, extractor)
    for i, row in enumerate(rows):
        if row is not None:
            genders[i], scores[i] = gender_from_logits(row, indices)
    return {"gender": genders, "gender_score": scores, "gender_error": errors}


def label_gender(
    batch: dict[str, list],
    rank: int | None = None,
    *,
    model_id: str,
    device: str = "auto",
    precision: str = "float32",
) -> dict[str, list]:
    """Batched map function: gender, gender_score, gender_error for each window."""
    run_device = devices.device_for(rank, device)
    return batching.over_windows(
        batch,
        lambda clips, spans: classify_clips(clips, spans, model_id=model_id, device=run_device, precision=precision),
        GENDER_OUTPUT,
        "gender_error",
    )
