"""Seconds for a full-size emotion2vec+ large on labelling windows: FunASR's generate (one clip at a
time) against ``build.models.emotion``'s batched path.

    .venv/bin/python benchmarks/emotion2vec_batching.py                  # 64 windows of 4 s, batch 16, CPU
    .venv/bin/python benchmarks/emotion2vec_batching.py --device cuda:0 --windows 256

The model has the architecture of ``iic/emotion2vec_plus_large`` (data2vec 2.0 large: embed_dim
1024, 16 heads, 8 prenet + 16 main blocks, mlp ratio 4, 10 extra tokens, a 7-layer 512-channel conv
front end with layer norm, 5 positional convs of width 95 in 16 groups) with random weights, written
as a FunASR folder in a temporary directory (about 1.2 GB) and loaded by FunASR like the real one;
nothing is downloaded. The windows are 4 s (t + 2Δt with the paper's t = 2 s, Δt = 1 s) cut every 2 s
from the bundled AMI and RAVDESS recordings, so every batch has windows of one length, as most of
``build.stages.label``'s batches do.

(a) is the stage's former path: ``AutoModel.generate`` on each batch of ``--batch-size`` clips, which
FunASR runs one clip at a time. (b) is ``emotion.classify_clips`` on the same batches. Both get one
untimed warm-up clip first; then each batch goes through (a) and then (b), ``--repeats`` times each,
and counts its fastest run (wall and process CPU time apart), so that other processes on a shared
machine inflate neither total much. Prints the seconds of each, the ratios, and the largest
difference between their posteriors.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SAMPLES = REPO / "data" / "samples"
RECORDINGS = ("ami_es2004_excerpt.flac", "ravdess_actor01.flac", "ravdess_actor02.flac", "ravdess_actor03.flac")
WINDOW_S, HOP_S = 4.0, 2.0


def large_config() -> dict:
    """emotion2vec_plus_large's config.yaml layout and sizes (the tiny config with the real numbers)."""
    from build.models.tiny.emotion2vec import tiny_emotion2vec_config

    config = tiny_emotion2vec_config()
    model = config["model_conf"]
    model.update(embed_dim=1024, depth=16, num_heads=16, mlp_ratio=4.0, average_top_k_layers=16)
    model["modalities"]["audio"].update(
        prenet_depth=8,
        model_depth=16,
        num_alibi_heads=16,
        num_extra_tokens=10,
        feature_encoder_spec="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512,2,2)] + [(512,2,2)]",
        conv_pos_width=95,
        conv_pos_groups=16,
        conv_pos_depth=5,
    )
    model["modalities"]["audio"]["decoder"].update(decoder_dim=768, decoder_groups=16, decoder_kernel=7, decoder_layers=4)
    return config


def write_large_member(dest: Path) -> tuple[str, int]:
    """A FunASR folder with the large architecture and random weights; returns (folder, parameter count)."""
    import torch
    import yaml

    from build.models.base import funasr_side_effects_contained
    from build.models.tiny.emotion2vec import EMOTION2VEC_TOKENS, build_tiny_emotion2vec

    folder = build_tiny_emotion2vec(dest)  # configuration.json and tokens.txt; config and weights replaced
    config = large_config()
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    with funasr_side_effects_contained():
        from funasr.models.emotion2vec.model import Emotion2vec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Emotion2vec(model_conf=config["model_conf"], vocab_size=len(EMOTION2VEC_TOKENS))
    torch.save(net.state_dict(), folder / "model.pt")
    return str(folder), sum(p.numel() for p in net.parameters())


def windows(count: int) -> list:
    from build.sources.audio import SAMPLE_RATE, decode_span

    size, hop = int(WINDOW_S * SAMPLE_RATE), int(HOP_S * SAMPLE_RATE)
    clips = []
    for name in RECORDINGS:
        audio = decode_span(str(SAMPLES / name), 0.0, 60.0)
        clips += [audio[a : a + size] for a in range(0, len(audio) - size + 1, hop)]
        if len(clips) >= count:
            return clips[:count]
    raise SystemExit(f"the bundled recordings give only {len(clips)} windows of {WINDOW_S} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each batch per path; the fastest counts")
    args = parser.parse_args()

    import numpy as np
    import torch

    from build.models import emotion
    from build.models.base import funasr_side_effects_contained
    from build.sources.audio import SAMPLE_RATE

    clips = windows(args.windows)
    batches = [clips[i : i + args.batch_size] for i in range(0, len(clips), args.batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        folder, parameters = write_large_member(Path(tmp) / "emotion2vec_plus_large_random")
        print(f"emotion2vec+ large, random weights: {parameters / 1e6:.1f} M parameters, written in "
              f"{time.perf_counter() - started:.1f} s")
        auto = emotion._load_auto_model(folder, args.device, emotion.DEFAULT_HUB, torch.float32)
        emotion._member(folder, args.device, emotion.DEFAULT_HUB, "float32")  # loaded now, not while timed
        print(f"{len(clips)} windows of {WINDOW_S:.0f} s, batch {args.batch_size}, device {args.device}, "
              f"{torch.get_num_threads()} torch threads")

        def generate(batch):  # the stage's former path
            with funasr_side_effects_contained():
                results = auto.generate(list(batch), batch_size=len(batch), fs=SAMPLE_RATE,
                                        granularity="utterance", extract_embedding=False)
            return [emotion.scores_in_label_order(r["labels"], r["scores"], folder) for r in results]

        def batched(batch):
            spans = [("window", 0.0, WINDOW_S)] * len(batch)
            out = emotion.classify_clips(batch, spans, model_ids=[folder], device=args.device)
            assert out["emotion_error"] == [None] * len(batch), out["emotion_error"]
            return out["emotion_scores"]

        paths = {"(a) FunASR generate, one clip at a time": generate, "(b) batched": batched}
        wall = dict.fromkeys(paths, 0.0)
        cpu = dict.fromkeys(paths, 0.0)
        scores: dict[str, list] = {name: [] for name in paths}
        for run in paths.values():
            run(clips[:1])  # warm-up
        # Batch by batch, (a) then (b), each --repeats times; a batch counts its fastest run, so that
        # other processes on the machine inflate neither total much.
        for batch in batches:
            for name, run in paths.items():
                runs = []
                for _ in range(args.repeats):
                    started, started_cpu = time.perf_counter(), time.process_time()
                    rows = run(batch)
                    runs.append((time.perf_counter() - started, time.process_time() - started_cpu))
                wall[name] += min(seconds for seconds, _ in runs)
                cpu[name] += min(seconds for _, seconds in runs)
                scores[name] += rows
        for name in paths:
            print(f"{name}: {wall[name]:.1f} s wall, {cpu[name]:.1f} s process CPU, "
                  f"{len(clips) / wall[name]:.2f} windows/s")
        (a, b) = paths
        print(f"ratio (a) / (b): {wall[a] / wall[b]:.2f}x wall, {cpu[a] / cpu[b]:.2f}x process CPU")
        print(f"largest posterior difference (a) vs (b): {np.abs(np.array(scores[a]) - np.array(scores[b])).max():.2e}")

if __name__ == "__main__":
    main()
