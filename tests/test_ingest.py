import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import AMI, APOLLO, ravdess_recording
from datasets import Dataset

from build.sources.audio import decode_span, iter_blocks, probe_duration
from build.sources.ingest import list_recordings, probe_recordings


def _probe(data):
    return data.map(probe_recordings, batched=True)


def test_folder_lists_supported_audio_recursively_with_derived_ids(tmp_path):
    (tmp_path / "sub").mkdir()
    shutil.copy(AMI, tmp_path / "meeting.flac")
    shutil.copy(APOLLO, tmp_path / "sub" / "radio.mp3")
    (tmp_path / "notes.txt").write_text("not audio")
    data = list_recordings(tmp_path)
    assert data["recording_id"] == ["meeting", "sub__radio"]
    assert data["audio_path"] == [str(tmp_path / "meeting.flac"), str(tmp_path / "sub" / "radio.mp3")]


def test_probe_reads_durations_of_flac_and_mp3():
    data = _probe(list_recordings(AMI))
    assert data["duration"][0] == pytest.approx(60.0, abs=0.01)
    assert data["error"] == [None]
    assert _probe(list_recordings(APOLLO))["duration"][0] == pytest.approx(89.2, abs=0.2)
    assert _probe(list_recordings(ravdess_recording(1)))["duration"][0] == pytest.approx(57.157, abs=0.01)


def test_csv_and_jsonl_manifests_resolve_relative_paths(tmp_path):
    shutil.copy(AMI, tmp_path / "m.flac")
    (tmp_path / "list.csv").write_text("recording_id,audio_path\nmeeting1,m.flac\n")
    (tmp_path / "list.jsonl").write_text(json.dumps({"path": "m.flac"}) + "\n")
    assert list_recordings(tmp_path / "list.csv").to_dict() == {"recording_id": ["meeting1"], "audio_path": [str(tmp_path / "m.flac")], "error": [None]}
    assert list_recordings(tmp_path / "list.jsonl")["recording_id"] == ["m"]


def test_manifest_without_a_path_column_names_the_file_and_columns(tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("id,wav\n1,a.wav\n")
    with pytest.raises(ValueError, match=r"bad\.csv: the manifest needs one of the columns audio_path, path, audio, file; it has id, wav"):
        list_recordings(manifest)


def test_duplicate_stems_get_unique_ids(tmp_path):
    shutil.copy(AMI, tmp_path / "a.flac")
    shutil.copy(APOLLO, tmp_path / "a.mp3")
    # the later one: "_" + the first 6 hex digits of the sha1 of its path in the folder (tests/test_ingest_ids.py)
    assert list_recordings(tmp_path)["recording_id"] == ["a", "a_" + hashlib.sha1(b"a.mp3").hexdigest()[:6]]


def test_bad_files_are_recorded_with_their_error_and_the_rest_continue(tmp_path):
    shutil.copy(AMI, tmp_path / "good.flac")
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.mp3").write_text("this is not audio at all " * 20)
    (tmp_path / "truncated.wav").write_bytes(AMI.read_bytes()[:20])
    (tmp_path / "list.csv").write_text("audio_path\ngood.flac\nempty.wav\ntext.mp3\ntruncated.wav\nmissing.wav\n")
    data = _probe(list_recordings(tmp_path / "list.csv"))
    errors = dict(zip(data["recording_id"], data["error"]))
    assert errors["good"] is None
    assert errors["empty"] == f"{tmp_path / 'empty.wav'}: empty file (0 bytes)"
    for rid in ("text", "truncated"):
        assert errors[rid].startswith(str(tmp_path / f"{rid}.")), errors[rid]
        assert "cannot open as audio" in errors[rid] or "holds no audio" in errors[rid]
    assert errors["missing"] == f"{tmp_path / 'missing.wav'}: file not found"
    assert dict(zip(data["recording_id"], data["duration"]))["good"] == pytest.approx(60.0, abs=0.01)


class _CountingFile:
    """A read-only file that counts the bytes read through it."""

    def __init__(self, inner, fs):
        self._inner, self._fs = inner, fs

    def read(self, size=-1):
        data = self._inner.read(size)
        self._fs.bytes_read += len(data)
        return data

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._inner.close()


def _hub(monkeypatch, root):
    """Stand in for the Hub: a local folder seen through fsspec, counting the bytes read."""
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    from build.sources import audio

    class CountingHub(DirFileSystem):
        bytes_read = 0

        def open(self, path, *args, **kwargs):
            return _CountingFile(super().open(path, *args, **kwargs), self)

    fs = CountingHub(path=str(root), fs=LocalFileSystem())
    monkeypatch.setattr(audio, "hub_filesystem", lambda: fs)
    audio.clear_caches()
    return fs


def _audio_table(files, ids=None):
    from datasets import Audio, Dataset

    columns = {"audio": [{"bytes": Path(f).read_bytes(), "path": Path(f).name} for f in files]}
    if ids is not None:
        columns["recording_id"] = ids
    return Dataset.from_dict(columns).cast_column("audio", Audio())


def _assert_decodes_like(ref, original):
    assert np.array_equal(decode_span(ref), decode_span(str(original)))
    assert np.array_equal(decode_span(ref, 12.5, 31.0), decode_span(str(original), 12.5, 31.0))
    assert np.array_equal(np.concatenate([b for _, b in iter_blocks(ref, 7.0)]), decode_span(str(original)))


RECORDINGS = [AMI, ravdess_recording(2), ravdess_recording(3)]


def test_save_to_disk_folder_gives_arrow_references_and_copies_nothing(tmp_path):
    _audio_table(RECORDINGS, ids=["ami", "actor02", "actor03"]).save_to_disk(tmp_path / "hfds", num_shards=2)
    data = _probe(list_recordings(tmp_path / "hfds", cache_dir=tmp_path / "cache"))
    arrow = [str(tmp_path / "hfds" / f"data-0000{i}-of-00002.arrow") for i in (0, 1)]
    assert data["recording_id"] == ["ami", "actor02", "actor03"]
    assert data["audio_path"] == [f"arrow:{arrow[0]}#audio[0]", f"arrow:{arrow[0]}#audio[1]", f"arrow:{arrow[1]}#audio[0]"]
    assert data["error"] == [None, None, None]
    assert data["duration"] == [probe_duration(str(f)) for f in RECORDINGS]
    for ref, original in zip(data["audio_path"], RECORDINGS):
        _assert_decodes_like(ref, original)
    assert not (tmp_path / "cache").exists()


def test_saved_dataset_dict_takes_its_first_split_and_derives_ids(tmp_path):
    from datasets import DatasetDict

    DatasetDict({"train": _audio_table([AMI, APOLLO]), "test": _audio_table([AMI])}).save_to_disk(tmp_path / "dd")
    data = list_recordings(tmp_path / "dd")
    assert data["recording_id"] == ["dd-00000000", "dd-00000001"]
    assert data["audio_path"][1] == f"arrow:{tmp_path / 'dd' / 'train' / 'data-00000-of-00001.arrow'}#audio[1]"
    assert _probe(data)["duration"][1] == probe_duration(str(APOLLO))


def _write_hub_dataset(root, repo="owner/speech"):
    folder = root / "datasets" / repo / "data"
    folder.mkdir(parents=True)
    _audio_table(RECORDINGS[:2], ids=["ami", "actor02"]).to_parquet(folder / "train-00000-of-00002.parquet")
    _audio_table(RECORDINGS[2:], ids=["actor03"]).to_parquet(folder / "train-00001-of-00002.parquet")
    _audio_table([APOLLO], ids=["apollo"]).to_parquet(folder / "test-00000-of-00001.parquet")
    return folder


def test_hub_dataset_gives_parquet_references_reading_only_ids(tmp_path, monkeypatch):
    fs = _hub(monkeypatch, tmp_path / "hub")
    _write_hub_dataset(tmp_path / "hub")
    data = list_recordings("hf://owner/speech", cache_dir=tmp_path / "cache")
    # listing read the footers and the id column, in all fewer bytes than any one audio cell holds
    assert 0 < fs.bytes_read < min(f.stat().st_size for f in RECORDINGS)
    url = "hf://datasets/owner/speech/data/train-0000{}-of-00002.parquet"
    assert data.to_dict() == {
        "recording_id": ["ami", "actor02", "actor03"],
        "audio_path": [f"parquet:{url.format(0)}#audio[0]", f"parquet:{url.format(0)}#audio[1]", f"parquet:{url.format(1)}#audio[0]"],
        "error": [None, None, None],
    }
    probed = _probe(data)
    assert probed["error"] == [None, None, None]
    assert probed["duration"] == [probe_duration(str(f)) for f in RECORDINGS]
    for ref, original in zip(data["audio_path"], RECORDINGS):
        _assert_decodes_like(ref, original)
    # a recording's many segments are read once: the row group stays in the per-process cache
    before = fs.bytes_read
    decode_span(data["audio_path"][0], 40.0, 41.0)
    assert fs.bytes_read == before
    # the pipeline probes from 8 threads: the shared open files and caches must hold
    from concurrent.futures import ThreadPoolExecutor

    from build.sources import audio

    refs = list(data["audio_path"])
    audio.clear_caches()
    with ThreadPoolExecutor(max_workers=8) as pool:
        durations = list(pool.map(lambda p: probe_recordings({"audio_path": [p]})["duration"][0], refs * 8))
        spans = list(pool.map(lambda i: decode_span(refs[i % 3], 10.0 + i, 12.0 + i), range(24)))
    assert durations == list(probed["duration"]) * 8
    assert all(np.array_equal(spans[i], decode_span(str(RECORDINGS[i % 3]), 10.0 + i, 12.0 + i)) for i in range(24))
    assert list_recordings("hf://owner/speech:test")["recording_id"] == ["apollo"]
    assert not (tmp_path / "cache").exists()


def test_hub_dataset_without_parquet_uses_the_converted_branch(tmp_path, monkeypatch):
    _hub(monkeypatch, tmp_path / "hub")
    (tmp_path / "hub" / "datasets" / "owner" / "raw").mkdir(parents=True)
    (tmp_path / "hub" / "datasets" / "owner" / "raw" / "clip.flac").write_bytes(AMI.read_bytes())
    converted = tmp_path / "hub" / "datasets" / "owner" / "raw@refs%2Fconvert%2Fparquet" / "default" / "train"
    converted.mkdir(parents=True)
    _audio_table([AMI]).to_parquet(converted / "0000.parquet")
    data = _probe(list_recordings("hf://owner/raw"))
    assert data["recording_id"] == ["owner__raw-00000000"]
    assert data["audio_path"] == ["parquet:hf://datasets/owner/raw@refs%2Fconvert%2Fparquet/default/train/0000.parquet#audio[0]"]
    assert data["duration"] == [probe_duration(str(AMI))]


def test_reference_and_hub_errors_are_one_line_naming_the_reference(tmp_path, monkeypatch):
    _hub(monkeypatch, tmp_path / "hub")
    _write_hub_dataset(tmp_path / "hub")
    good = "parquet:hf://datasets/owner/speech/data/train-00001-of-00002.parquet#audio[0]"
    refs = [good.replace("[0]", "[5]"), good.replace("#audio", "#speech"), good.replace("00001-of", "00009-of")]
    data = _probe(Dataset.from_dict({"audio_path": refs}))
    assert data["error"][0] == f"{refs[0]}: cannot read the row (IndexError: row 5 is past the end (1 rows))"
    assert data["error"][1] == f"{refs[1]}: cannot read the row (KeyError: \"no column 'speech' (columns: audio, recording_id)\")"
    assert data["error"][2].startswith(f"{refs[2]}: file not found (")
    assert all("\n" not in e for e in data["error"])
    with pytest.raises(ValueError, match=r"^hf://owner/speech:dev: no Parquet data files for split 'dev'"):
        list_recordings("hf://owner/speech:dev")
    (tmp_path / "hub" / "datasets" / "owner" / "bad").mkdir(parents=True)
    (tmp_path / "hub" / "datasets" / "owner" / "bad" / "train.parquet").write_text("not parquet")
    with pytest.raises(ValueError, match=r"^hf://datasets/owner/bad/train\.parquet: cannot read the Parquet file \(ArrowInvalid: .+\)$"):
        list_recordings("hf://owner/bad")
    with pytest.raises(ValueError, match=r"^hf://owner/absent: no such dataset on the Hub, or no access to it$"):
        list_recordings("hf://owner/absent")


def test_missing_source_and_empty_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder"):
        list_recordings(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="the folder is empty"):
        list_recordings(tmp_path)
