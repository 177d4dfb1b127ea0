"""Model classes and loading helpers shared by the labelling stages and the tiny stand-ins (``build.models.tiny``).

Nothing here runs a stage; stages and ``build.models.tiny`` import this module, never each other.

- ``MspDimensionModel`` / ``MspRegressionHead``: the layout of audeering's MSP-Podcast dimensional
  checkpoint (``audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim``), which has no transformers
  class of its own: its model card defines the head in Python. The rebuild keeps the checkpoint's
  key names (``wav2vec2.*`` backbone, ``classifier.dense`` / ``classifier.out_proj`` head) so it
  loads with every key matched; its ``pos_conv_embed`` weights are stored as ``weight_g`` /
  ``weight_v``, which transformers renames to the parametrised weight norm on load. Pooling is the
  mean over valid frames.
- ``funasr_side_effects_contained``: a guard around importing FunASR, building a FunASR model and
  calling ``generate``, which otherwise change the caller's logging, RNG state and stdout.
- ``model_dtype``: the torch dtype a ``precision`` setting means on a device.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn
from transformers import Wav2Vec2Model, Wav2Vec2PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

PRECISIONS = ("auto", "float32", "float16", "bfloat16")


def model_dtype(precision: str, device: str) -> torch.dtype:
    """``auto``: float16 on CUDA, float32 elsewhere; otherwise the dtype named."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
    if precision == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    return getattr(torch, precision)


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


@contextlib.contextmanager
def funasr_side_effects_contained() -> Iterator[None]:
    """Keep FunASR's process-wide side effects out: ``import funasr`` imports every submodule, one of
    which calls ``logging.basicConfig(level=INFO)``; building a model calls ``basicConfig`` again and
    reseeds ``random``, ``numpy`` and ``torch`` (CPU state restored here); ``generate`` draws from
    ``random``. Its banner prints ("funasr version: ...") are discarded: stdout keeps the caller's
    report and stderr its progress lines. Under a distributed launcher, importing ModelScope (which
    FunASR does) sets the root logger's stderr handler to ERROR; the handlers' levels are restored too,
    or no rank would show a warning."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    handler_levels = [handler.level for handler in handlers]
    python_rng, numpy_rng = random.getstate(), np.random.get_state()
    root.setLevel(logging.ERROR)  # its root-logger warnings are banners too
    try:
        with torch.random.fork_rng(devices=[]), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for handler, handler_level in zip(handlers, handler_levels):
            handler.setLevel(handler_level)
        random.setstate(python_rng)
        np.random.set_state(numpy_rng)
