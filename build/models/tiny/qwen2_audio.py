"""A tiny random-weight Qwen2-Audio (hidden size 32 by default) with a locally trained byte-level BPE
tokenizer, saved as a checkpoint folder that loads through ``Qwen2AudioForConditionalGeneration`` and
``AutoProcessor`` exactly as ``Qwen/Qwen2-Audio-7B-Instruct`` does. The speech-LLM tests and
``benchmarks/speech_llm.py`` use it; no network needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
_CHAT_WORDS = ["system\nYou are a helpful assistant.", "user\nAudio 1:", "assistant\n"]


def build_tiny_qwen2_audio(folder: str | Path, corpus: Iterable[str] = (), seed: int = 0, hidden_size: int = 32,
                           layers: int = 2, vocab_size: int = 400) -> Path:
    """Write the checkpoint to ``folder``; the tokenizer is trained on ``corpus`` and the chat words."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([*corpus, *_CHAT_WORDS] * 10, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")

    probe = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer)
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(feature_size=128), tokenizer=tokenizer, chat_template=probe.default_chat_template
    )
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "d_model": hidden_size,
            "encoder_layers": layers,
            "encoder_attention_heads": 2,
            "encoder_ffn_dim": 2 * hidden_size,
            "num_mel_bins": 128,
            "max_source_positions": 1500,  # 3000 mel frames = 30 s
        },
        text_config={
            "model_type": "qwen2",
            "vocab_size": len(tokenizer),
            "hidden_size": hidden_size,
            "intermediate_size": 2 * hidden_size,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 2048,
        },
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    torch.manual_seed(seed)
    folder = Path(folder)
    Qwen2AudioForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
