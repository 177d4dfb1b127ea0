import numpy as np
import pytest

from build.audio import AudioError, decode_span, iter_blocks, probe_duration
from conftest import AMI, APOLLO, ravdess_recording


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
    # resampler delay (see build.audio); the total length and the first block still match.
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
