import json
import shutil

import pytest

from build.ingest import list_recordings, probe_recordings
from conftest import AMI, APOLLO, ravdess_recording


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
    assert list_recordings(tmp_path / "list.csv").to_dict() == {"recording_id": ["meeting1"], "audio_path": [str(tmp_path / "m.flac")]}
    assert list_recordings(tmp_path / "list.jsonl")["recording_id"] == ["m"]


def test_manifest_without_a_path_column_names_the_file_and_columns(tmp_path):
    manifest = tmp_path / "bad.csv"
    manifest.write_text("id,wav\n1,a.wav\n")
    with pytest.raises(ValueError, match=r"bad\.csv: the manifest needs one of the columns audio_path, path, audio, file; it has id, wav"):
        list_recordings(manifest)


def test_duplicate_stems_get_unique_ids(tmp_path):
    shutil.copy(AMI, tmp_path / "a.flac")
    shutil.copy(APOLLO, tmp_path / "a.mp3")
    assert list_recordings(tmp_path)["recording_id"] == ["a", "a_2"]


def test_bad_files_are_recorded_with_their_error_and_the_rest_continue(tmp_path):
    shutil.copy(AMI, tmp_path / "good.flac")
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "text.mp3").write_text("this is not audio at all " * 20)
    (tmp_path / "truncated.wav").write_bytes(AMI.read_bytes()[:20])
    (tmp_path / "list.csv").write_text("audio_path\ngood.flac\nempty.wav\ntext.mp3\ntruncated.wav\nmissing.wav\n")
    data = _probe(list_recordings(tmp_path / "list.csv"))
    errors = dict(zip(data["recording_id"], data["error"]))
    assert errors["good"] is None
    for rid in ("empty", "text", "truncated"):
        assert errors[rid].startswith(str(tmp_path / f"{rid}.")), errors[rid]
        assert "cannot open as audio" in errors[rid] or "holds no audio" in errors[rid]
    assert errors["missing"] == f"{tmp_path / 'missing.wav'}: file not found"
    assert dict(zip(data["recording_id"], data["duration"]))["good"] == pytest.approx(60.0, abs=0.01)


def test_datasets_folder_with_embedded_audio(tmp_path):
    from datasets import Audio, Dataset

    ds = Dataset.from_dict({"audio": [{"bytes": AMI.read_bytes(), "path": "x.flac"}], "recording_id": ["ami"]}).cast_column("audio", Audio(decode=False))
    ds.save_to_disk(tmp_path / "hfds")
    data = _probe(list_recordings(tmp_path / "hfds", cache_dir=tmp_path / "cache"))
    assert data["recording_id"] == ["ami"]
    assert data["audio_path"][0].startswith(str(tmp_path / "cache" / "ingest"))
    assert data["duration"][0] == pytest.approx(60.0, abs=0.01)


def test_missing_source_and_empty_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such file or folder"):
        list_recordings(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="no audio files"):
        list_recordings(tmp_path)
