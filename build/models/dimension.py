"""Stage 5, dimensional SER: audeering's wav2vec2-large-robust fine-tuned on MSP-Podcast.

Input columns (one row per labelling window): ``audio_path``, ``ctx_start``, ``ctx_end`` (seconds;
the span the model hears). Output columns, and only these (``schema.DIMENSIONAL_OUTPUT``):

- ``arousal``, ``dominance``, ``valence``: the model's regression outputs, roughly in [0, 1]
  (the condensation filter reads valence), as float32 values whatever the model's precision;
- ``dimension_error``: null, or a message naming the file and the problem (then the three values
  are null). A window that fails never fails its batch.

Two entry points: ``classify_clips`` labels clips that are already decoded (``build.stages.label`` slices
them out of one decode per segment), and ``label_dimensions`` is the batched map function over
window rows, which decodes its spans and calls ``classify_clips``.

The checkpoint has no transformers class of its own; ``build.models.base.MspDimensionModel`` rebuilds
its layout. Batching follows ``build.models.batching``: layer-norm wav2vec2 models (large-robust) take
padded, masked batches and pool over valid frames only; group-norm ones (wav2vec2-base) run in
groups of equal length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers import Wav2Vec2FeatureExtractor

from ..core import devices
from ..core.schema import DIMENSIONAL_OUTPUT, DIMENSIONS
from . import batching
from .base import MspDimensionModel, MspRegressionHead, model_dtype  # noqa: F401  (re-exported)


def dimension_columns(id2label: dict, model_id: str) -> list[int]:
    """For each of ``DIMENSIONS``, the output column that holds it.

    Named labels are matched by name (any order, any case); a checkpoint whose labels are the
    generic ``LABEL_i`` is taken to be in the audeering order.
    """
    labels = [str(id2label[i]).strip().lower() for i in sorted(id2label, key=int)]
    if sorted(labels) == sorted(DIMENSIONS):
        return [labels.index(name) for name in DIMENSIONS]
    if labels == [f"label_{i}" for i in range(len(DIMENSIONS))]:
        return list(range(len(DIMENSIONS)))
    raise ValueError(f"{model_id}: labels {labels} are not the three dimensions {list(DIMENSIONS)}")


def load_dimension_model(model_id: str, device: str, precision: str = "float32"):
    """(model, feature extractor, output columns) for a hub id or a local folder."""
    model = MspDimensionModel.from_pretrained(model_id, dtype=model_dtype(precision, device))
    model.to(device).eval()
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(model_id)
    return model, extractor, dimension_columns(model.config.id2label, model_id)


def _model(model_id: str, device: str, precision: str):
    dtype = model_dtype(precision, device)
    return devices.cached(
        ("dimension", model_id, device, str(dtype)), lambda: load_dimension_model(model_id, device, precision)
    )


def classify_clips(
    clips: Sequence[np.ndarray],
    spans: Sequence[batching.Span],
    *,
    model_id: str,
    device: str,
    precision: str = "float32",
) -> dict[str, list]:
    """arousal, dominance, valence, dimension_error for decoded 16 kHz clips, in input order.

    ``spans`` (path, start, end) say where each clip comes from, for the error messages; ``device``
    is a torch device ("cpu", "cuda:0")."""
    out: dict[str, list] = {name: [None] * len(clips) for name in DIMENSIONS}
    if not clips:
        return {**out, "dimension_error": []}
    model, extractor, columns = _model(model_id, device, precision)
    rows, errors = batching.classify_clips(clips, spans, model_id, model, extractor)
    for i, row in enumerate(rows):
        if row is not None:
            for name, column in zip(DIMENSIONS, columns):
                out[name][i] = float(row[column])
    return {**out, "dimension_error": errors}


def label_dimensions(
    batch: dict[str, list],
    rank: int | None = None,
    *,
    model_id: str,
    device: str = "auto",
    precision: str = "float32",
) -> dict[str, list]:
    """Batched map function: arousal, dominance, valence, dimension_error for each window."""
    run_device = devices.device_for(rank, device)
    return batching.over_windows(
        batch,
        lambda clips, spans: classify_clips(clips, spans, model_id=model_id, device=run_device, precision=precision),
        DIMENSIONAL_OUTPUT,
        "dimension_error",
    )
