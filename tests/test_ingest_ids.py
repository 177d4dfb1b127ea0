"""Recording ids: a slug of the file name in any script, unique in every case (``build.sources.ingest.slug``, ``unique_ids``)."""

import hashlib
import re
import string
import unicodedata

import pytest
from conftest import AMI, APOLLO
from test_ingest import _audio_table, _hub

from build.sources import ingest
from build.sources.ingest import list_recordings


def _h(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:6]


def _files(folder, names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"listing opens no file")
    return folder


def _old_rule(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.replace("/", "__"))


def test_an_ascii_name_keeps_the_id_it_had():
    names = [f"x{c}y" for c in string.printable if c not in "/\x0b\x0c\r\n"] + ["meeting 1 (final)", "sub/take-2.v3", "a  b", "~x~"]
    for name in names:
        assert ingest.slug(name) == _old_rule(name), repr(name)


def test_a_folder_with_a_stem_taken_by_a_derived_suffix_gives_distinct_ids(tmp_path):
    # Before: a.flac -> a, a.wav -> a_2, a_2.wav -> a_2 (two clips with segment id a_2-0000).
    data = list_recordings(_files(tmp_path, ["a.flac", "a.wav", "a_2.wav"]))
    assert data["recording_id"] == ["a", f"a_{_h('a.wav')}", "a_2"]
    assert data["audio_path"] == [str(tmp_path / n) for n in ("a.flac", "a.wav", "a_2.wav")]


def test_two_files_with_one_stem_keep_the_first_plain_and_hash_the_later(tmp_path):
    data = list_recordings(_files(tmp_path, ["a.flac", "a.mp3", "a.wav"]))
    assert data["recording_id"] == ["a", f"a_{_h('a.mp3')}", f"a_{_h('a.wav')}"]


def test_a_suffixed_id_never_takes_an_id_a_file_has(tmp_path):
    taken = f"a_{_h('a.wav')}"  # a file named like the suffix the second a would get
    data = list_recordings(_files(tmp_path, ["a.flac", "a.wav", f"{taken}.wav"]))
    assert data["recording_id"] == ["a", f"{taken}_2", taken]
    assert len(set(data["recording_id"])) == 3


def test_names_in_other_scripts_keep_their_letters(tmp_path):
    names = ["名前.wav", "名字.wav", "こんにちは 世界.flac", "مرحبا بكم.wav", "café à Zürich.wav", "नमस्ते.wav", "Ελλάδα-01.mp3", "x/Москва.ogg"]
    data = list_recordings(_files(tmp_path, names))
    ids = dict(zip(data["audio_path"], data["recording_id"]))
    assert {name: ids[str(tmp_path / name)] for name in names} == {
        "名前.wav": "名前",
        "名字.wav": "名字",
        "こんにちは 世界.flac": "こんにちは_世界",
        "مرحبا بكم.wav": "مرحبا_بكم",
        "café à Zürich.wav": "café_à_Zürich",
        "नमस्ते.wav": "नमस्ते",  # the vowel signs and the virama (combining marks) are kept
        "Ελλάδα-01.mp3": "Ελλάδα-01",
        "x/Москва.ogg": "x__Москва",
    }


def test_a_decomposed_name_gives_the_composed_id(tmp_path):
    decomposed = unicodedata.normalize("NFD", "Ñandú.wav")
    assert decomposed != "Ñandú.wav"
    assert list_recordings(_files(tmp_path, [decomposed]))["recording_id"] == [unicodedata.normalize("NFC", "Ñandú")]


def test_two_names_that_slug_the_same_are_told_apart_by_a_hash(tmp_path):
    data = list_recordings(_files(tmp_path, ["a b.wav", "a,b.wav", "a?b.wav"]))
    assert data["recording_id"] == ["a_b", f"a_b_{_h('a,b.wav')}", f"a_b_{_h('a?b.wav')}"]
    data = list_recordings(_files(tmp_path / "cjk", ["名前 1.wav", "名前・1.wav"]))
    assert data["recording_id"] == ["名前_1", f"名前_1_{_h('名前・1.wav')}"]


def test_every_id_is_a_file_name(tmp_path):
    names = ["...wav", "!!.wav", "名前.wav", "a b/c d.wav", "-x.wav", "\u200fمرحبا\u200f.wav"]
    data = list_recordings(_files(tmp_path / "in", names))
    # listing order: "!!", "-x", "..", "a b/c d", RLM+Arabic+RLM, 名前; ".." is not a file name, "!!" takes "_" first
    assert data["recording_id"] == ["_", "-x", f"__{_h('...wav')}", "a_b__c_d", "_مرحبا_", "名前"]
    out = tmp_path / "ids"
    out.mkdir()
    for rid in data["recording_id"]:
        assert "/" not in rid and rid not in (".", "..")
        (out / f"{rid}-0000").write_text(rid)
    assert sorted(p.read_text() for p in out.iterdir()) == sorted(data["recording_id"])


def _manifest(tmp_path, text, name="list.csv"):
    (tmp_path / name).write_text(text)
    return tmp_path / name


def test_a_repeated_given_id_in_a_manifest_is_an_error_naming_its_rows(tmp_path):
    # Before: a, a_2, a_2 (the third row's own id taken by the second's suffix).
    manifest = _manifest(tmp_path, "recording_id,audio_path\na,r1.flac\na,r2.flac\na_2,r3.flac\nb,r4.flac\nb,r5.flac\n")
    message = f"{manifest}: a recording_id is given to more than one row: 'a' (row 1, row 2); 'b' (row 4, row 5); give each its own id, or none"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        list_recordings(manifest)
    jsonl = _manifest(tmp_path, '{"recording_id": "a", "path": "r1.flac"}\n\n{"recording_id": "a", "path": "r2.flac"}\n', "list.jsonl")
    with pytest.raises(ValueError, match=re.escape(f"{jsonl}: a recording_id is given to more than one row: 'a' (line 1, line 3);")):
        list_recordings(jsonl)


def test_a_given_id_wins_over_a_derived_one_and_derived_ones_are_suffixed(tmp_path):
    taken = f"a_{_h('y/a.wav')}"
    rows = [",a.flac", ",y/a.wav", "a,r1.flac", f"{taken},r2.flac", ",x/a.flac"]
    data = list_recordings(_manifest(tmp_path, "recording_id,audio_path\n" + "\n".join(rows) + "\n"))
    # a.flac's derived "a" is given to r1.flac; y/a.wav's suffix is given to r2.flac: both take the next free id
    assert data["recording_id"] == [f"a_{_h('a.flac')}", f"{taken}_2", "a", taken, f"a_{_h('x/a.flac')}"]
    jsonl = _manifest(tmp_path, '{"recording_id": null, "path": "a.flac"}\n{"recording_id": "", "path": "b/a.flac"}\n', "list.jsonl")
    assert list_recordings(jsonl)["recording_id"] == ["a", f"a_{_h('b/a.flac')}"]


def test_repeated_ids_of_a_saved_dataset_are_suffixed_by_their_reference(tmp_path):
    _audio_table([AMI, APOLLO, AMI], ids=["x", "x", "x_2"]).save_to_disk(tmp_path / "hfds")
    data = list_recordings(tmp_path / "hfds")
    refs = data["audio_path"]
    assert data["recording_id"] == ["x", f"x_{_h(refs[1])}", "x_2"]


@pytest.mark.parametrize(("bad", "word"), [(None, "null"), ("", "empty"), ("  ", "empty")])
def test_a_null_or_empty_id_of_a_saved_dataset_names_the_row(tmp_path, bad, word):
    # Before: a null id became the recording "None", an empty one the recording "".
    _audio_table([AMI, APOLLO], ids=["ami", bad]).save_to_disk(tmp_path / "hfds")
    ref = f"arrow:{tmp_path / 'hfds' / 'data-00000-of-00001.arrow'}#audio[1]"
    with pytest.raises(ValueError, match=f"^{re.escape(ref)}: recording_id is {word}; every row of the column needs an id$"):
        list_recordings(tmp_path / "hfds")


def test_a_null_id_of_a_hub_dataset_names_the_row(tmp_path, monkeypatch):
    _hub(monkeypatch, tmp_path / "hub")
    folder = tmp_path / "hub" / "datasets" / "owner" / "ids" / "data"
    folder.mkdir(parents=True)
    _audio_table([AMI, APOLLO], ids=["ami", None]).to_parquet(folder / "train-00000-of-00001.parquet")
    ref = "parquet:hf://datasets/owner/ids/data/train-00000-of-00001.parquet#audio[1]"
    with pytest.raises(ValueError, match=f"^{re.escape(ref)}: recording_id is null; every row of the column needs an id$"):
        list_recordings("hf://owner/ids")
