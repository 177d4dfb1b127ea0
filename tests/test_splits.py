"""Splits for training use: group-disjoint (recording, or speaker through shared keys), deterministic by
seed, near the asked fractions; written as Hub splits that load_dataset reads; sizes in the card."""

import pyarrow.parquet as pq
import pytest

from build import splits
from build.config import paper_config
from test_export import _segments, write


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


def test_clips_that_share_a_speaker_stay_together_across_recordings():
    # clip 0 has speakers A and B, clip 1 only B, clip 2 B and C: A, B and C form one group
    keys = [["r1:A", "r1:B"], ["r1:B"], ["r1:B", "r1:C"], ["r2:D"], ["r3:E"], ["r4:F"], ["r5:G"]]
    for seed in range(10):
        out = splits.assign_splits(keys, {"train": 0.5, "test": 0.5}, seed=seed)
        assert out[0] == out[1] == out[2]


def test_split_keys_by_recording_and_by_speaker():
    assert splits.split_keys(["a", "a", "b"], None, "recording") == [["a"], ["a"], ["b"]]
    assert splits.split_keys(["a", "b"], [["SPEAKER_00", "SPEAKER_01"], []], "speaker") == [["a:SPEAKER_00", "a:SPEAKER_01"], ["b"]]
    with pytest.raises(ValueError, match=r"--split-by speaker needs speaker labels: turn diarization on \(asr.diarize=true\)"):
        splits.split_keys(["a"], None, "speaker")


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


def test_split_by_speaker_keeps_each_speaker_in_one_split(tmp_path):
    from datasets import Dataset, load_dataset

    speakers = {("rec0", 0): ["SPEAKER_00"], ("rec0", 1): ["SPEAKER_01"], ("rec1", 0): ["SPEAKER_00", "SPEAKER_01"], ("rec1", 1): ["SPEAKER_01"]}
    rows = []
    for (rid, i), names in speakers.items():
        row = _segments().to_list()[i]
        words = [{**w, "speaker": names[k % len(names)]} for k, w in enumerate(row["tagged_words"])]
        rows.append({**row, "recording_id": rid, "segment_id": f"{rid}-{i:04d}", "tagged_words": words})
    config = paper_config().with_overrides(['export.splits={"train": 0.5, "test": 0.5}', "export.split_by=speaker"])
    apart = []
    for seed in range(8):
        out = tmp_path / f"seed{seed}"
        config.export.seed = seed
        write(out, config, segments=Dataset.from_list(rows))
        parts = {split: load_dataset(str(out), "segments", split=split) for split in ("train", "test") if (out / "data" / "segments" / f"{split}-00000-of-00001.parquet").exists()}
        keys = {split: {f"{r['recording_id']}:{w['speaker']}" for r in data for w in r["words"] if w["speaker"]} for split, data in parts.items()}
        assert sum(len(d) for d in parts.values()) == 4
        if len(keys) == 2:
            assert keys["train"].isdisjoint(keys["test"])
        in_split = {r["segment_id"]: s for s, d in parts.items() for r in d}
        assert in_split["rec1-0000"] == in_split["rec1-0001"]  # they share rec1's SPEAKER_01
        apart.append(in_split["rec0-0000"] != in_split["rec0-0001"])
    assert any(apart)  # rec0's two speakers may go to different splits: speaker-, not recording-disjoint
