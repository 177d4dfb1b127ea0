"""Splits for training use: group-disjoint (recording, or speaker through shared keys), deterministic by
seed, near the asked fractions; written as Hub splits that load_dataset reads; sizes in the card."""

import pyarrow.parquet as pq
import pytest
from test_export import _segments, write

from build.core.config import paper_config
from build.publishing import splits


def _recordings(n_recordings: int, clips_each: int) -> list[list[str]]:
    return [[f"rec{r:02d}"] for r in range(n_recordings) for _ in range(clips_each)]


def test_no_recording_in_two_splits_and_the_sizes_follow_the_fractions():
    keys = _recordings(20, 3)
    out = splits.assign_splits(keys, {"train": 0.8, "test": 0.2}, seed=0)
    by_recording = {}
    for (rid,), split in zip(keys, out):
        by_recording.setdefault(rid, set()).add(split)
    assert all(len(s) == 1 for s in by_recording.values())
    assert (out.count("train"), out.count("test")) == (48, 12)  # 16 and 4 recordings of 3 clips


def test_the_assignment_is_deterministic_by_seed():
    keys = _recordings(30, 2)
    fractions = {"train": 0.7, "validation": 0.1, "test": 0.2}
    first = splits.assign_splits(keys, fractions, seed=1)
    assert splits.assign_splits(keys, fractions, seed=1) == first
    assert splits.assign_splits(list(reversed(keys)), fractions, seed=1) == list(reversed(first))  # order of the clips does not matter
    assert splits.assign_splits(keys, fractions, seed=2) != first
    assert (first.count("train"), first.count("validation"), first.count("test")) == (42, 6, 12)


def test_the_order_the_splits_are_written_in_does_not_matter():
    keys = _recordings(12, 1)
    for fractions in ({"train": 0.5, "test": 0.5}, {"train": 0.4, "validation": 0.2, "test": 0.4}):
        reordered = dict(reversed(fractions.items()))
        for seed in range(5):
            out = splits.assign_splits(keys, fractions, seed=seed)
            assert splits.assign_splits(keys, reordered, seed=seed) == out
    # the first group meets a full tie (every split empty, equal fractions): alphabetical, test before train
    assert splits.assign_splits([["r1"]], {"train": 0.5, "test": 0.5}, seed=0) == ["test"]
    assert splits.assign_splits([["r1"]], {"train": 0.8, "test": 0.2}, seed=0) == ["train"]  # larger share


def test_clips_that_share_a_key_stay_together():
    keys = [["r1", "r2"], ["r2"], ["r2", "r3"], ["r4"], ["r5"], ["r6"], ["r7"]]
    for seed in range(10):
        out = splits.assign_splits(keys, {"train": 0.5, "test": 0.5}, seed=seed)
        assert out[0] == out[1] == out[2]


def test_split_keys_are_recordings_and_speaker_splits_are_refused_with_the_reason():
    assert splits.split_keys(["a", "a", "b"]) == [["a"], ["a"], ["b"]]
    with pytest.raises(ValueError, match=r"export.split_by=speaker: diarization labels speakers per clip .* use split_by=recording"):
        splits.check_split_by("speaker")
    with pytest.raises(ValueError, match=r"export.split_by 'clip': expected one of recording"):
        splits.check_split_by("clip")


@pytest.mark.parametrize(
    "text, message",
    [
        ("train=0.8,test=0.3", "fractions must be above 0 and sum to 1"),
        ("train=0.8,test", "expected name=fraction pairs"),
        ("train=abc", "expected name=fraction pairs"),
        ("tr-ain=1.0", "split names are letters, digits and underscores"),
    ],
)
def test_bad_splits_are_refused_with_the_reason(text, message):
    with pytest.raises(ValueError, match=message):
        splits.parse_splits(text)


def test_written_splits_load_by_name_and_the_card_lists_their_sizes(tmp_path):
    from datasets import load_dataset

    # 2 recordings (rec0, rec1), each holding test_export's two AMI clips
    base = _segments()
    rows = [{**row, "recording_id": f"rec{r}", "segment_id": f"rec{r}-{i:04d}"} for r in range(2) for i, row in enumerate(base.to_list())]
    from datasets import Dataset

    segments = Dataset.from_list(rows)
    config = paper_config().with_overrides(['export.splits={"train": 0.5, "test": 0.5}', "export.seed=0"])
    out = tmp_path / "split"
    write(out, config, segments=segments)
    expected = splits.assign_splits([[r] for r in segments["recording_id"]], {"train": 0.5, "test": 0.5}, seed=0)
    train = load_dataset(str(out), "segments", split="train")
    test = load_dataset(str(out), "segments", split="test")
    assert sorted(train["segment_id"]) == sorted(s for s, x in zip(segments["segment_id"], expected) if x == "train")
    assert set(train["recording_id"]).isdisjoint(test["recording_id"])
    assert len(train) == len(test) == 2
    qa_train = load_dataset(str(out), split="train")
    assert set(qa_train["segment_id"]) == set(train["segment_id"])  # a clip's pairs follow it
    card = (out / "README.md").read_text()
    assert f"| train | 2 | {len(qa_train)} |" in card and f"| test | 2 | {3 * 2 - len(qa_train)} |" in card
    assert "recording-disjoint: no recording has clips in two splits" in card
    assert sorted(p.name for p in (out / "data" / "qa").glob("*.parquet")) == ["test-00000-of-00001.parquet", "train-00000-of-00001.parquet"]
    assert pq.read_metadata(out / "data" / "qa" / "train-00000-of-00001.parquet").num_rows == len(qa_train)
