import pytest

from build.core.windows import explode_windows, window_spans


def test_31_second_segment_emotion_windows():
    spans = window_spans(10.0, 41.0, label_s=2.0, context_s=1.0)
    starts = [s[0] for s in spans]
    ends = [s[1] for s in spans]
    assert starts == [10.0 + 2 * k for k in range(16)]
    assert ends == [12.0 + 2 * k for k in range(15)] + [41.0]  # last: the 1 s remainder (= t/2) is kept
    # context Δt = 1 s each side, clipped to the segment at both edges
    assert spans[0][2:] == (10.0, 13.0)
    assert spans[1][2:] == (11.0, 15.0)
    assert spans[-2][2:] == (37.0, 41.0)
    assert spans[-1][2:] == (39.0, 41.0)


def test_gender_windows_use_half_second_context():
    spans = window_spans(0.0, 31.0, label_s=2.0, context_s=0.5)
    assert [s[2:] for s in spans[:3]] == [(0.0, 2.5), (1.5, 4.5), (3.5, 6.5)]
    assert spans[-1] == (30.0, 31.0, 29.5, 31.0)


@pytest.mark.parametrize(
    "end, expected_count, last",
    [(30.5, 15, (28.0, 30.0)), (30.999, 15, (28.0, 30.0)), (31.0, 16, (30.0, 31.0)), (32.0, 16, (30.0, 32.0))],
)
def test_last_partial_window_rule(end, expected_count, last):
    spans = window_spans(0.0, end, label_s=2.0, context_s=1.0, min_last_fraction=0.5)
    assert len(spans) == expected_count
    assert spans[-1][:2] == last


def test_explode_windows_keeps_ids_and_order():
    batch = {"segment_id": ["r-0000", "r-0001"], "recording_id": ["r", "r"], "audio_path": ["/a.wav", "/a.wav"], "start": [0.0, 40.0], "end": [4.0, 43.0]}
    out = explode_windows(batch, label_s=2.0, context_s=1.0, min_last_fraction=0.5)
    assert out["segment_id"] == ["r-0000", "r-0000", "r-0001", "r-0001"]
    assert out["start"] == [0.0, 2.0, 40.0, 42.0]
    assert out["end"] == [2.0, 4.0, 42.0, 43.0]
    assert out["ctx_start"] == [0.0, 1.0, 40.0, 41.0]
    assert out["ctx_end"] == [3.0, 4.0, 43.0, 43.0]
