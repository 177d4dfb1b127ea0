"""A tiny random-weight emotion2vec+ that FunASR loads like the real checkpoints.

The folder mirrors the hub snapshots of ``iic/emotion2vec_plus_{large,base,seed}``: ``config.yaml``
(model ``Emotion2vec``, a ``CharTokenizer`` over ``tokens.txt``), ``configuration.json`` (the
file map FunASR reads first), ``model.pt`` (a state dict) and ``tokens.txt`` (the nine bilingual
labels in the checkpoints' order). Only the sizes shrink: embed_dim 32, two heads, two blocks, a
32-channel conv front end with the real 320-sample hop. The weights come from
``torch.manual_seed(seed)``, so each seed is a different ensemble member and a rebuild with the same
seed gives the same weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from ..base import funasr_side_effects_contained

# tokens.txt of emotion2vec_plus_{large,base,seed} on the hubs (9-class release, June 2024).
EMOTION2VEC_TOKENS = (
    "生气/angry",
    "厌恶/disgusted",
    "恐惧/fearful",
    "开心/happy",
    "中立/neutral",
    "其他/other",
    "难过/sad",
    "吃惊/surprised",
    "<unk>",
)

_EMBED_DIM = 32
_HEADS = 2
_DEPTH = 2
_CONV_CHANNELS = 32


def tiny_emotion2vec_config() -> dict:
    """The real config layout (keys of emotion2vec_plus_*'s config.yaml) with tiny sizes."""
    audio = {
        "type": "AUDIO",
        "prenet_depth": 1,
        "prenet_layerdrop": 0.0,
        "prenet_dropout": 0.0,
        "start_drop_path_rate": 0.0,
        "end_drop_path_rate": 0.0,
        "num_extra_tokens": 2,
        "init_extra_token_zero": True,
        "mask_noise_std": 0.01,
        "mask_prob_min": None,
        "mask_prob": 0.5,
        "inverse_mask": False,
        "mask_prob_adjust": 0.05,
        "keep_masked_pct": 0.0,
        "mask_length": 5,
        "add_masks": False,
        "remove_masks": False,
        "mask_dropout": 0.0,
        "encoder_zero_mask": True,
        "mask_channel_prob": 0.0,
        "mask_channel_length": 64,
        "ema_local_encoder": False,
        "local_grad_mult": 1.0,
        "use_alibi_encoder": True,
        "alibi_scale": 1.0,
        "learned_alibi": False,
        "alibi_max_pos": None,
        "learned_alibi_scale": True,
        "learned_alibi_scale_per_head": True,
        "learned_alibi_scale_per_layer": False,
        "num_alibi_heads": _HEADS,
        "model_depth": _DEPTH,
        "decoder": {  # training-only; kept so the config has the real shape
            "decoder_dim": 16,
            "decoder_groups": 4,
            "decoder_kernel": 3,
            "decoder_layers": 1,
            "input_dropout": 0.0,
            "add_positions_masked": False,
            "add_positions_all": False,
            "decoder_residual": True,
            "projection_layers": 1,
            "projection_ratio": 2.0,
        },
        "extractor_mode": "layer_norm",
        # Same kernels and strides as the real front end (hop 320 samples = 20 ms), fewer channels.
        "feature_encoder_spec": f"[({_CONV_CHANNELS}, 10, 5)] + [({_CONV_CHANNELS}, 3, 2)] * 4"
        f" + [({_CONV_CHANNELS}, 2, 2)] + [({_CONV_CHANNELS}, 2, 2)]",
        "conv_pos_width": 9,
        "conv_pos_groups": 4,
        "conv_pos_depth": 1,
        "conv_pos_pre_ln": False,
    }
    model_conf = {
        "loss_beta": 0.0,
        "loss_scale": None,
        "depth": _DEPTH,
        "start_drop_path_rate": 0.0,
        "end_drop_path_rate": 0.0,
        "num_heads": _HEADS,
        "norm_eps": 1e-05,
        "norm_affine": True,
        "encoder_dropout": 0.1,
        "post_mlp_drop": 0.1,
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "dropout_input": 0.0,
        "layerdrop": 0.0,
        "embed_dim": _EMBED_DIM,
        "mlp_ratio": 2.0,
        "layer_norm_first": False,
        "average_top_k_layers": _DEPTH,
        "end_of_block_targets": False,
        "clone_batch": 1,
        "layer_norm_target_layer": False,
        "batch_norm_target_layer": False,
        "instance_norm_target_layer": True,
        "instance_norm_targets": False,
        "layer_norm_targets": False,
        "ema_decay": 0.999,
        "ema_same_dtype": True,
        "log_norms": True,
        "ema_end_decay": 0.99999,
        "ema_anneal_end_step": 20000,
        "ema_encoder_only": False,
        "max_update": 100000,
        "extractor_mode": "layer_norm",
        "shared_decoder": None,
        "min_target_var": 0.1,
        "min_pred_var": 0.01,
        "supported_modality": "AUDIO",
        "mae_init": False,
        "seed": 1,
        "skip_ema": False,
        "cls_loss": 1.0,
        "recon_loss": 0.0,
        "d2v_loss": 1.0,
        "decoder_group": False,
        "adversarial_training": False,
        "adversarial_hidden_dim": 128,
        "adversarial_weight": 0.1,
        "cls_type": "chunk",
        "normalize": True,
        "modalities": {"audio": audio},
    }
    return {
        "model": "Emotion2vec",
        "model_conf": model_conf,
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": "<unk>", "split_with_space": True},
    }


# configuration.json of the hub snapshots: FunASR resolves these paths inside the folder.
_CONFIGURATION = {
    "framework": "pytorch",
    "task": "emotion-recognition",
    "pipeline": {"type": "funasr-pipeline"},
    "model": {"type": "funasr"},
    "file_path_metas": {
        "init_param": "model.pt",
        "tokenizer_conf": {"token_list": "tokens.txt"},
        "config": "config.yaml",
    },
}


def _random_state_dict(config: dict, seed: int) -> dict[str, torch.Tensor]:
    with funasr_side_effects_contained():  # importing funasr switches the root logger to INFO
        from funasr.models.emotion2vec.model import Emotion2vec

    # fork_rng keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Emotion2vec(model_conf=config["model_conf"], vocab_size=len(EMOTION2VEC_TOKENS))
        # A default-initialised head gives near-uniform posteriors; a wider one lets the tiny
        # members disagree and pick different labels for different clips.
        torch.nn.init.normal_(model.proj.weight, std=1.0)
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def build_tiny_emotion2vec(dest: Path, seed: int = 0) -> Path:
    """Write a loadable tiny emotion2vec+ folder to ``dest`` and return it."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    config = tiny_emotion2vec_config()
    (dest / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    (dest / "configuration.json").write_text(json.dumps(_CONFIGURATION, indent=2) + "\n", encoding="utf-8")
    (dest / "tokens.txt").write_text("\n".join(EMOTION2VEC_TOKENS) + "\n", encoding="utf-8")
    torch.save(_random_state_dict(config, seed), dest / "model.pt")
    return dest
