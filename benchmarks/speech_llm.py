"""Speech-LLM answering speed: answers per second of the transformers backend at batch 1, 4 and 16.

    .venv/bin/python benchmarks/speech_llm.py                       # tiny random Qwen2-Audio, CPU
    .venv/bin/python benchmarks/speech_llm.py --device cuda --model Qwen/Qwen2-Audio-7B-Instruct
    .venv/bin/python benchmarks/speech_llm.py --device cuda --full-size   # random weights, the 7B's shapes

Every batch size answers the same windows (``--windows`` of 2 to 30 s, lengths drawn once with a
fixed seed, so batching by length has work to do) through ``speech_llm.answer_questions``, the path
``cpqa.py evaluate`` takes, without an answer cache. Greedy decoding of at most ``--new-tokens``
tokens; with random weights an answer may stop early at a random end token, so the table also gives
the generated tokens per second. One untimed warm-up batch first. Prints a markdown table headed by
the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bar

from build.models.tiny.qwen2_audio import build_tiny_qwen2_audio  # noqa: E402
from metrics.cpqa import speech_llm  # noqa: E402

QUESTIONS = ["How does the speaker feel?", "Is the speaker male or female?", "How many people speak?", "Why does the speaker sound tense?"]


def full_size_qwen2_audio(folder: Path) -> Path:
    """Random weights with Qwen2-Audio-7B's shapes (Whisper-large-v3 encoder, Qwen-7B decoder) and the
    tiny tokenizer (so the embedding table is smaller than the real 156k vocabulary)."""
    import torch
    from transformers import AutoProcessor, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    tiny = build_tiny_qwen2_audio(folder / "tokenizer", corpus=QUESTIONS)
    processor = AutoProcessor.from_pretrained(tiny)
    config = Qwen2AudioConfig(
        audio_config={"model_type": "qwen2_audio_encoder", "d_model": 1280, "encoder_layers": 32, "encoder_attention_heads": 20,
                      "encoder_ffn_dim": 5120, "num_mel_bins": 128, "max_source_positions": 1500},
        text_config={"model_type": "qwen2", "vocab_size": len(processor.tokenizer), "hidden_size": 4096, "intermediate_size": 11008,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32, "max_position_embeddings": 8192},
        audio_token_index=processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    with torch.device("meta"):
        Qwen2AudioForConditionalGeneration(config)  # fail fast on a bad config before allocating 15 GB
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(folder / "model")
    processor.save_pretrained(folder / "model")
    return folder / "model"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a Qwen2-Audio checkpoint (default: a tiny random one built here)")
    parser.add_argument("--full-size", action="store_true", help="random weights of the 7B's shapes instead of the tiny model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=16)
    args = parser.parse_args()

    import torch

    with tempfile.TemporaryDirectory() as scratch:
        if args.model:
            model, label = args.model, args.model
        elif args.full_size:
            model, label = str(full_size_qwen2_audio(Path(scratch))), "random Qwen2-Audio, 7B shapes"
        else:
            model, label = str(build_tiny_qwen2_audio(Path(scratch) / "tiny", corpus=QUESTIONS)), "tiny random Qwen2-Audio (hidden 32)"
        rng = np.random.default_rng(0)
        seconds = rng.uniform(2.0, 30.0, size=args.windows)
        audio = [(0.1 * rng.standard_normal(int(s * 16_000)).astype(np.float32), 16_000) for s in seconds]
        questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(args.windows)]

        rows = []
        for batch_size in args.batch_sizes:
            backend = speech_llm.TransformersBackend(model, args.device, args.dtype, batch_size=batch_size, max_new_tokens=args.new_tokens)
            speech_llm.answer_questions(questions[:batch_size], audio[:batch_size], model=backend)  # warm-up
            tokens = []
            generate = backend.network.generate

            def counting_generate(**inputs):
                output = generate(**inputs)
                new = output[:, inputs["input_ids"].shape[1] :]
                tokens.append(int((new != backend.processor.tokenizer.pad_token_id).sum()))
                return output

            backend.network.generate = counting_generate
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            answers = speech_llm.answer_questions(questions, audio, model=backend)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            wall = time.perf_counter() - start
            backend.network.generate = generate
            assert all(a.error is None for item in answers for a in item)
            rows.append((batch_size, wall, args.windows / wall, sum(tokens) / wall))

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"# speech-LLM answering speed\n\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, GPU {gpu}, "
          f"torch threads {torch.get_num_threads()}, device {args.device} · {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
          f"command: {' '.join(sys.argv)}\nmodel: {label} · {args.windows} windows of 2-30 s · at most {args.new_tokens} new tokens\n")
    print("| batch | wall s | answers/s | new tokens/s |\n|---:|---:|---:|---:|")
    for batch_size, wall, per_s, tokens_per_s in rows:
        print(f"| {batch_size} | {wall:.2f} | {per_s:.2f} | {tokens_per_s:.1f} |")


if __name__ == "__main__":
    main()
