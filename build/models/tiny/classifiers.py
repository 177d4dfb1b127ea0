"""Tiny random-weight stand-ins for the two transformers labellers.

- the dimensional model: ``MspDimensionModel`` on a wav2vec2 config shaped like
  ``wav2vec2-large-robust`` (layer-norm feature encoder, stable layer norm, masked-spec embedding),
  with audeering's labels arousal, dominance, valence;
- the gender model: ``Wav2Vec2ForSequenceClassification`` shaped like XLS-R (also layer norm), with
  labels female, male.

Each folder holds what ``from_pretrained`` reads from the hub (``config.json``, ``model.safetensors``,
``preprocessor_config.json``), so the stages load it through the same code as the real ids. Sizes
shrink (hidden 32, two layers, two heads) but the conv front end keeps the real 320-sample hop,
so a 4 s window gives 200 frames as it does for the real models. Weights come from
``torch.manual_seed(seed)``: the same seed rebuilds the same model.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

from ...core.schema import DIMENSIONS, GENDER_LABELS
from ..base import MspDimensionModel


def _tiny_wav2vec2_config(**overrides) -> Wav2Vec2Config:
    sizes = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        conv_dim=(32, 32, 32),
        conv_kernel=(10, 8, 8),
        conv_stride=(5, 8, 8),  # 5 * 8 * 8 = 320 samples per frame, as in wav2vec2
        conv_bias=True,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2,
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
        vocab_size=4,
    )
    return Wav2Vec2Config(**{**sizes, **overrides})


def tiny_dimension_config(**overrides) -> Wav2Vec2Config:
    """wav2vec2-large-robust's layout in miniature, with the MSP-Podcast labels."""
    labels = {"id2label": dict(enumerate(DIMENSIONS)), "architectures": ["MspDimensionModel"]}
    return _tiny_wav2vec2_config(**{**labels, **overrides})


def tiny_gender_config(**overrides) -> Wav2Vec2Config:
    """An XLS-R-style audio classifier with the labels female, male."""
    labels = {
        "id2label": dict(enumerate(GENDER_LABELS)),
        "classifier_proj_size": 16,
        "architectures": ["Wav2Vec2ForSequenceClassification"],
    }
    return _tiny_wav2vec2_config(**{**labels, **overrides})


def tiny_feature_extractor() -> Wav2Vec2FeatureExtractor:
    # Layer-norm wav2vec2 models take an attention mask; values are normalised per clip.
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=16_000, padding_value=0.0, do_normalize=True, return_attention_mask=True
    )


def _build_and_save(model_class, config: Wav2Vec2Config, dest: str | Path, seed: int) -> Path:
    # A private RNG stream: building a model must not reseed the caller's torch RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    dest = Path(dest)
    model.save_pretrained(dest)
    tiny_feature_extractor().save_pretrained(dest)
    return dest


def build_tiny_dimension_model(dest: str | Path, seed: int = 0) -> Path:
    """A random ``MspDimensionModel`` saved in ``dest`` with its feature extractor."""
    return _build_and_save(MspDimensionModel, tiny_dimension_config(), dest, seed)


def build_tiny_gender_model(dest: str | Path, seed: int = 0) -> Path:
    """A random ``Wav2Vec2ForSequenceClassification`` (female, male) saved in ``dest``."""
    return _build_and_save(Wav2Vec2ForSequenceClassification, tiny_gender_config(), dest, seed)
