import numpy as np
import pytest
from conftest import AMI, APOLLO, ravdess_recording

from build.sources.audio import AudioError, decode_span, iter_blocks, probe_duration


@pytest.mark.parametrize("path", [AMI, ravdess_recording(1)], ids=["ami", "ravdess"])
def test_blocks_put_end_to_end_equal_the_whole_decode(path):
    whole = decode_span(str(path))
    blocks = list(iter_blocks(str(path), block_s=7.0))
    assert [offset for offset, _ in blocks] == [7.0 * k for k in range(len(blocks))]
    assert [len(b) for _, b in blocks[:-1]] == [112_000] * (len(blocks) - 1)
    assert 0 < len(blocks[-1][1]) <= 112_000
    assert all(b.dtype == np.float32 for _, b in blocks)
    assert np.array_equal(np.concatenate([b for _, b in blocks]), whole)


def test_a_recording_that_ends_on_a_block_edge_has_no_empty_block():
    blocks = list(iter_blocks(str(AMI), block_s=20.0))  # the excerpt lasts exactly 60 s
    assert [(offset, len(b)) for offset, b in blocks] == [(0.0, 320_000), (20.0, 320_000), (40.0, 320_000)]


def test_resampled_source_keeps_its_length_in_blocks():
    # apollo11.mp3 is 8 kHz: FFmpeg resamples, and torchcodec 0.7 shifts each later block by its
    # resampler delay (see build.sources.audio); the total length and the first block still match.
    whole = decode_span(str(APOLLO))
    blocks = [b for _, b in iter_blocks(str(APOLLO), block_s=7.0)]
    assert sum(len(b) for b in blocks) == len(whole)
    assert np.array_equal(blocks[0], whole[:112_000])


def test_block_errors_name_the_file(tmp_path):
    bad = tmp_path / "noise.flac"
    bad.write_text("not audio " * 50)
    with pytest.raises(AudioError, match=rf"^{bad}: cannot open as audio \(.+\)$"):
        list(iter_blocks(str(bad), block_s=7.0))
    with pytest.raises(ValueError, match="block_s must be positive"):
        list(iter_blocks(str(AMI), block_s=0))
    assert probe_duration(str(AMI)) == pytest.approx(60.0, abs=0.01)


def _torchcodec_span(path, start, end):
    """The reference: a fresh torchcodec decoder, silence before the stream's first sample, exact length."""
    from torchcodec.decoders import AudioDecoder

    got = AudioDecoder(str(path), sample_rate=16_000, num_channels=1).get_samples_played_in_range(start, end)
    lead = int(round((got.pts_seconds - start) * 16_000))
    samples = np.concatenate([np.zeros(max(lead, 0), np.float32), got.data[0].numpy()])
    n = int(round((end - start) * 16_000))
    return samples[:n] if len(samples) >= n else np.pad(samples, (0, n - len(samples)))


@pytest.fixture(scope="module")
def late_mp3(tmp_path_factory):
    """A 16 kHz MP3 whose stream starts at 0.069 s (the encoder's delay), as FFmpeg writes them."""
    import soundfile as sf
    import torch
    from torchcodec.encoders import AudioEncoder

    path = tmp_path_factory.mktemp("mp3") / "late.mp3"
    samples, _ = sf.read(AMI, dtype="float32", frames=16_000 * 20)
    AudioEncoder(torch.from_numpy(samples[None]), sample_rate=16_000).to_file(str(path))
    return path


@pytest.mark.parametrize("name", ["ami", "apollo_8khz", "late_mp3"])
def test_spans_in_any_order_equal_a_fresh_decode(name, late_mp3):
    # In order, a span starting where the last ended, overlapping, backwards, past the end: decode_span
    # carries on with one reader where it can (sources not resampled), and the samples never differ.
    path = {"ami": AMI, "apollo_8khz": APOLLO, "late_mp3": late_mp3}[name]
    spans = [(0.0, 2.5), (2.5, 7.0), (7.0313, 9.9), (9.0, 12.0), (3.0, 4.25), (12.0, 19.0), (19.5, 20.5)]
    for start, end in spans:
        assert np.array_equal(decode_span(str(path), start, end), _torchcodec_span(path, start, end)), (start, end)


def test_time_before_the_first_sample_is_silence_in_spans_and_blocks(late_mp3):
    lead = decode_span(str(late_mp3), 0.0, 0.1)
    assert np.all(lead[:1105] == 0) and np.any(lead[1105:] != 0)  # 0.0690625 s = 1105 samples
    blocks = [b for _, b in iter_blocks(str(late_mp3), block_s=3.3)]
    assert [len(b) for b in blocks[:-1]] == [52_800] * (len(blocks) - 1)
    assert np.array_equal(np.concatenate(blocks), decode_span(str(late_mp3)))
