"""Seconds and real-time factor of each labelling stage, on the bundled audio or a folder of yours.

    .venv/bin/python benchmarks/stage_throughput.py                    # tiny models, data/samples, CPU
    .venv/bin/python benchmarks/stage_throughput.py AUDIO_DIR --profile paper --set runtime.device=cuda

Prints one line per stage: wall seconds, audio seconds processed, and real-time factor (audio
seconds per wall second; higher is faster). Model loading is timed apart from inference (a warm-up
batch per labeller), so the figures say what a long build would sustain.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", default=str(REPO / "data" / "samples"))
    parser.add_argument("--profile", choices=("tiny", "paper"), default="tiny")
    parser.add_argument("--set", action="append", default=[])
    args = parser.parse_args()
    if args.profile == "tiny":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from build import dimension, emotion, gender, ingest, segment, windows
    from build.config import paper_config, tiny_config
    from build.tiny import build_tiny_models

    config = tiny_config(str(build_tiny_models(REPO / ".cpqa" / "tiny-models"))) if args.profile == "tiny" else paper_config()
    config = config.with_overrides(args.set)
    rt = config.runtime

    def timed(name, fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    rows = []
    recordings, t = timed("probe", lambda: ingest.list_recordings(args.source).map(ingest.probe_recordings, batched=True))
    total_audio = sum(d for d in recordings["duration"] if d)
    rows.append(("ingest + probe", t, total_audio))
    vad = config.vad
    recordings, t = timed("vad", lambda: recordings.map(segment.detect_speech, batched=True, batch_size=8, fn_kwargs=dict(threshold=vad.threshold, min_speech_ms=vad.min_speech_ms, min_silence_ms=vad.min_silence_ms, speech_pad_ms=vad.speech_pad_ms)))
    rows.append(("silero VAD", t, total_audio))
    segments = recordings.map(segment.explode_segments, batched=True, remove_columns=recordings.column_names, fn_kwargs=dict(merge_gap_s=vad.merge_gap_s, max_segment_s=config.max_segment_s))
    segment_audio = sum(e - s for s, e in zip(segments["start"], segments["end"]))

    def explode(spec):
        return segments.map(windows.explode_windows, batched=True, remove_columns=segments.column_names, fn_kwargs=dict(label_s=spec.label_s, context_s=spec.context_s, min_last_fraction=spec.min_last_fraction))

    emotion_windows, gender_windows = explode(config.emotion_window), explode(config.gender_window)
    labellers = [
        ("emotion2vec+ ensemble", emotion_windows, emotion.label_categorical_emotion, dict(model_ids=list(config.models.emotion), device=rt.device)),
        ("MSP-Podcast dimensions", emotion_windows, dimension.label_dimensions, dict(model_id=config.models.dimension, device=rt.device)),
        ("gender", gender_windows, gender.label_gender, dict(model_id=config.models.gender, device=rt.device)),
    ]
    for name, table, fn, kwargs in labellers:
        _, load_t = timed("load", lambda: fn(table.select(range(1))[:], **kwargs))  # warm-up: loads the model
        _, t = timed(name, lambda: table.map(fn, batched=True, batch_size=rt.batch_size, fn_kwargs=kwargs))
        rows.append((f"{name} ({len(table)} windows; load {load_t:.1f} s)", t, segment_audio))

    print(f"source: {args.source}  profile: {args.profile}  device: {rt.device}  batch: {rt.batch_size}")
    print(f"audio: {total_audio:.1f} s in {len(recordings)} recordings; {segment_audio:.1f} s in {len(segments)} segments")
    print(f"{'stage':<58} {'wall s':>8} {'audio s':>9} {'x real time':>12}")
    for name, seconds, audio in rows:
        print(f"{name:<58} {seconds:>8.2f} {audio:>9.1f} {audio / seconds:>12.1f}")


if __name__ == "__main__":
    main()
