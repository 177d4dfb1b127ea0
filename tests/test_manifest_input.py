"""Manifests as spreadsheets and editors write them: a byte-order mark, empty rows, blank lines, other encodings."""

import itertools
import json
import re

import pytest

from build.publishing import licences
from build.sources.ingest import list_recordings, read_records

COLUMNS = ("license", "audio_path", "recording_id")
ROWS = [{"license": "cc-by-nc-4.0", "audio_path": "one.wav", "recording_id": "first"},
        {"license": "cc0-1.0", "audio_path": "two.wav", "recording_id": "second"}]


def _exact(message: str) -> str:
    return f"^{re.escape(message)}$"


@pytest.mark.parametrize("order", list(itertools.permutations(COLUMNS)), ids="-".join)
def test_a_csv_with_a_byte_order_mark_keeps_its_first_column(tmp_path, order):
    # Before: the first column was named "\ufefflicense" (or "\ufeffaudio_path", "\ufeffrecording_id") and lost.
    manifest = tmp_path / "list.csv"
    lines = [",".join(order)] + [",".join(row[c] for c in order) for row in ROWS]
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
    assert manifest.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_records(manifest) == [{c: row[c] for c in order} for row in ROWS]
    data = list_recordings(manifest)
    assert data["recording_id"] == ["first", "second"]
    assert data["audio_path"] == [str(tmp_path / "one.wav"), str(tmp_path / "two.wav")]
    assert licences.row_licences(manifest, list(data["audio_path"]), "cc-by-4.0") == ["cc-by-nc-4.0", "cc0-1.0"]


def test_a_jsonl_with_a_byte_order_mark_keeps_its_first_line(tmp_path):
    manifest = tmp_path / "list.jsonl"
    manifest.write_text("".join(json.dumps(row) + "\n" for row in ROWS), encoding="utf-8-sig")
    assert list_recordings(manifest)["recording_id"] == ["first", "second"]
    assert licences.row_licences(manifest, [str(tmp_path / "one.wav")], "cc-by-4.0") == ["cc-by-nc-4.0"]


def test_a_jsonl_line_without_the_path_names_the_file_and_line(tmp_path):
    # Before: "KeyError: 'audio_path'", no file, no line.
    manifest = tmp_path / "list.jsonl"
    manifest.write_text('{"audio_path": "one.wav"}\n\n   \n{"recording_id": "b"}\n')
    with pytest.raises(ValueError, match=_exact(f"{manifest}: line 4: no audio path ('audio_path' is missing or empty)")):
        list_recordings(manifest)
    manifest.write_text('{"audio_path": "one.wav"}\n{"audio_path": null}\n')
    with pytest.raises(ValueError, match=_exact(f"{manifest}: line 2: no audio path ('audio_path' is missing or empty)")):
        list_recordings(manifest)


def test_blank_lines_of_a_jsonl_are_skipped_and_counted_in_line_numbers(tmp_path):
    manifest = tmp_path / "list.jsonl"
    manifest.write_text('\n{"audio_path": "one.wav"}\r\n\n\n{"audio_path": "two.wav"}\n\n')
    assert list_recordings(manifest)["recording_id"] == ["one", "two"]
    manifest.write_text('{"audio_path": "one.wav"}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=_exact(f"{manifest}:3: not a JSON object (a JSON list)")):
        list_recordings(manifest)
    manifest.write_text("\n\n")
    with pytest.raises(ValueError, match=_exact(f"{manifest}: lists no recordings")):
        list_recordings(manifest)


@pytest.mark.parametrize("row", [",,", ",,cc0-1.0", "  ,x,"])
def test_an_empty_csv_row_names_the_file_and_row(tmp_path, row):
    # Before: the empty path resolved to the manifest's folder, listed as a recording named after it.
    manifest = tmp_path / "list.csv"
    manifest.write_text(f"audio_path,recording_id,license\none.wav,,\n{row}\ntwo.wav,,\n")
    with pytest.raises(ValueError, match=_exact(f"{manifest}: row 2: no audio path ('audio_path' is missing or empty)")):
        list_recordings(manifest)


def test_a_manifest_that_is_not_utf8_names_the_file_and_line(tmp_path):
    # Before: UnicodeDecodeError (or mojibake ids under another locale), without the file's name.
    manifest = tmp_path / "list.csv"
    manifest.write_bytes("audio_path\none.wav\ncafé.wav\n".encode("latin-1"))
    with pytest.raises(ValueError, match=_exact(f"{manifest}: line 3: not UTF-8 text (byte 0xe9); save it as UTF-8")):
        list_recordings(manifest)
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_bytes('{"audio_path": "one.wav"}\n'.encode("utf-16"))
    with pytest.raises(ValueError, match=_exact(f"{jsonl}: line 1: not UTF-8 text (byte 0xff); save it as UTF-8")):
        list_recordings(jsonl)


def test_a_csv_the_csv_module_refuses_names_the_file_and_line(tmp_path):
    manifest = tmp_path / "list.csv"
    manifest.write_text("audio_path\none.wav\n\"" + "x" * 200_000 + "\"\n")
    with pytest.raises(ValueError, match=_exact(f"{manifest}: line 3: not CSV (field larger than field limit (131072))")):
        list_recordings(manifest)
