"""Peak memory of VAD and segment decoding on a 2-minute and a 2-hour recording: it must not grow with length.

    .venv/bin/python benchmarks/memory.py                   # 2 min vs 2 h, blocks of VadConfig.block_s
    .venv/bin/python benchmarks/memory.py --whole           # also the old whole-file read, for comparison
    .venv/bin/python benchmarks/memory.py --minutes 2 30    # other lengths

Builds the recordings under a temporary folder (deleted at the end) as 16 kHz FLAC, by repeating the
16 kHz recordings of data/samples end to end. Each is then measured in a fresh Python process that
runs ``segment.detect_speech`` on it and decodes every consecutive 60 s span with
``audio.decode_span``, one at a time; the process reports its own peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``), and its RSS after the imports and the silero model
load, before any audio. Prints one line per recording and the ratio of the peaks (target: <= 2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "data" / "samples"
SPAN_S = 60.0


def build_recording(path: Path, minutes: float) -> float:
    """Write ``minutes`` of 16 kHz FLAC by cycling the bundled 16 kHz recordings; returns its seconds."""
    import soundfile as sf

    sources = [p for p in sorted(SAMPLES.glob("*.flac")) if sf.info(p).samplerate == 16_000]
    clips = [sf.read(p, dtype="int16")[0] for p in sources]
    target = int(minutes * 60 * 16_000)
    written, index = 0, 0
    with sf.SoundFile(path, "w", samplerate=16_000, channels=1, format="FLAC", subtype="PCM_16") as out:
        while written < target:
            clip = clips[index % len(clips)][: target - written]
            out.write(clip)
            written, index = written + len(clip), index + 1
    return written / 16_000


def child(path: str, mode: str) -> None:
    """Measure one recording in this (fresh) process and print a JSON line."""
    sys.path.insert(0, str(REPO))
    from build.core.devices import cached
    from build.sources import audio
    from build.stages import segment

    def rss_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    cached(("silero-vad",), segment._silero)
    baseline = rss_mb()
    t0 = time.perf_counter()
    if mode == "blocks":
        out = segment.detect_speech({"audio_path": [path], "error": [None]})
        if out["vad_error"][0]:
            raise SystemExit(out["vad_error"][0])
        regions = len(out["speech"][0])
    else:  # the former read: the whole recording decoded at once, then silero on it
        import torch
        from silero_vad import get_speech_timestamps

        samples = torch.from_numpy(audio.decode_span(path))
        regions = len(get_speech_timestamps(samples, cached(("silero-vad",), segment._silero), sampling_rate=16_000))
        del samples
    vad_s = time.perf_counter() - t0
    vad_peak = rss_mb()
    duration = audio.probe_duration(path)
    t0 = time.perf_counter()
    spans, start = 0, 0.0
    while start < duration:
        audio.decode_span(path, start, min(start + SPAN_S, duration))
        spans, start = spans + 1, start + SPAN_S
    decode_s = time.perf_counter() - t0
    print(json.dumps({"baseline_mb": baseline, "vad_peak_mb": vad_peak, "peak_mb": rss_mb(), "regions": regions, "spans": spans, "vad_s": vad_s, "decode_s": decode_s}))


def measure(path: Path, mode: str) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", str(path), "--mode", mode], capture_output=True, text=True, cwd=REPO, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"{path}: the measuring process failed ({result.stderr.strip().splitlines()[-1:]})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs=2, default=(2.0, 120.0), metavar=("SHORT", "LONG"))
    parser.add_argument("--whole", action="store_true", help="also measure the whole-file read VAD used before")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="blocks", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.mode)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="cpqa-memory-") as tmp:
        recordings = []
        for minutes in args.minutes:
            path = Path(tmp) / f"{minutes:g}min.flac"
            recordings.append((path, build_recording(path, minutes)))
        for mode in ("blocks", "whole") if args.whole else ("blocks",):
            peaks = []
            for path, seconds in recordings:
                r = measure(path, mode)
                peaks.append(r["peak_mb"])
                print(
                    f"{mode:6s} {seconds / 60:6.1f} min: peak RSS {r['peak_mb']:7.1f} MB (after imports {r['baseline_mb']:.1f} MB,"
                    f" after VAD {r['vad_peak_mb']:.1f} MB); VAD {r['vad_s']:.1f} s, {r['regions']} regions;"
                    f" {r['spans']} spans of {SPAN_S:g} s decoded in {r['decode_s']:.1f} s"
                )
            print(f"{mode:6s} peak ratio long/short: {peaks[1] / peaks[0]:.2f} (target <= 2)")


if __name__ == "__main__":
    main()
