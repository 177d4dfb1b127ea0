"""Tiny random-weight stand-ins for every labeller, built locally from configs.

They load through exactly the code paths of the real checkpoints (FunASR ``AutoModel`` for
emotion2vec, ``from_pretrained`` for the transformers models); only the weights differ. The offline
profile (``build.core.config.tiny_config``) and the tests use them. Building all of them takes a few
seconds on a CPU and needs no network.
"""

from __future__ import annotations

from pathlib import Path

from .classifiers import build_tiny_dimension_model, build_tiny_gender_model
from .emotion2vec import build_tiny_emotion2vec

_MARKER = "BUILT"


def build_tiny_models(root: str | Path) -> Path:
    """Build every tiny model under ``root`` (idempotent) with the names ``tiny_config`` expects."""
    root = Path(root)
    if (root / _MARKER).exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3):  # the ensemble: three members with different random weights
        build_tiny_emotion2vec(root / f"emotion2vec_tiny_{i}", seed=i)
    build_tiny_dimension_model(root / "msp_dim_tiny", seed=0)
    build_tiny_gender_model(root / "gender_tiny", seed=0)
    (root / _MARKER).write_text("tiny random-weight models; see build/tiny\n")
    return root
