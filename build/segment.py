"""Stages 1-2: voice activity detection, speech segments, and the length filter.

``detect_speech`` (batched map over recordings): ``audio_path``, ``error`` -> ``speech`` (silero-vad
regions ``{start, end}`` in seconds) and ``vad_error``.

``explode_segments`` (batched map, one row per segment; ``schema.SEGMENT``): joins consecutive speech
regions whose pause is at most ``merge_gap_s`` while the joined segment stays within
``max_segment_s``; a longer pause, or a join that would pass the maximum, starts a new segment.
A single region longer than the maximum stays as it is, and the length filter drops it.

``length_drop_reason``: the predicate of the length filter (τ <= duration <= max).
"""

from __future__ import annotations

from .audio import SAMPLE_RATE, decode_span
from .devices import cached


def _silero():
    from silero_vad import load_silero_vad

    return load_silero_vad()


def detect_speech(
    batch: dict[str, list],
    *,
    threshold: float = 0.5,
    min_speech_ms: int = 250,
    min_silence_ms: int = 100,
    speech_pad_ms: int = 30,
) -> dict[str, list]:
    from silero_vad import get_speech_timestamps

    # The silero model is a small CPU model with internal state: one copy per process.
    model = cached(("silero-vad",), _silero)
    speech, errors = [], []
    for path, error in zip(batch["audio_path"], batch["error"]):
        if error is not None:  # ingest already failed this file
            speech.append([])
            errors.append(None)
            continue
        try:
            import torch

            audio = torch.from_numpy(decode_span(path))
            stamps = get_speech_timestamps(
                audio,
                model,
                threshold=threshold,
                sampling_rate=SAMPLE_RATE,
                min_speech_duration_ms=min_speech_ms,
                min_silence_duration_ms=min_silence_ms,
                speech_pad_ms=speech_pad_ms,
            )
            speech.append([{"start": s["start"] / SAMPLE_RATE, "end": s["end"] / SAMPLE_RATE} for s in stamps])
            errors.append(None)
        except Exception as exc:  # one broken file never stops the build
            speech.append([])
            errors.append(f"{path}: voice activity detection failed ({exc})")
    return {"speech": speech, "vad_error": errors}


def merge_speech(regions: list[dict], merge_gap_s: float, max_segment_s: float) -> list[tuple[float, float]]:
    """Join speech regions into segments (see the module docstring for the rule)."""
    segments: list[list[float]] = []
    for region in sorted(regions, key=lambda r: r["start"]):
        start, end = region["start"], region["end"]
        if segments:
            last = segments[-1]
            if start - last[1] <= merge_gap_s and end - last[0] <= max_segment_s:
                last[1] = max(last[1], end)
                continue
        segments.append([start, end])
    return [(round(s, 3), round(e, 3)) for s, e in segments]


def explode_segments(batch: dict[str, list], *, merge_gap_s: float, max_segment_s: float) -> dict[str, list]:
    out = {"segment_id": [], "recording_id": [], "audio_path": [], "start": [], "end": []}
    for rid, path, regions in zip(batch["recording_id"], batch["audio_path"], batch["speech"]):
        for index, (start, end) in enumerate(merge_speech(regions, merge_gap_s, max_segment_s)):
            out["segment_id"].append(f"{rid}-{index:04d}")
            out["recording_id"].append(rid)
            out["audio_path"].append(path)
            out["start"].append(start)
            out["end"].append(end)
    return out


def length_drop_reason(start: float, end: float, min_s: float, max_s: float) -> str | None:
    duration = end - start
    if duration < min_s:
        return f"shorter than {min_s:g} s"
    if duration > max_s:
        return f"longer than {max_s:g} s"
    return None
