"""Acoustic descriptors (build.stages.descriptors) against facts about real and synthetic audio, and the levels."""

import math
import statistics
import subprocess

import numpy as np
import pytest
import soundfile as sf
import syllables
from conftest import ravdess_clips, ravdess_recording

from build.core.schema import DESCRIPTORS_OUTPUT
from build.stages import descriptors as d

SR = 16_000
ACTORS = (1, 2, 3, 4, 5, 6)
SEGMENT = (10.0, 24.491)  # actor 1: four clips, "Kids / Dogs / Kids / Kids ..." (as in test_align_words)


def _ravdess(actor: int, start: float = 0.0, end: float | None = None) -> np.ndarray:
    audio, rate = sf.read(ravdess_recording(actor), dtype="float32")
    assert rate == SR and audio.ndim == 1
    return audio[round(start * SR) : None if end is None else round(end * SR)]


def _vowel(f0: float, seconds: float = 3.0) -> np.ndarray:
    """A vowel-like tone: harmonics of f0 up to 4 kHz, falling 6 dB per octave, shaped by the
    resonances of an /a/ (F1 700, F2 1220, F3 2600 Hz), faded in and out over 50 ms, peak 0.5."""
    t = np.arange(round(seconds * SR)) / SR

    def resonance(f, centre, bandwidth):
        return 1.0 / np.sqrt((1 - (f / centre) ** 2) ** 2 + (f * bandwidth / centre**2) ** 2)

    x = np.zeros_like(t)
    for k in range(1, int(4000 // f0) + 1):
        gain = sum(resonance(k * f0, c, b) for c, b in ((700, 130), (1220, 70), (2600, 160))) / k
        x += gain * np.sin(2 * np.pi * k * f0 * t)
    x *= np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.05)
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


# ---- pitch: synthetic vowels and the RAVDESS actors ------------------------------------------------


@pytest.mark.parametrize("f0", [120.0, 220.0])
def test_the_f0_of_a_synthetic_vowel_is_measured_within_3_percent(f0):
    voice = d.voice_descriptors(_vowel(f0))
    assert d.semitones_to_hz(voice["f0_semitone_mean"]) == pytest.approx(f0, rel=0.03)
    assert d.semitones_to_hz(voice["f0_semitone_median"]) == pytest.approx(f0, rel=0.03)
    assert voice["voiced_fraction"] > 0.9  # a steady vowel is voiced from end to end
    assert d.hz_to_semitones(d.semitones_to_hz(31.5)) == pytest.approx(31.5)


def test_window_values_voiced_silent_outside_and_empty():
    audio = np.concatenate([np.zeros(SR, dtype=np.float32), _vowel(120.0, 2.0)])  # 1 s silence, 2 s vowel
    spans = [(0.0, 0.9), (1.1, 2.9), (5.0, 6.0), (2.0, 2.0)]  # silence, vowel, outside the clip, empty
    windows = [{"start": a, "end": b} for a, b in spans]
    voice = d.voice_descriptors(audio, windows)
    silent, vowel, outside, empty = voice["descriptor_windows"]
    assert silent["f0_semitone_mean"] is None and silent["loudness_mean"] < vowel["loudness_mean"] / 100
    assert d.semitones_to_hz(vowel["f0_semitone_mean"]) == pytest.approx(120.0, rel=0.03)
    assert outside == {"start": 5.0, "end": 6.0, "f0_semitone_mean": None, "loudness_mean": None}
    assert empty == {"start": 2.0, "end": 2.0, "f0_semitone_mean": None, "loudness_mean": None}
    # a window over the whole clip gives the clip's eGeMAPS functionals (within 1 %, see the docstring)
    whole = d.voice_descriptors(audio, [{"start": 0.0, "end": 3.0}])
    (window,) = whole["descriptor_windows"]
    assert window["f0_semitone_mean"] == pytest.approx(whole["f0_semitone_mean"], rel=0.01)
    assert window["loudness_mean"] == pytest.approx(whole["loudness_mean"], rel=0.01)


@pytest.fixture(scope="module")
def actors_f0():
    """Per actor, over the first 8 clips of the recording: the clip-level median F0 of that stretch,
    and the mean F0 of each clip (the clips as windows)."""
    out = {}
    for actor in ACTORS:
        clips = [c for c in ravdess_clips() if c["recording"] == ravdess_recording(actor).name][:8]
        audio = _ravdess(actor, 0.0, clips[-1]["end"])
        voice = d.voice_descriptors(audio, [{"start": c["start"], "end": c["end"]} for c in clips])
        genders = {c["gender"] for c in clips}
        assert len(genders) == 1 and len(voice["descriptor_windows"]) == len(clips) == 8
        per_clip = [w["f0_semitone_mean"] for w in voice["descriptor_windows"]]
        out[actor] = (genders.pop(), voice["f0_semitone_median"], per_clip)
    return out


def test_every_male_actor_speaks_below_every_female_actor(actors_f0):
    # RAVDESS: odd actor numbers are men, even ones women (the clip table says so too)
    assert {a: g for a, (g, _, _) in actors_f0.items()} == {a: "male" if a % 2 else "female" for a in ACTORS}
    assert all(v is not None for _, _, per_clip in actors_f0.values() for v in per_clip)
    clip_medians = {a: statistics.median(per_clip) for a, (_, _, per_clip) in actors_f0.items()}
    males, females = [a for a in ACTORS if a % 2], [a for a in ACTORS if not a % 2]
    assert max(clip_medians[a] for a in males) < min(clip_medians[a] for a in females), clip_medians
    recording_medians = {a: median for a, (_, median, _) in actors_f0.items()}
    assert max(recording_medians[a] for a in males) < min(recording_medians[a] for a in females), (
        recording_medians
    )


# ---- speaking rate and pauses ------------------------------------------------------------------------


def test_syllables_come_from_the_cmu_dictionary_then_the_estimator():
    words = ("Kids", "are", "talking", "door.", "Apollo", "eleven")
    assert [d.count_syllables(w) for w in words] == [1, 1, 2, 1, 3, 3]
    assert d.count_syllables("don't") == 1  # the apostrophe stays inside the word
    assert d.count_syllables("well-known") == 2  # two runs of letters
    assert d.count_syllables(" 1990 ") == 0 and d.count_syllables("%") == 0 and d.count_syllables("") == 0
    assert d.count_syllables("blorptastic") == syllables.estimate("blorptastic")  # not in the dictionary


WORDS = [
    {"word": "talking", "start": 0.75, "end": 1.0},  # listed out of order: sorted by start
    {"word": "Kids", "start": 0.0, "end": 0.5},
    {"word": "1990", "start": None, "end": None},  # untimed, no syllable
    {"word": "by", "start": 1.2, "end": 1.5},
    {"word": "the", "start": 1.4, "end": 2.0},  # overlaps "by"
    {"word": "door.", "start": 2.5, "end": 3.0},
]


def test_pauses_are_gaps_of_at_least_the_threshold_between_timed_words():
    # gaps: 0.25 (exactly the threshold: a pause), 0.2, none (overlap), 0.5
    assert d.word_pauses(WORDS) == [0.25, 0.5]
    assert d.word_pauses(WORDS, pause_min_s=0.2) == [0.25, pytest.approx(0.2), 0.5]
    assert d.word_pauses(WORDS, pause_min_s=0.5001) == []
    assert d.word_pauses([{"word": "a", "start": None, "end": None}]) is None
    assert d.word_pauses([]) is None


def test_rate_over_the_words_span_less_pauses_or_over_the_given_speech_regions():
    by_words = d.rate_descriptors(WORDS, None, duration_s=3.0)
    # syllables: Kids 1, talking 2, 1990 0, by 1, the 1, door 1
    # speech: the 3.0 s span less 0.25 + 0.5 s of pauses
    assert by_words == {
        "syllable_count": 6,
        "speech_s": 2.25,
        "speaking_rate": 6 / 2.25,
        "pause_count": 2,
        "pause_mean_s": 0.375,
    }
    # regions: overlapping ones are joined, the part past the clip's end is cut
    regions = [{"start": 0.5, "end": 2.0}, {"start": 0.0, "end": 1.0}, {"start": 2.75, "end": 9.0}]
    by_regions = d.rate_descriptors(WORDS, regions, duration_s=3.0)
    assert by_regions["speech_s"] == 2.25 and by_regions["speaking_rate"] == pytest.approx(6 / 2.25)
    assert d.rate_descriptors(WORDS, [], duration_s=3.0)["speaking_rate"] is None  # no speech time


def test_rate_is_null_without_words_syllables_or_english():
    assert d.rate_descriptors([], None, 3.0) == {
        "syllable_count": 0,
        "speech_s": None,
        "speaking_rate": None,
        "pause_count": None,
        "pause_mean_s": None,
    }
    digits = d.rate_descriptors([{"word": "1990", "start": 0.0, "end": 1.0}], None, 3.0)
    assert digits == {
        "syllable_count": 0,
        "speech_s": 1.0,
        "speaking_rate": None,
        "pause_count": 0,
        "pause_mean_s": None,
    }
    assert d.rate_descriptors(WORDS, None, 3.0, language="en-GB")["syllable_count"] == 6
    for language in ("de", None):
        other = d.rate_descriptors(WORDS, None, 3.0, language=language)
        assert (other["syllable_count"], other["speaking_rate"], other["pause_count"]) == (None, None, 2)


@pytest.fixture(scope="module")
def tempo_rates(tmp_path_factory):
    """Actor 1's four-clip segment as it is and through FFmpeg's atempo 0.8 and 1.25; per version the
    speaking rate over the speech regions silero-vad finds (build.stages.segment), with the clips' own text."""
    from build.stages.segment import detect_speech

    folder = tmp_path_factory.mktemp("tempo")
    source = folder / "segment.wav"
    sf.write(source, _ravdess(1, *SEGMENT), SR)
    clips = [
        c
        for c in ravdess_clips()
        if c["recording"] == "ravdess_actor01.flac" and SEGMENT[0] <= c["start"] and c["end"] <= SEGMENT[1]
    ]
    words = [{"word": w, "start": None, "end": None} for c in clips for w in c["text"].split()]
    rates = {}
    for factor in (1.0, 0.8, 1.25):
        path = folder / f"atempo-{factor}.wav"
        command = ["ffmpeg", "-v", "error", "-y", "-i", str(source), "-af", f"atempo={factor}", str(path)]
        subprocess.run(command, check=True)
        audio, _ = sf.read(path, dtype="float32")
        speech = detect_speech({"audio_path": [str(path)], "error": [None]})["speech"][0]
        rates[factor] = d.rate_descriptors(words, speech, audio.size / SR)
    return len(clips), rates


def test_speaking_rate_follows_the_tempo_within_10_percent(tempo_rates):
    n_clips, rates = tempo_rates
    # "Kids are talking by the door" and "Dogs are sitting by the door": 7 syllables each
    assert n_clips == 4 and {r["syllable_count"] for r in rates.values()} == {28}
    for factor in (0.8, 1.25):
        ratio = rates[factor]["speaking_rate"] / rates[1.0]["speaking_rate"]
        assert abs(ratio / factor - 1) <= 0.10, (factor, ratio)


# ---- loudness, clipping -------------------------------------------------------------------------------


def test_clipped_share_is_the_share_of_samples_the_clipping_put_at_full_scale():
    speech = _ravdess(1, *SEGMENT).astype(np.float64)
    assert d.level_descriptors(speech.astype(np.float32))["clipped_fraction"] == 0.0  # peak 0.17: none
    normalised = speech / np.abs(speech).max()
    # clipped at 0.3 of full scale, then brought up so that the clipped samples are at full scale
    clipped = (np.clip(normalised, -0.3, 0.3) / 0.3).astype(np.float32)
    at_rails = np.count_nonzero(np.abs(normalised) >= 0.3)
    # no sample lies just under the clipping level, where 0.999 of full scale would also count it
    assert np.count_nonzero((np.abs(normalised) >= 0.3 * 0.999) & (np.abs(normalised) < 0.3)) == 0
    assert at_rails > 100
    assert d.level_descriptors(clipped)["clipped_fraction"] == at_rails / clipped.size


def test_clip_level_edges_and_lufs_nulls():
    samples = np.array([0.999, -0.999, 0.998, 1.0, -1.0, 0.5], dtype=np.float32)
    assert d.level_descriptors(samples)["clipped_fraction"] == 4 / 6  # on the level counts
    assert d.level_descriptors(samples, clip_level=1.0)["clipped_fraction"] == 2 / 6
    short = d.level_descriptors(np.full(round(0.39 * SR), 0.1, dtype=np.float32))
    assert short["loudness_lufs"] is None  # shorter than BS.1770's 0.4 s block
    silence, empty = np.zeros(SR, dtype=np.float32), np.zeros(0, dtype=np.float32)
    assert d.level_descriptors(silence) == {"loudness_lufs": None, "clipped_fraction": 0.0}
    assert d.level_descriptors(empty) == {"loudness_lufs": None, "clipped_fraction": None}


def test_lufs_follows_the_gain():
    speech = _ravdess(1, *SEGMENT)
    quiet = d.level_descriptors(speech)["loudness_lufs"]
    loud = d.level_descriptors(speech * 4)["loudness_lufs"]
    # both gates move with the gain (the relative one; the absolute one at -70 LUFS passes the same blocks)
    assert loud - quiet == pytest.approx(20 * math.log10(4), abs=0.01)


# ---- recording quality ---------------------------------------------------------------------------------


def test_dnsmos_falls_as_white_noise_rises():
    speech = _ravdess(1, *SEGMENT).astype(np.float64)
    noise = np.random.default_rng(0).standard_normal(speech.size)
    power = np.mean(speech**2)
    scores = [d.quality_descriptors(speech.astype(np.float32))]
    for snr_db in (20, 10, 0):
        scaled = noise * math.sqrt(power / (np.mean(noise**2) * 10 ** (snr_db / 10)))
        scores.append(d.quality_descriptors((speech + scaled).astype(np.float32)))
    for column in ("dnsmos_ovrl", "dnsmos_bak"):
        values = [s[column] for s in scores]
        assert all(a > b for a, b in zip(values, values[1:])), (column, values)
    assert all(1.0 <= s[c] <= 5.0 for s in scores for c in ("dnsmos_sig", "dnsmos_bak", "dnsmos_ovrl"))


def test_dnsmos_with_the_reference_hop_equals_speechmos():
    from speechmos import dnsmos

    audio = _ravdess(2, 0.0, 11.5)  # two windows of the reference: 0 and 1 s
    reference = dnsmos.run(audio, SR)
    ours = d.quality_descriptors(audio, hop_s=1.0)
    assert ours["dnsmos_sig"] == pytest.approx(reference["sig_mos"], abs=1e-4)
    assert ours["dnsmos_bak"] == pytest.approx(reference["bak_mos"], abs=1e-4)
    assert ours["dnsmos_ovrl"] == pytest.approx(reference["ovrl_mos"], abs=1e-4)


def test_dnsmos_windows_cover_the_clip_or_follow_the_reference_hop():
    n = round(9.01 * SR)
    assert d.dnsmos_windows(n) == [(0, n)]
    assert d.dnsmos_windows(n + 1) == [(0, n), (1, n + 1)]
    # 30 s: 4 windows, starts round(k * (480000 - 144160) / 3)
    assert d.dnsmos_windows(30 * SR) == [(s, s + n) for s in (0, 111947, 223893, 335840)]
    # the reference: 1 s hops while floor(seconds) - 9.01 allows, each window 9.01 s long
    assert d.dnsmos_windows(round(12.5 * SR), hop_s=1.0) == [(k * SR, k * SR + n) for k in range(3)]
    # and its float rounding: int((k + 9.01) * 16000) is one sample short from k = 7, so it skips them all
    assert d.dnsmos_windows(30 * SR, hop_s=1.0) == [(k * SR, k * SR + n) for k in range(7)]
    assert d.dnsmos_windows(n, hop_s=1.0) == [(0, n)]  # int(floor(9.01) - 9.01) + 1 = 1 window, as there


# ---- the whole clip, bad input -------------------------------------------------------------------------


def test_clip_descriptors_fill_every_column_of_the_schema():
    clip = next(c for c in ravdess_clips() if c["recording"] == "ravdess_actor02.flac")
    audio = _ravdess(2, clip["start"], clip["end"])
    text = clip["text"].split()
    words = [{"word": w, "start": 1.0 + 0.3 * i, "end": 1.25 + 0.3 * i} for i, w in enumerate(text)]
    out = d.clip_descriptors(audio, words, [{"start": 0.0, "end": 2.0}, {"start": 2.0, "end": 3.6}])
    assert list(out) == list(DESCRIPTORS_OUTPUT)
    assert DESCRIPTORS_OUTPUT.encode_example(out) == out  # plain values: nothing to convert
    counts_and_nulls = ("descriptor_windows", "syllable_count", "pause_count", "pause_mean_s")
    assert all(type(out[k]) is float for k in DESCRIPTORS_OUTPUT if k not in counts_and_nulls), out
    assert all(type(v) is float for w in out["descriptor_windows"] for v in w.values())
    assert (out["syllable_count"], out["pause_count"], out["pause_mean_s"]) == (7, 0, None)
    assert out["speech_s"] == pytest.approx(0.3 * 5 + 0.25)


def test_empty_audio_gives_null_audio_columns():
    out = d.clip_descriptors(np.zeros(0, dtype=np.float32), [], [{"start": 0.0, "end": 1.0}])
    window = {"start": 0.0, "end": 1.0, "f0_semitone_mean": None, "loudness_mean": None}
    assert out["descriptor_windows"] == [window]
    measured = [k for k in DESCRIPTORS_OUTPUT if k not in ("descriptor_windows", "syllable_count")]
    assert all(out[k] is None for k in measured)
    assert out["syllable_count"] == 0


def test_silence_has_no_voice():
    voice = d.voice_descriptors(np.zeros(2 * SR, dtype=np.float32))
    assert voice["voiced_fraction"] == 0.0
    voiced_only = ("f0_semitone_mean", "f0_semitone_median", "f0_semitone_range", "jitter_local")
    assert all(voice[k] is None for k in (*voiced_only, "shimmer_local_db", "hnr_db"))


def test_bad_input_raises_one_line_naming_the_problem():
    with pytest.raises(ValueError, match=r"^audio: expected a 1-D array of samples, got ndarray \(2, 10\)$"):
        d.clip_descriptors(np.zeros((2, 10), dtype=np.float32), [], [])
    broken = np.zeros(2 * SR, dtype=np.float32)
    broken[SR + SR // 2] = np.nan
    with pytest.raises(ValueError, match=r"^audio: NaN or Inf samples at 1\.500 s$"):
        d.level_descriptors(broken)
    with pytest.raises(ValueError, match=r"^window 1: end 1 s before start 2 s$"):
        d.voice_descriptors(_vowel(120.0, 1.0), [{"start": 0.0, "end": 1.0}, {"start": 2.0, "end": 1.0}])
    with pytest.raises(ValueError, match=r"^speech region 0: end 0\.5 s before start 0\.75 s$"):
        d.speech_time([{"start": 0.75, "end": 0.5}], 3.0)
    with pytest.raises(ValueError, match=r"^word 0: end 0\.5 s before start 1 s$"):
        d.word_pauses([{"word": "a", "start": 1.0, "end": 0.5}])


# ---- levels ----------------------------------------------------------------------------------------------


def test_levels_on_and_around_the_edges():
    edges = [1.0, 2.0, 3.0, 4.0]
    values = [0.999, 1.0, 1.001, 2.0, 2.5, 3.0, 3.999, 4.0, 100.0, None, math.nan, math.inf]
    assert d.levels(values, edges, d.RATE_LEVELS) == [
        "very slowly", "quite slowly", "quite slowly", "moderate speed", "moderate speed", "quite fast",
        "quite fast", "very fast", "very fast", None, None, None,
    ]
    assert d.levels([1.0, 5.0], None, d.RATE_LEVELS) == [None, None]  # no edges: no level
    assert d.levels([], edges, d.RATE_LEVELS) == []
    # repeated edges: the level between them is empty, a value on them goes above both
    repeated = [1.0, 1.0, 2.0, 3.0]
    assert d.levels([0.5, 1.0, 2.0], repeated, d.QUALITY_LEVELS) == ["very noisy", "slightly noisy", "clean"]
    with pytest.raises(ValueError, match=r"^levels: 4 edges need 5 names, got 3$"):
        d.levels([1.0], edges, ("low", "mid", "high"))
    with pytest.raises(ValueError, match=r"^levels: edges must not decrease, got \[1\.0, 3\.0, 2\.0, 4\.0\]"):
        d.levels([1.0], [1.0, 3.0, 2.0, 4.0], d.RATE_LEVELS)


def test_quantile_edges_of_the_built_set():
    values = [float(v) for v in range(11)] + [None, math.nan]  # nulls and NaN are left out
    assert d.quantile_edges(values) == [1.0, 3.0, 7.0, 9.0]
    assert d.quantile_edges(values, quantiles=(0.5,), min_count=11) == [5.0]
    assert d.quantile_edges(values, min_count=12) is None  # 11 finite values
    assert d.quantile_edges([]) is None and d.quantile_edges([], min_count=0) is None
    assert d.levels([0.0, 1.0, 5.0, 9.0, 10.0], d.quantile_edges(values), d.LOUDNESS_LEVELS) == [
        "very quiet", "quiet", "moderate loudness", "very loud", "very loud",
    ]


def test_pitch_is_binned_against_the_speakers_gender():
    values = [float(v) for v in range(11)] + [float(v) for v in range(10, 21)] + [50.0, 7.0]
    genders = ["male"] * 11 + ["female"] * 11 + [None, "other"]
    edges = d.pitch_edges(values, genders, min_count=2)
    assert edges == {"female": [11.0, 13.0, 17.0, 19.0], "male": [1.0, 3.0, 7.0, 9.0], "other": None}
    # the same 12 semitones: very high for a man, low for a woman; no gender or no edges: no level
    genders = ["male", "female", None, "other", "male"]
    assert d.pitch_levels([12.0, 12.0, 12.0, 12.0, None], genders, edges) == [
        "very high pitch", "low pitch", None, None, None,
    ]
    with pytest.raises(ValueError, match=r"^pitch_edges: 2 values but 1 genders$"):
        d.pitch_edges([1.0, 2.0], ["male"])


def test_span_changes_against_the_clip_mean_and_the_previous_window():
    f0 = [20.0, 22.0, 22.0, None, 18.0, 23.0]
    windows = [{"start": float(i), "end": float(i + 1), "f0": v} for i, v in enumerate(f0)]
    # mean of the values: 21; a step of exactly 2 semitones counts as a change
    assert [(c["vs_clip"], c["change"]) for c in d.span_changes(windows, "f0", d.PITCH_STEP_ST)] == [
        ("near", None),
        ("near", "rising"),
        ("near", "steady"),
        (None, None),
        ("below", "falling"),
        ("above", "rising"),
    ]
    assert d.span_changes(windows, "f0", 2.0)[3] == {
        "start": 3.0,
        "end": 4.0,
        "vs_clip": None,
        "change": None,
    }
    loudness = [{"start": 0.0, "end": 1.0, "l": 0.75}, {"start": 1.0, "end": 2.0, "l": 1.25}]
    # relative: the step is 0.25 of the mean (1.0), reached exactly on both sides
    changes = d.span_changes(loudness, "l", d.LOUDNESS_STEP, relative=True)
    assert [(c["vs_clip"], c["change"]) for c in changes] == [
        ("below", None), ("above", "rising"),
    ]
    assert [c["vs_clip"] for c in d.span_changes([{"start": 0, "end": 1, "l": None}], "l", 0.25)] == [None]
    assert d.span_changes([], "l", 0.25) == []
