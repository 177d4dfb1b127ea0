"""Decode audio spans on demand, 16 kHz mono, through torchcodec (the decoder datasets uses).

Stages carry ``(audio_path, start, end)`` and call ``decode_spans`` for a batch: spans of one file are
decoded in a single pass over their covering range and sliced, and a file that fails to decode gives
an exception for its items instead of stopping the batch.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

SAMPLE_RATE = 16_000


class AudioError(RuntimeError):
    """A file that cannot be decoded; the message names the file and the cause."""


def _decoder(path: str, sample_rate: int):
    from torchcodec.decoders import AudioDecoder

    try:
        return AudioDecoder(path, sample_rate=sample_rate, num_channels=1)
    except Exception as exc:  # torchcodec raises ValueError/RuntimeError with FFmpeg's words
        raise AudioError(f"{path}: cannot open as audio ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def probe_duration(path: str) -> float:
    """Duration in seconds from the container, falling back to a full decode when it has none."""
    decoder = _decoder(path, SAMPLE_RATE)
    duration = decoder.metadata.duration_seconds_from_header
    if duration is None:
        duration = len(decode_span(path)) / SAMPLE_RATE
    if not duration or duration <= 0:
        raise AudioError(f"{path}: holds no audio samples")
    return float(duration)


def decode_span(path: str, start: float | None = None, end: float | None = None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Samples of ``[start, end)`` seconds as float32 mono at ``sample_rate``."""
    decoder = _decoder(path, sample_rate)
    try:
        samples = decoder.get_samples_played_in_range(start_seconds=start or 0.0, stop_seconds=end)
    except Exception as exc:
        raise AudioError(f"{path}: cannot decode {start}-{end} s ({_first_line(exc)})") from exc
    audio = samples.data.mean(dim=0).numpy().astype(np.float32, copy=False)
    if start is not None and end is not None:
        # Frame boundaries can add or drop a few samples: make the length exact.
        expected = int(round((end - start) * sample_rate))
        audio = audio[:expected] if len(audio) >= expected else np.pad(audio, (0, expected - len(audio)))
    return audio


def decode_spans(paths: list[str], starts: list[float], ends: list[float], sample_rate: int = SAMPLE_RATE) -> list[np.ndarray | AudioError]:
    """Decode many spans; each file is decoded once over the range covering its spans."""
    by_path: dict[str, list[int]] = defaultdict(list)
    for i, path in enumerate(paths):
        by_path[path].append(i)
    out: list[np.ndarray | AudioError] = [None] * len(paths)  # type: ignore[list-item]
    for path, items in by_path.items():
        lo = min(starts[i] for i in items)
        hi = max(ends[i] for i in items)
        try:
            block = decode_span(path, lo, hi, sample_rate)
        except AudioError as exc:
            for i in items:
                out[i] = exc
            continue
        for i in items:
            a = int(round((starts[i] - lo) * sample_rate))
            b = a + int(round((ends[i] - starts[i]) * sample_rate))
            out[i] = block[a:b]
    return out
