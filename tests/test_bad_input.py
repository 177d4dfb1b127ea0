"""Awkward inputs: every file ends in the ledger with an exact status and a message naming it and the problem.

The files are written here from 8 s of the bundled AMI speech (soundfile; m4a through torchcodec's
encoder). With the paper's τ = 30 s, a file whose speech is found ends "dropped at length" and never
reaches the labelling models, so the whole matrix runs VAD only.
"""

import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import AMI

from build import pipeline
from build.sources import ingest
from build.sources.audio import decode_span
from build.stages import segment

SPEECH_S = 8.0
SHORT = {"status": "dropped", "stage": "length", "reason": "shorter than 30 s"}
NO_SPEECH = {"status": "dropped", "stage": "vad", "reason": "no speech detected"}


def _speech() -> np.ndarray:
    return decode_span(str(AMI), 0.0, SPEECH_S)


def _write_m4a(path, samples: np.ndarray, rate: int) -> None:
    import torch
    from torchcodec.encoders import AudioEncoder

    AudioEncoder(torch.from_numpy(samples[None, :]), sample_rate=rate).to_file(str(path))


@pytest.fixture(scope="module")
def matrix(tmp_path_factory):
    folder = tmp_path_factory.mktemp("awkward")
    x = _speech()
    sf.write(folder / "ok.wav", x, 16_000)
    shutil.copy(folder / "ok.wav", folder / "ok_again.wav")  # the same bytes under another name
    sf.write(folder / "narrow 8k.wav", x[::2], 8_000)
    stereo48 = np.repeat(x, 3)
    sf.write(folder / "stereo48k.wav", np.stack([stereo48, stereo48 * 0.5], axis=1), 48_000)
    sf.write(folder / "f.flac", x, 16_000)
    sf.write(folder / "v.ogg", x, 16_000, format="OGG", subtype="VORBIS")
    sf.write(folder / "o.opus", np.repeat(x, 3), 48_000, format="OGG", subtype="OPUS")
    sf.write(folder / "m.mp3", x, 16_000, format="MP3", subtype="MPEG_LAYER_III")
    _write_m4a(folder / "a.m4a", x, 16_000)
    sf.write(folder / "café à Zürich.wav", x * 0.9, 16_000)  # spaces and non-ASCII characters
    sf.write(folder / "clipped.wav", np.clip(x * 30, -1, 1), 16_000)
    sf.write(folder / "silence.wav", np.zeros(16_000 * 10, dtype=np.float32), 16_000)
    sf.write(folder / "noise.wav", np.random.default_rng(0).uniform(-0.5, 0.5, 16_000 * 10).astype(np.float32), 16_000)
    nan = x.copy()
    nan[51_200:51_300] = np.nan  # 100 NaN samples from 3.2 s
    sf.write(folder / "nan.wav", nan, 16_000, subtype="FLOAT")
    inf = x.copy()
    inf[24_000] = np.inf
    sf.write(folder / "inf.wav", inf, 16_000, subtype="FLOAT")
    sf.write(folder / "whole.wav", decode_span(str(AMI), 0.0, 40.0), 16_000)
    (folder / "truncated.wav").write_bytes((folder / "whole.wav").read_bytes()[:5_000])
    (folder / "whole.wav").unlink()
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is a text file, not audio\n" * 10)
    return folder


@pytest.fixture(scope="module")
def built(matrix, tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("awkward-out")
    result = pipeline.build(matrix, tiny_config, out, stop_after="condense", progress=False)
    return result, out


def test_every_awkward_file_has_its_exact_status_and_message(built, matrix):
    result, _ = built
    ledger = {e["recording_id"]: {k: e[k] for k in ("status", "stage", "reason")} for e in result.ledger}
    path = lambda name: str(matrix / name)  # noqa: E731
    data_s = (5_000 - 44) / 32_000  # 16-bit mono 16 kHz: 32,000 bytes a second after the 44-byte header
    expected = {
        "a": SHORT,
        "café_à_Zürich": SHORT,
        "clipped": SHORT,
        "empty": {"status": "failed", "stage": "ingest", "reason": f"{path('empty.wav')}: empty file (0 bytes)"},
        "f": SHORT,
        "inf": {"status": "failed", "stage": "vad", "reason": f"{path('inf.wav')}: NaN or Inf samples at 1.50 s: the recording is refused, not repaired"},
        "m": SHORT,
        "nan": {"status": "failed", "stage": "vad", "reason": f"{path('nan.wav')}: NaN or Inf samples at 3.20 s: the recording is refused, not repaired"},
        "narrow_8k": SHORT,
        "noise": NO_SPEECH,
        "o": SHORT,
        "ok": SHORT,
        "ok_again": {
            "status": "duplicate",
            "stage": "ingest",
            "reason": f"{path('ok_again.wav')}: same content (sha256 {ingest.content_hash(matrix / 'ok.wav')[:12]}) as ok ({path('ok.wav')}); processed once, as ok",
        },
        "silence": NO_SPEECH,
        "stereo48k": SHORT,
        "text": ledger["text"],  # FFmpeg's own words follow; checked below
        "truncated": {"status": "failed", "stage": "ingest", "reason": f"{path('truncated.wav')}: truncated: header says 40.0 s, {data_s:.2f} s of data"},
        "v": SHORT,
    }
    assert ledger == expected
    assert ledger["text"]["status"] == "failed" and ledger["text"]["stage"] == "ingest"
    assert ledger["text"]["reason"].startswith(f"{path('text.wav')}: cannot open as audio (")


def test_the_funnel_counts_each_problem_under_its_reason(built, matrix):
    result, out = built
    n_files = len(list(matrix.iterdir()))
    assert result.funnel.counts["ingest"] == n_files == 18
    drops = result.funnel.drop_counts()
    assert drops["ingest"] == {ingest.EMPTY: 1, ingest.TRUNCATED: 1, ingest.UNREADABLE: 1, ingest.DUPLICATE: 1}
    assert drops["vad"] == {segment.NON_FINITE: 2, "no speech detected": 2}
    assert result.funnel.counts["vad"] == n_files - 4 - 4  # 4 refused at ingest, 4 without usable speech
    assert result.report()["recordings"] == {"dropped": 12, "failed": 5, "duplicate": 1}
    plan = pq.read_table(out / "work" / "ingest" / "recordings.parquet").to_pydict()
    hashes = dict(zip(plan["recording_id"], plan["sha256"]))
    assert hashes["ok"] == hashes["ok_again"] == ingest.content_hash(matrix / "ok.wav")
    assert hashes["empty"] is None and hashes["text"] is None and len(set(hashes.values()) - {None}) == n_files - 4


def test_the_duplicate_is_processed_once(built):
    _, out = built
    vad = pq.read_table(out / "work" / "vad" / "r00000.parquet").to_pydict()
    speech = dict(zip(vad["recording_id"], vad["speech"]))
    assert speech["ok"] and speech["ok_again"] == []


def test_the_probe_reads_every_format_at_its_length(matrix):
    listed = ingest.list_recordings(matrix)
    probed = dict(zip(listed["recording_id"], ingest.probe_recordings(listed.to_dict())["duration"]))
    for rid in ("ok", "narrow_8k", "stereo48k", "f", "v", "o", "m", "a", "café_à_Zürich", "clipped"):
        assert probed[rid] == pytest.approx(SPEECH_S, abs=0.15), rid  # an MP3 header estimate says 8.1 s


def test_an_empty_folder_and_a_folder_without_audio_are_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'empty'}: the folder is empty$"):
        ingest.list_recordings(tmp_path / "empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("no audio here")
    (tmp_path / "docs" / "table.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"docs: no audio files \(\.wav, \.flac, \.mp3, \.ogg, \.opus, \.m4a\) among its 2 file\(s\)$"):
        ingest.list_recordings(tmp_path / "docs")


@pytest.fixture
def manifest(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    x = _speech()
    sf.write(root / "good.wav", x, 16_000)
    sf.write(tmp_path / "outside.wav", x, 16_000)
    (root / "link.wav").symlink_to(tmp_path / "outside.wav")
    rows = ["good.wav", "missing.wav", "../outside.wav", str(tmp_path / "outside.wav"), "link.wav"]
    ids = ["good", "missing", "dotdot", "absolute", "link"]
    (root / "list.csv").write_text("recording_id,audio_path\n" + "".join(f"{i},{r}\n" for i, r in zip(ids, rows)))
    return root / "list.csv"


def test_a_manifest_refuses_paths_outside_its_folder_and_records_missing_files(manifest, tiny_config, tmp_path):
    root, outside = manifest.parent, tmp_path / "outside.wav"
    result = pipeline.build(manifest, tiny_config, tmp_path / "out", stop_after="condense", progress=False)
    ledger = {e["recording_id"]: e for e in result.ledger}
    refusal = lambda listed: f"{manifest}: {listed!r} resolves to {outside}, outside the manifest's folder {root}: refused (--allow-outside-root reads it)"  # noqa: E731
    assert ledger["dotdot"]["reason"] == refusal("../outside.wav")
    assert ledger["absolute"]["reason"] == refusal(str(outside))
    assert ledger["link"]["reason"] == refusal("link.wav")
    assert ledger["missing"] == {"recording_id": "missing", "status": "failed", "stage": "ingest", "reason": f"{root / 'missing.wav'}: file not found"}
    assert ledger["good"]["status"] == "dropped" and ledger["good"]["stage"] == "length"
    assert result.funnel.drop_counts()["ingest"] == {ingest.OUTSIDE_ROOT: 3, ingest.FILE_NOT_FOUND: 1}
    plan = pq.read_table(tmp_path / "out" / "work" / "ingest" / "recordings.parquet").to_pydict()
    refused = [d for rid, d, h in zip(plan["recording_id"], plan["duration"], plan["sha256"]) if rid in ("dotdot", "absolute", "link")]
    assert refused == [None, None, None]  # never opened


def test_allow_outside_root_reads_them_once(manifest, tiny_config, tmp_path):
    result = pipeline.build(manifest, tiny_config, tmp_path / "out", stop_after="condense", progress=False, allow_outside_root=True)
    statuses = {e["recording_id"]: (e["status"], e["stage"]) for e in result.ledger}
    # the three rows name one file: the first by id is processed, the others are its duplicates
    assert statuses == {
        "absolute": ("dropped", "length"),
        "dotdot": ("duplicate", "ingest"),
        "good": ("duplicate", "ingest"),  # good.wav holds the same bytes as outside.wav
        "link": ("duplicate", "ingest"),
        "missing": ("failed", "ingest"),
    }


def test_the_cli_flag_reaches_the_build(monkeypatch, manifest, tmp_path):
    import cpqa

    seen = {}

    def fake_build(source, config, out, **kwargs):
        seen.update(kwargs)
        return None  # as on a rank other than 0

    monkeypatch.setattr(pipeline, "build", fake_build)
    monkeypatch.setattr(cpqa, "load_config", lambda args: None)
    assert cpqa.main(["build", str(manifest), "--out", str(tmp_path / "o"), "--allow-outside-root"]) == 0
    assert seen["allow_outside_root"] is True
    assert cpqa.main(["build", str(manifest), "--out", str(tmp_path / "o")]) == 0
    assert seen["allow_outside_root"] is False
