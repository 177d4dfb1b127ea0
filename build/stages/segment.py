"""Stages 1-2: voice activity detection, speech segments, and the length filter.

``detect_speech`` (batched map over recordings): ``audio_path``, ``error`` -> ``speech`` (silero-vad
regions ``{start, end}`` in seconds) and ``vad_error`` (null, or one line naming the file and the
problem). A row whose ``error`` is set (ingest failed it) gets no regions and no VAD error.

Bounded memory: a recording is read in blocks of ``block_s`` seconds (``audio.iter_blocks``), never
whole. Silero scores the audio in windows of 512 samples (32 ms) with a recurrent state; the
windows are cut from the stream of blocks (samples left over at a block's end start the next
window), the model's state runs on from one block to the next, and the regions are derived once
from the probabilities of the whole recording (``get_speech_timestamps_from_probs``, the second
half of silero's ``get_speech_timestamps``). So no region is ever cut at a block edge: nothing
needs joining afterwards, and the regions are exactly those of silero on the recording decoded at
once, for any ``block_s``, whenever the blocks put end to end equal that decode. They do for every
source FFmpeg does not resample (16 kHz files), and for any source no longer than one block. A
resampled source longer than a block (an 8 or 44.1 kHz MP3 over 10 minutes) is read with each later
block shifted by the resampler's delay (about 2 ms, see ``build.sources.audio``), and silero may then move
a boundary where its probability is near the threshold.

Samples that are NaN or infinite (a float WAV can hold them) are not repaired: the recording is
refused with ``vad_error`` "<file>: NaN or Inf samples at <t> s ..." (reason ``NON_FINITE``, see
``vad_drop_reason``), where silero would otherwise score them as silence and report no speech.

``explode_segments`` (batched map, one row per segment; ``schema.SEGMENT``): joins consecutive speech
regions whose pause is at most ``merge_gap_s`` while the joined segment stays within
``max_segment_s``; a longer pause, or a join that would pass the maximum, starts a new segment.
A single region longer than the maximum stays as it is, and the length filter drops it.

``length_drop_reason``: the predicate of the length filter (τ <= duration <= max).

Both rules compare whole samples at 16 kHz (``samples(t) = round(t * 16000)``), never differences of
float seconds: 32.05 - 2.05 is 29.999999999999996 in floating point, but 512800 - 32800 samples is
exactly 30 s, so a segment of exactly τ or the maximum passes and a pause of exactly ``merge_gap_s``
joins, wherever the segment starts. Every bound is inclusive.
"""

from __future__ import annotations

import numpy as np

from ..core.config import VadConfig
from ..core.devices import cached, torch_threads
from ..core.errors import first_line
from ..sources.audio import SAMPLE_RATE, AudioError, iter_blocks

_WINDOW = 512  # silero's window at 16 kHz

# drop reasons decided here
VAD_FAILED = "voice activity detection failed"
NON_FINITE = "NaN or Inf samples"
SHORTER = "shorter than {min_s:g} s"  # the length filter's reasons name the configured bound
LONGER = "longer than {max_s:g} s"


class NonFiniteSamples(AudioError):
    """A recording with NaN or infinite samples: refused rather than silently repaired."""


def vad_drop_reason(error: str) -> str:
    """The funnel reason of a ``vad_error``: ``NON_FINITE`` or ``VAD_FAILED``."""
    return NON_FINITE if f": {NON_FINITE} at " in error else VAD_FAILED


def _silero():
    from silero_vad import load_silero_vad

    return load_silero_vad()


def detect_speech(batch: dict[str, list], vad: VadConfig | None = None) -> dict[str, list]:
    """Batched map function: speech regions of each recording (``vad``: silero's settings, default VadConfig())."""
    v = vad or VadConfig()
    # silero runs fastest on one thread (and ``import silero_vad`` sets one for the whole process): one
    # thread while VAD runs, the process's own count again afterwards, for the labelling models
    with torch_threads(1):
        return _detect_speech(batch, v.threshold, v.min_speech_ms, v.min_silence_ms, v.speech_pad_ms, v.block_s)


def _detect_speech(batch: dict[str, list], threshold: float, min_speech_ms: int, min_silence_ms: int, speech_pad_ms: int, block_s: float) -> dict[str, list]:
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    # The silero model is a small CPU model with internal state: one copy per process.
    model = cached(("silero-vad",), _silero)
    speech, errors = [], []
    for path, error in zip(batch["audio_path"], batch["error"]):
        if error is not None:  # ingest already failed this file
            speech.append([])
            errors.append(None)
            continue
        try:
            probs, n_samples = speech_probabilities(path, model, block_s)
            stamps = get_speech_timestamps_from_probs(
                probs,
                sampling_rate=SAMPLE_RATE,
                threshold=threshold,
                min_speech_duration_ms=min_speech_ms,
                min_silence_duration_ms=min_silence_ms,
                speech_pad_ms=speech_pad_ms,
                audio_length_samples=n_samples,
            )
            speech.append([{"start": s["start"] / SAMPLE_RATE, "end": s["end"] / SAMPLE_RATE} for s in stamps])
            errors.append(None)
        except NonFiniteSamples as exc:
            speech.append([])
            errors.append(str(exc))
        except Exception as exc:  # one broken file never stops the build
            speech.append([])
            reason = str(exc).removeprefix(f"{path}: ") if isinstance(exc, AudioError) else first_line(exc)
            errors.append(f"{path}: voice activity detection failed ({reason})")
    return {"speech": speech, "vad_error": errors}


def speech_probabilities(path: str, model, block_s: float = VadConfig.block_s) -> tuple[list[float], int]:
    """Silero's speech probability per 512-sample window of the recording, and its length in samples.

    Reads ``block_s`` seconds at a time; the same windows and model state as one pass over the whole
    recording (the last window is zero-padded, as silero does).
    """
    import torch

    probs: list[float] = []
    carry = torch.zeros(0)  # the samples of a window begun in the previous block
    n_samples = 0
    model.reset_states()
    with torch.no_grad():
        for offset, block in iter_blocks(path, block_s):
            bad = np.flatnonzero(~np.isfinite(block))
            if len(bad):
                at = offset + bad[0] / SAMPLE_RATE
                raise NonFiniteSamples(f"{path}: {NON_FINITE} at {at:.2f} s: the recording is refused, not repaired")
            samples = torch.from_numpy(block)
            n_samples += len(samples)
            i = 0
            if len(carry):
                i = min(_WINDOW - len(carry), len(samples))
                carry = torch.cat([carry, samples[:i]])
                if len(carry) < _WINDOW:
                    continue
                probs.append(model(carry, SAMPLE_RATE).item())
            whole = i + (len(samples) - i) // _WINDOW * _WINDOW
            for j in range(i, whole, _WINDOW):
                probs.append(model(samples[j : j + _WINDOW], SAMPLE_RATE).item())
            carry = samples[whole:].clone()
        if len(carry):
            probs.append(model(torch.nn.functional.pad(carry, (0, _WINDOW - len(carry))), SAMPLE_RATE).item())
    if n_samples == 0:
        raise AudioError(f"{path}: holds no audio samples")
    return probs, n_samples


def samples(seconds: float) -> int:
    """A time (or a duration) in whole samples at 16 kHz: what the length and merge rules compare."""
    return int(round(seconds * SAMPLE_RATE))


def merge_speech(regions: list[dict], merge_gap_s: float, max_segment_s: float) -> list[tuple[float, float]]:
    """Join speech regions into segments (see the module docstring for the rule)."""
    gap, longest = samples(merge_gap_s), samples(max_segment_s)
    segments: list[list[float]] = []
    for region in sorted(regions, key=lambda r: r["start"]):
        start, end = region["start"], region["end"]
        if segments:
            last = segments[-1]
            if samples(start) - samples(last[1]) <= gap and samples(end) - samples(last[0]) <= longest:
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
    """``SHORTER`` or ``LONGER`` when the segment's length in samples is outside [τ, max], else None."""
    duration = samples(end) - samples(start)
    if duration < samples(min_s):
        return SHORTER.format(min_s=min_s)
    if duration > samples(max_s):
        return LONGER.format(max_s=max_s)
    return None
