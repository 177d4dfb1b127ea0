import pytest
from conftest import AMI, APOLLO, ravdess_recording

from build.core.config import VadConfig
from build.stages.segment import detect_speech, explode_segments, length_drop_reason, merge_speech


def _vad(paths, **kwargs):
    return detect_speech({"audio_path": [str(p) for p in paths], "error": [None] * len(paths)}, VadConfig(**kwargs))


def _silero_whole_file(path):
    """Silero's own get_speech_timestamps on the recording decoded at once (the reference)."""
    import torch
    from silero_vad import get_speech_timestamps, load_silero_vad

    from build.sources.audio import decode_span

    stamps = get_speech_timestamps(torch.from_numpy(decode_span(str(path))), load_silero_vad(), sampling_rate=16_000)
    return [{"start": s["start"] / 16_000, "end": s["end"] / 16_000} for s in stamps]


@pytest.mark.parametrize("path", [AMI, ravdess_recording(1)], ids=["ami", "ravdess"])
def test_vad_in_blocks_equals_silero_on_the_whole_recording(path):
    # 7 s blocks cut speech regions and are not a whole number of 512-sample windows (7 s = 218.75
    # windows), 0.5 s blocks cut nearly every region, 0.02 s blocks are shorter than one window:
    # the regions must still be exactly silero's.
    expected = _silero_whole_file(path)
    assert len(expected) >= 10
    for block_s in (7.0, 0.5, 0.02, 600.0):
        out = _vad([path], block_s=block_s)
        assert out["vad_error"] == [None]
        assert out["speech"][0] == expected, block_s
    assert merge_speech(_vad([path], block_s=7.0)["speech"][0], 3.0, 60.0) == merge_speech(expected, 3.0, 60.0)


def test_vad_of_a_resampled_recording_within_one_block_equals_silero():
    # apollo11.mp3 is 8 kHz (resampled) and 89 s: one default block, so no resampler shift applies
    assert _vad([APOLLO])["speech"][0] == _silero_whole_file(APOLLO)


def test_vad_finds_speech_in_the_meeting_and_none_in_silence(silence_wav):
    out = _vad([AMI, silence_wav])
    meeting, silence = out["speech"]
    assert out["vad_error"] == [None, None]
    assert silence == []
    speech_seconds = sum(r["end"] - r["start"] for r in meeting)
    assert len(meeting) >= 5 and 40 < speech_seconds <= 60  # a busy 4-person minute
    assert all(0 <= r["start"] < r["end"] <= 60.0 for r in meeting)


def test_joined_ravdess_recording_becomes_one_segment_within_length():
    regions = _vad([ravdess_recording(1)])["speech"][0]
    assert len(regions) >= 16  # one region or more per clip: RAVDESS clips have silence around them
    segments = merge_speech(regions, merge_gap_s=3.0, max_segment_s=60.0)
    assert len(segments) == 1
    start, end = segments[0]
    assert start < 1.5 and end > 55.0 and length_drop_reason(start, end, 30.0, 60.0) is None


def test_vad_error_names_the_file(tmp_path):
    out = _vad([tmp_path / "gone.wav"])
    assert out["speech"] == [[]]
    assert out["vad_error"][0].startswith(f"{tmp_path / 'gone.wav'}: voice activity detection failed (cannot open as audio (")
    assert "\n" not in out["vad_error"][0]


def test_merge_rule_gap_and_maximum():
    r = lambda s, e: {"start": s, "end": e}
    regions = [r(0, 10), r(11, 20), r(23, 30), r(30.5, 55), r(55.5, 90)]
    # 1 s gap joins; 3 s gap splits; a join that would pass 60 s starts a new segment
    assert merge_speech(regions, merge_gap_s=2.0, max_segment_s=60.0) == [(0, 20), (23, 55), (55.5, 90)]
    assert merge_speech([r(0, 75)], merge_gap_s=2.0, max_segment_s=60.0) == [(0, 75)]  # the filter drops it


def test_length_filter_reasons_and_counts():
    spans = [(0, 29.99), (0, 30.0), (0, 45.0), (0, 60.0), (0, 60.01), (10, 12)]
    reasons = [length_drop_reason(s, e, 30.0, 60.0) for s, e in spans]
    assert reasons == ["shorter than 30 s", None, None, None, "longer than 60 s", "shorter than 30 s"]


# start times every 10 ms over 0-100 s; ends as decimals (merge_speech rounds to ms) and as float sums
STARTS = [round(k * 0.01, 2) for k in range(10_001)]


@pytest.mark.parametrize("form", ["rounded", "sum"])
def test_segments_of_exactly_tau_and_the_maximum_pass_the_length_filter_wherever_they_start(form):
    at = (lambda start, d: round(start + d, 3)) if form == "rounded" else (lambda start, d: start + d)
    misses = {30.0: 0, 60.0: 0}
    for start in STARTS:
        for length in misses:
            segment = merge_speech([{"start": start, "end": at(start, length)}], 3.0, 60.0)[0]
            misses[length] += length_drop_reason(start, at(start, length), 30.0, 60.0) is not None
            misses[length] += length_drop_reason(*segment, 30.0, 60.0) is not None
    assert misses == {30.0: 0, 60.0: 0}
    # the case
    assert length_drop_reason(*merge_speech([{"start": 2.05, "end": 32.05}], 3, 60)[0], 30, 60) is None
    # one millisecond outside still fails
    assert [length_drop_reason(s, at(s, 29.999), 30, 60) for s in (2.05, 97.3)] == ["shorter than 30 s"] * 2
    assert [length_drop_reason(s, at(s, 60.001), 30, 60) for s in (2.05, 97.3)] == ["longer than 60 s"] * 2


@pytest.mark.parametrize("form", ["rounded", "sum"])
def test_a_pause_of_exactly_the_merge_gap_joins_and_a_join_of_exactly_the_maximum_is_allowed(form):
    at = (lambda start, d: round(start + d, 3)) if form == "rounded" else (lambda start, d: start + d)
    r = lambda s, e: {"start": s, "end": e}
    gap_misses = join_misses = 0
    for start in STARTS:
        # two 1 s regions 3 s apart: one segment
        gap_misses += len(merge_speech([r(start, at(start, 1)), r(at(start, 4), at(start, 5))], 3, 60)) != 1
        # 20 s + 2 s pause + 38 s: the joined segment lasts exactly 60 s
        joined = merge_speech([r(start, at(start, 20)), r(at(start, 22), at(start, 60))], 3, 60)
        join_misses += len(joined) != 1
    assert (gap_misses, join_misses) == (0, 0)
    # the case: the gap is 3.0000000000000004 in floating point
    assert merge_speech([r(0.15, 1.15), r(4.15, 5.15)], 3, 60) == [(0.15, 5.15)]
    # one millisecond more is a longer pause, or a longer join
    assert merge_speech([r(0.15, 1.15), r(4.151, 5.15)], 3, 60) == [(0.15, 1.15), (4.151, 5.15)]
    assert merge_speech([r(2.05, 22.05), r(24.05, 62.051)], 3, 60) == [(2.05, 22.05), (24.05, 62.051)]


def test_explode_segments_derives_ids():
    batch = {"recording_id": ["rec"], "audio_path": ["/x.wav"], "speech": [[{"start": 0.0, "end": 5.0}, {"start": 10.0, "end": 12.0}]]}
    out = explode_segments(batch, merge_gap_s=1.0, max_segment_s=60.0)
    assert out == {"segment_id": ["rec-0000", "rec-0001"], "recording_id": ["rec", "rec"], "audio_path": ["/x.wav", "/x.wav"], "start": [0.0, 10.0], "end": [5.0, 12.0]}


def test_vad_runs_on_one_thread_and_gives_the_process_its_threads_back(monkeypatch):
    import torch

    from build.stages import segment

    seen = []
    real = segment.speech_probabilities
    monkeypatch.setattr(segment, "speech_probabilities", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1])
    torch.set_num_threads(2)
    out = detect_speech({"audio_path": [str(AMI)], "error": [None]})
    assert out["vad_error"] == [None] and out["speech"][0]
    assert seen == [1]  # silero is fastest on one thread
    assert torch.get_num_threads() == 2  # the labelling models get the process's threads back
