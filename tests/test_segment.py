
from build.segment import detect_speech, explode_segments, length_drop_reason, merge_speech
from conftest import AMI, ravdess_recording


def _vad(paths):
    return detect_speech({"audio_path": [str(p) for p in paths], "error": [None] * len(paths)})


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
    assert out["vad_error"][0].startswith(f"{tmp_path / 'gone.wav'}: voice activity detection failed")


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


def test_explode_segments_derives_ids():
    batch = {"recording_id": ["rec"], "audio_path": ["/x.wav"], "speech": [[{"start": 0.0, "end": 5.0}, {"start": 10.0, "end": 12.0}]]}
    out = explode_segments(batch, merge_gap_s=1.0, max_segment_s=60.0)
    assert out == {"segment_id": ["rec-0000", "rec-0001"], "recording_id": ["rec", "rec"], "audio_path": ["/x.wav", "/x.wav"], "start": [0.0, 10.0], "end": [5.0, 12.0]}
