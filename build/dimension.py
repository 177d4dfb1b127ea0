"""Stage 5, dimensional SER: audeering's wav2vec2-large-robust fine-tuned on MSP-Podcast.

Input columns (one row per labelling window): ``audio_path``, ``ctx_start``, ``ctx_end`` (seconds;
the span the model hears). Output columns, and only these (``schema.DIMENSIONAL_OUTPUT``):

- ``arousal``, ``dominance``, ``valence``: the model's regression outputs, roughly in [0, 1]
  (the condensation filter reads valence);
- ``dimension_error``: null, or a message naming the file and the problem (then the three values
  are null). A window that fails never fails its batch.

The hub checkpoint ``audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim`` has no transformers
class of its own: its model card defines the head in Python. ``MspDimensionModel`` rebuilds that
layout (``wav2vec2.*`` backbone, ``classifier.dense`` / ``classifier.out_proj`` head, mean pooling
over time) so the checkpoint loads with every key matched. Its ``pos_conv_embed`` weights are stored
as ``weight_g`` / ``weight_v``; transformers renames them to the parametrised weight norm on load.

Batching: wav2vec2 models whose feature encoder uses layer norm (``feat_extract_norm == "layer"``:
large-robust, lv60, XLS-R) were trained with attention masks, so windows of different lengths are
padded and masked, and pooling only covers valid frames. Group-norm models (wav2vec2-base) must not
see padding at all, so their windows run in groups of equal length.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2Model, Wav2Vec2PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from . import devices
from .batching import classify_windows
from .schema import DIMENSIONS


class MspRegressionHead(nn.Module):
    """The model card's head: dropout, dense, tanh, dropout, projection to the three dimensions."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.final_dropout)
        self.out_proj = nn.Linear(config.hidden_size, config.num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.dense(self.dropout(pooled)))
        return self.out_proj(self.dropout(hidden))


class MspDimensionModel(Wav2Vec2PreTrainedModel):
    """wav2vec2 backbone, hidden states mean-pooled over valid frames, regression head.

    ``logits`` holds one row per input in the order of ``config.id2label``
    (arousal, dominance, valence for the audeering checkpoint).
    """

    def __init__(self, config):
        super().__init__(config)
        self.wav2vec2 = Wav2Vec2Model(config)
        self.classifier = MspRegressionHead(config)
        self.post_init()

    def forward(
        self, input_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> SequenceClassifierOutput:
        hidden = self.wav2vec2(input_values, attention_mask=attention_mask).last_hidden_state
        if attention_mask is None:
            pooled = hidden.mean(dim=1)
        else:
            frames = self._get_feature_vector_attention_mask(hidden.shape[1], attention_mask)
            frames = frames.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * frames).sum(dim=1) / frames.sum(dim=1)
        return SequenceClassifierOutput(logits=self.classifier(pooled))


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


def load_dimension_model(model_id: str, device: str):
    """(model, feature extractor, output columns) for a hub id or a local folder."""
    model = MspDimensionModel.from_pretrained(model_id)
    model.to(device).eval()
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(model_id)
    return model, extractor, dimension_columns(model.config.id2label, model_id)


def _model(model_id: str, device: str):
    return devices.cached(("dimension", model_id, device), lambda: load_dimension_model(model_id, device))


def label_dimensions(
    batch: dict[str, list],
    rank: int | None = None,
    *,
    model_id: str,
    device: str = "auto",
) -> dict[str, list]:
    """Batched map function: arousal, dominance, valence, dimension_error for each window."""
    rows, errors, loaded = classify_windows(batch, model_id, lambda: _model(model_id, devices.device_for(rank, device)))
    out: dict[str, list] = {name: [None] * len(rows) for name in DIMENSIONS}
    for i, row in enumerate(rows):
        if row is not None:
            for name, column in zip(DIMENSIONS, loaded[2]):
                out[name][i] = float(row[column])
    return {**out, "dimension_error": errors}
