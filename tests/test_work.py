"""Work units on disk: shard plans, fingerprints, completion markers, atomic writes, rank shares."""

import json

import pyarrow.parquet as pq
import pytest
from datasets import Dataset, Features, Value, load_dataset

from build.core.ranks import Ranks
from build.core.schema import DROPPED
from build.core.work import WorkDir, fingerprint, plan_shards, shard_name

ROWS = Features({"segment_id": Value("string"), "valence": Value("float32")})


def test_shards_by_count_are_consecutive_and_cover_everything():
    assert plan_shards([10.0] * 7, per_shard=3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert plan_shards([], per_shard=3) == []


def test_shards_by_audio_hours_close_once_the_hours_are_reached():
    hours = [0.5 * 3600, 0.7 * 3600, None, 2.5 * 3600, 0.1 * 3600]
    # 0.5 + 0.7 >= 1 h closes the first shard; the unknown duration counts 0; 2.5 h alone is a shard.
    assert plan_shards(hours, per_shard=100, hours_per_shard=1.0) == [[0, 1], [2, 3], [4]]


def test_a_shard_holds_at_least_one_item():
    with pytest.raises(ValueError, match="at least one item"):
        plan_shards([1.0], per_shard=0)


def test_fingerprints_change_with_params_and_upstream_only():
    base = fingerprint("condense", {"x": 0.5, "y": 0.4}, "abc")
    assert base == fingerprint("condense", {"y": 0.4, "x": 0.5}, "abc")  # key order does not matter
    assert base != fingerprint("condense", {"x": 0.6, "y": 0.4}, "abc")
    assert base != fingerprint("condense", {"x": 0.5, "y": 0.4}, "abd")
    assert base != fingerprint("label", {"x": 0.5, "y": 0.4}, "abc")


def test_rank_shares_are_disjoint_and_cover_every_task():
    tasks = [shard_name("r", i) for i in range(7)]
    shares = [Ranks(index=r, world=3).mine(tasks) for r in range(3)]
    assert shares == [["r00000", "r00003", "r00006"], ["r00001", "r00004"], ["r00002", "r00005"]]
    assert Ranks().mine(tasks) == tasks and Ranks().is_main


def test_a_written_task_is_done_only_under_its_fingerprint(tmp_path):
    work = WorkDir(tmp_path / "work")
    assert not work.is_done("condense", "r00000", "fp1")
    dropped = [{"stage": "occurrence", "recording_id": "a", "segment_id": "a-0001", "reason": "no emotion reached its occurrence threshold"}]
    work.write("condense", "r00000", "fp1", {"segment_id": ["a-0000"], "valence": [0.25]}, ROWS, stats={"counts": {"occurrence": 1}}, dropped=dropped)
    assert work.is_done("condense", "r00000", "fp1")
    assert not work.is_done("condense", "r00000", "fp2")
    assert work.read("condense", "r00000") == {"segment_id": ["a-0000"], "valence": [0.25]}
    assert work.read_stats("condense", "r00000") == {"stage": "condense", "shard": "r00000", "fingerprint": "fp1", "counts": {"occurrence": 1}}
    assert work.read_dropped("condense", "r00000").to_pylist() == [{**{name: None for name in DROPPED}, **dropped[0]}]
    assert sorted(p.name for p in (tmp_path / "work" / "condense").iterdir()) == ["r00000.dropped.parquet", "r00000.parquet", "r00000.stats.json"]


def test_outputs_keep_their_features_for_datasets(tmp_path):
    work = WorkDir(tmp_path)
    work.write("label", "r00000", "fp", {"segment_id": ["a", "b"], "valence": [0.5, None]}, ROWS, stats={})
    loaded = load_dataset("parquet", data_files=str(work.output("label", "r00000")), split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.features == ROWS and loaded["valence"] == [0.5, None]


def test_a_torn_or_foreign_file_is_not_a_finished_task(tmp_path):
    work = WorkDir(tmp_path)
    path = work.output("vad", "r00001")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PAR1 half a file")  # a crash cannot leave this (writes are renamed), but a user can
    assert work.fingerprint_of("vad", "r00001") is None
    Dataset.from_dict({"segment_id": ["x"]}).to_parquet(str(path))  # a Parquet file without our metadata
    assert work.fingerprint_of("vad", "r00001") is None


def test_a_failed_write_leaves_no_output_and_no_temporary_file(tmp_path):
    work = WorkDir(tmp_path)
    with pytest.raises(KeyError):
        work.write("vad", "r00000", "fp", {"segment_id": ["a"]}, ROWS, stats={})  # no valence column
    assert not work.output("vad", "r00000").exists()
    assert [p.name for p in (tmp_path / "vad").iterdir() if p.name.startswith(".")] == []
    # what was written before the failure is not a completion marker
    assert not work.is_done("vad", "r00000", "fp")


def test_the_output_is_the_last_file_written(tmp_path, monkeypatch):
    order = []
    real = pq.write_table
    monkeypatch.setattr(pq, "write_table", lambda table, path, **kw: (order.append(json.loads(table.schema.metadata.get(b"cpqa", b"null"))), real(table, path, **kw))[1])
    WorkDir(tmp_path).write("vad", "r00000", "fp", {"segment_id": ["a"], "valence": [0.1]}, ROWS, stats={})
    assert order == [None, {"stage": "vad", "shard": "r00000", "fingerprint": "fp"}]
