"""Publication modes: metadata-only + rehydrate gives back the full build; changed or missing sources are
reported, never used; gated cards and pushes; per-row licences and the most restrictive one."""

import hashlib
import json
import shutil

import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml
from conftest import AMI
from datasets import Dataset
from test_export import BUILD_ID, write

from build.core.config import paper_config
from build.publishing import export, licences, publish, stats
from build.sources.audio import decode_span

PLOTS = [f"stats/{name}.png" for name in sorted(stats.PLOTS)]  # the card's statistics, uploaded with it

N_PAIRS, N_CLIPS = 3, 2  # test_export's two AMI clips, with 2 + 1 QA pairs


def _config(mode):
    return paper_config().with_overrides([f"export.publish={mode}"])


def _shards(out):
    return {str(p.relative_to(out)): pq.read_table(p) for p in sorted((out / "data").rglob("*.parquet"))}


def _audio_hashes(table):
    return [hashlib.sha256(cell["bytes"]).hexdigest() for cell in table.column("context").to_pylist()]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    write(out, _config("full"))
    return out


@pytest.fixture
def metadata_only(tmp_path):
    out = tmp_path / "meta"
    write(out, _config("metadata-only"))
    return out


def test_metadata_only_tables_carry_no_audio_but_what_locates_it(metadata_only):
    shards = _shards(metadata_only)
    assert sorted(shards) == ["data/qa/test-00000-of-00001.parquet", "data/segments/test-00000-of-00001.parquet"]
    digest = hashlib.sha256(AMI.read_bytes()).hexdigest()
    for table in shards.values():
        assert "context" not in table.column_names
        assert set(table.column("source_file").to_pylist()) == {AMI.name}
        assert set(table.column("source_sha256").to_pylist()) == {digest}
        assert set(table.column("license").to_pylist()) == {"cc-by-4.0"}
    segments = shards["data/segments/test-00000-of-00001.parquet"]
    assert list(zip(segments.column("clip_start").to_pylist(), segments.column("clip_end").to_pylist())) == [(2.0, 34.0), (20.5, 55.0)]
    card = (metadata_only / "README.md").read_text()
    header = yaml.safe_load(card.split("---")[1])
    assert header["cpqa_publication"] == "metadata-only" and "extra_gated_prompt" not in header
    assert "cpqa.py rehydrate" in card
    sizes = sum(p.stat().st_size for p in (metadata_only / "data").rglob("*.parquet"))
    assert sizes < 100_000  # ~65 s of 16-bit FLAC would be ~1.5 MB


def _bytes(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def _assert_equal_to_full(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].column_names == want[name].column_names, name
        assert _audio_hashes(got[name]) == _audio_hashes(want[name]), name  # byte-identical FLAC
        for column in want[name].column_names:
            if column != "context":
                assert got[name].column(column).to_pylist() == want[name].column(column).to_pylist(), (name, column)


def test_metadata_only_plus_rehydrate_equals_the_full_build_in_a_copy(full, metadata_only, tmp_path):
    copy = tmp_path / "my-copy" / "nested"
    copy.mkdir(parents=True)
    shutil.copy(AMI, copy / AMI.name)
    before = _bytes(metadata_only)
    report = publish.rehydrate(metadata_only, tmp_path / "my-copy")
    into = tmp_path / "meta-rehydrated"
    n = N_PAIRS + N_CLIPS
    assert (report.into, report.rows, report.total, report.missing, report.changed) == (into, n, n, {}, {})
    assert report.lines() == [f"rehydrated 5 of 5 rows into {into}"]
    assert _bytes(metadata_only) == before  # the build itself is only read
    _assert_equal_to_full(_shards(into), _shards(full))
    from datasets import load_dataset

    qa = load_dataset(str(into), split="test")
    assert len(qa) == N_PAIRS and qa[0]["context"] is not None


def test_a_source_changed_after_the_build_is_reported_and_not_used(metadata_only, tmp_path):
    root = tmp_path / "changed"
    root.mkdir()
    audio = decode_span(str(AMI))
    audio[16_000 * 10] += 0.01  # one sample of the recording differs
    sf.write(root / AMI.name, audio, 16_000, format="FLAC")
    report = publish.rehydrate(metadata_only, root)
    assert (report.rows, report.total) == (0, N_PAIRS + N_CLIPS)
    assert report.changed == {AMI.name: N_PAIRS + N_CLIPS} and report.missing == {}
    changed = f"  changed since the build (sha256 differs): {AMI.name}"
    assert report.lines()[1] == f"{changed} ({N_PAIRS + N_CLIPS} rows without audio)"
    for name, table in _shards(report.into).items():
        assert table.num_rows == pq.read_table(metadata_only / name).num_rows
        assert set(table.column("context").to_pylist()) == {None}


def test_rehydrate_with_a_missing_source_keeps_every_row_then_a_second_run_completes(
    full, metadata_only, tmp_path, capsys
):
    """The source under another name: nothing is found, the build stays as it was, the copy holds every
    row and column with null audio, the command exits 1; a second run with the right root fills them."""
    import cpqa

    wrong, right = tmp_path / "wrong", tmp_path / "right"
    wrong.mkdir()
    right.mkdir()
    shutil.copy(AMI, wrong / "renamed.flac")
    shutil.copy(AMI, right / AMI.name)
    before = _bytes(metadata_only)
    assert cpqa.main(["rehydrate", str(metadata_only), "--audio-root", str(wrong)]) == 1
    into = tmp_path / "meta-rehydrated"
    assert capsys.readouterr().out.splitlines() == [
        f"rehydrated 0 of 5 rows into {into}",
        f"  missing: {AMI.name} (5 rows without audio)",
        f"  every row is kept; run rehydrate again into {into} with a root holding these files to fill them",
    ]
    assert _bytes(metadata_only) == before
    for name, table in _shards(into).items():
        original = pq.read_table(metadata_only / name)
        assert table.column_names == ["context", *original.column_names], name
        assert table.drop(["context"]).to_pylist() == original.to_pylist(), name  # every row, every value
        assert table.column("context").to_pylist() == [None] * original.num_rows
    assert cpqa.main(["rehydrate", str(metadata_only), "--audio-root", str(right)]) == 0
    assert capsys.readouterr().out.splitlines() == [f"rehydrated 5 of 5 rows into {into}"]
    _assert_equal_to_full(_shards(into), _shards(full))


def test_a_second_run_fills_only_what_the_first_could_not(tmp_path):
    """Two sources in two roots: the first run finds one, the second (whose root lacks the first source)
    fills the other and keeps what the first wrote; the copy equals a full build."""
    from test_export import _segments

    other = tmp_path / "meeting.flac"
    shutil.copy(AMI, other)
    rows = _segments().to_list()
    rows[1]["audio_path"] = str(other)  # the second clip from a second source file
    segments = Dataset.from_list(rows)
    write(tmp_path / "full", _config("full"), segments=segments)
    write(tmp_path / "meta", _config("metadata-only"), segments=segments)
    (tmp_path / "root1").mkdir()
    (tmp_path / "root2").mkdir()
    shutil.copy(AMI, tmp_path / "root1" / AMI.name)
    shutil.copy(other, tmp_path / "root2" / other.name)
    first = publish.rehydrate(tmp_path / "meta", tmp_path / "root1", tmp_path / "copy")
    # clip 0 (2 pairs and the clip) from root1; clip 1 (1 pair and the clip) missing
    assert (first.rows, first.total, first.missing) == (2 + 1, N_PAIRS + N_CLIPS, {"meeting.flac": 1 + 1})
    segments_shard = pq.read_table(tmp_path / "copy" / "data" / "segments" / "test-00000-of-00001.parquet")
    assert [cell is not None for cell in segments_shard.column("context").to_pylist()] == [True, False]
    second = publish.rehydrate(tmp_path / "meta", tmp_path / "root2", tmp_path / "copy")
    assert (second.rows, second.total, second.missing, second.changed) == (first.total, first.total, {}, {})
    _assert_equal_to_full(_shards(tmp_path / "copy"), _shards(tmp_path / "full"))


def test_rehydrate_never_writes_over_the_build_or_a_folder_it_did_not_make(metadata_only, tmp_path):
    with pytest.raises(ValueError, match="rehydrate writes a copy beside it, never over it"):
        publish.rehydrate(metadata_only, AMI.parent, metadata_only)
    with pytest.raises(ValueError, match="rehydrate writes a copy beside it, never over it"):
        publish.rehydrate(metadata_only, AMI.parent, tmp_path)  # the folder that holds the build
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="exists and is not a rehydrated copy of this build"):
        publish.rehydrate(metadata_only, AMI.parent, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_rehydrate_refuses_a_build_that_has_audio(full, tmp_path):
    with pytest.raises(ValueError, match=r"already has audio \(context\)"):
        publish.rehydrate(full, AMI.parent, tmp_path / "copy")


def test_a_rehydrated_metadata_only_build_is_never_uploaded(metadata_only, tmp_path):
    assert publish.files_to_upload(metadata_only) == ["README.md", "data/qa/test-00000-of-00001.parquet", "data/segments/test-00000-of-00001.parquet", *PLOTS]
    report = publish.rehydrate(metadata_only, AMI.parent)
    with pytest.raises(ValueError, match="built metadata-only: refusing to upload audio"):
        publish.files_to_upload(report.into)


def test_gated_card_and_push_turn_access_requests_on(tmp_path, monkeypatch):
    out = tmp_path / "gated"
    write(out, _config("gated"))
    header = yaml.safe_load((out / "README.md").read_text().split("---")[1])
    assert header["cpqa_publication"] == "gated"
    assert header["extra_gated_prompt"] == licences.GATED_PROMPT
    assert header["extra_gated_fields"]["I agree to use this dataset for non-commercial research only"] == "checkbox"
    assert "context" in pq.read_schema(out / "data" / "qa" / "test-00000-of-00001.parquet").names
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id))

        def upload_folder(self, allow_patterns, **kwargs):
            calls.append(("upload", sorted(allow_patterns)))

        def update_repo_settings(self, repo_id, gated, repo_type):
            calls.append(("settings", repo_id, gated, repo_type))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    publish.push(out, "you/cpqa")
    assert calls == [("create", "you/cpqa"), ("upload", publish.files_to_upload(out)), ("settings", "you/cpqa", "manual", "dataset")]


def test_push_build_checks_the_token_then_lists_the_files_before_uploading(full, monkeypatch):
    from build.commands.preflight import PreflightError

    events = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            events.append(("create", repo_id, kwargs.get("private")))

        def upload_folder(self, allow_patterns, **kwargs):
            events.append(("upload", sorted(allow_patterns)))

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)  # no saved login
    monkeypatch.setenv("HF_TOKEN", "")
    with pytest.raises(PreflightError, match="no Hugging Face token"):
        publish.push_build(full, "you/cpqa", public=True, dry_run=False, say=events.append)
    assert events == []  # nothing said, nothing sent
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    url = publish.push_build(full, "you/cpqa", public=True, dry_run=False, say=events.append)
    files = publish.files_to_upload(full)
    assert url == "https://huggingface.co/datasets/you/cpqa"
    assert events == [
        "uploading (full, public):", *(f"  {name}" for name in files),  # said before anything is sent
        ("create", "you/cpqa", False), ("upload", sorted(files)),
        f"done: {url}",
    ]


def test_push_dry_run_lists_exactly_the_files_and_contacts_nothing(metadata_only, monkeypatch, capsys):
    import huggingface_hub

    import cpqa

    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # any contact would raise
    (metadata_only / "work").mkdir()
    (metadata_only / "work" / "local.parquet").write_bytes(b"x")
    assert cpqa.main(["push", str(metadata_only), "--repo-id", "you/cpqa", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "would upload (metadata-only, private):",
        "  README.md",
        "  data/qa/test-00000-of-00001.parquet",
        "  data/segments/test-00000-of-00001.parquet",
        *(f"  {plot}" for plot in PLOTS),
        "would create https://huggingface.co/datasets/you/cpqa",
    ]


def test_push_refuses_an_export_that_is_not_the_last_builds(tmp_path, monkeypatch, capsys):
    """The card's build id against report.json's: another id, no id, or no export is refused in one line."""
    import huggingface_hub

    import cpqa

    monkeypatch.setattr(huggingface_hub, "HfApi", None)  # any contact would raise
    out = tmp_path / "out"
    write(out, _config("full"))
    assert publish.check_current(out) == BUILD_ID
    push = ["push", str(out), "--repo-id", "you/cpqa", "--dry-run"]
    (out / "report.json").write_text(json.dumps({"build_id": "later-build"}))  # a later build, no export
    capsys.readouterr()  # the export's progress bars
    assert cpqa.main(push) == 2
    said = capsys.readouterr()
    assert said.out == "" and said.err == (
        f"cpqa push: {out}: the export (build {BUILD_ID}) is not that of the folder's last build "
        "(later-build): rebuild with the same command, then push (--debug shows the traceback)\n"
    )
    (out / "report.json").unlink()
    assert cpqa.main(push) == 2
    assert "(no build_id in report.json): rebuild with the same command, then push" in capsys.readouterr().err
    (out / "report.json").write_text(json.dumps({"build_id": BUILD_ID}))
    export.remove_export(out)
    assert cpqa.main(push) == 2
    assert capsys.readouterr().err == (
        f"cpqa push: {out}: no exported dataset here (its last build, {BUILD_ID}, exported nothing: "
        "see report.json): README.md and data/*/*.parquet expected (--debug shows the traceback)\n"
    )
    with pytest.raises(FileNotFoundError, match="no exported dataset here"):
        publish.push(out, "you/cpqa", dry_run=True)


def test_licences_travel_per_row_and_the_card_states_the_most_restrictive(tmp_path):
    out = tmp_path / "licences"
    write(out, _config("metadata-only"), licences=["cc-by-4.0", "cc-by-nc-sa-4.0"])
    qa = pq.read_table(out / "data" / "qa" / "test-00000-of-00001.parquet")
    assert qa.column("license").to_pylist() == ["cc-by-4.0", "cc-by-4.0", "cc-by-nc-sa-4.0"]  # pairs of clip 0, then clip 1
    card = (out / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["license"] == "cc-by-nc-sa-4.0"
    assert "the most restrictive one, which the dataset as a\nwhole inherits, is **cc-by-nc-sa-4.0**" in card


def test_most_restrictive_licence():
    assert licences.most_restrictive(["cc0-1.0", "cc-by-4.0"]) == "cc-by-4.0"
    assert licences.most_restrictive(["cc-by-nc-sa-4.0", "CC-BY-4.0"]) == "cc-by-nc-sa-4.0"
    assert licences.most_restrictive(["cc-by-4.0", "my-own-terms"]) == "other"  # unknown terms restrict most


def test_an_unknown_mode_is_refused_before_any_audio_is_read(tmp_path):
    from build import pipeline
    from build.commands.preflight import PreflightError

    with pytest.raises(PreflightError, match=r"export.publish 'public': expected one of full, gated, metadata-only"):
        pipeline.build(tmp_path / "nothing-here", _config("public"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "work").exists()


def test_a_manifest_license_column_gives_each_row_its_licence(tmp_path):
    from conftest import ravdess_recording

    shutil.copy(AMI, tmp_path / "meeting.flac")
    shutil.copy(ravdess_recording(1), tmp_path / "actor.flac")
    (tmp_path / "list.csv").write_text("audio_path,license\nmeeting.flac,cc-by-4.0\nactor.flac,\n")
    (tmp_path / "list.jsonl").write_text('{"audio_path": "actor.flac", "license": "cc-by-nc-sa-4.0"}\n{"audio_path": "meeting.flac"}\n')
    paths = [str((tmp_path / name).resolve()) for name in ("meeting.flac", "actor.flac", "meeting.flac")]
    assert licences.row_licences(tmp_path / "list.csv", paths, "other") == ["cc-by-4.0", "other", "cc-by-4.0"]  # an empty cell: --license
    assert licences.row_licences(tmp_path / "list.jsonl", paths, "cc0-1.0") == ["cc0-1.0", "cc-by-nc-sa-4.0", "cc0-1.0"]
    assert licences.row_licences(tmp_path, paths, "cc-by-4.0") == ["cc-by-4.0"] * 3  # a folder: --license for all


def test_a_built_dataset_names_each_source_by_the_hash_ingest_took(audited_build):
    from build.sources import ingest

    plan = pq.read_table(audited_build.out / "work" / "ingest" / "recordings.parquet").to_pydict()
    planned = dict(zip(plan["recording_id"], plan["sha256"]))
    digest = ingest.content_hash(audited_build.source / "actor01.flac")
    assert planned["actor01"] == digest
    for config in ("qa", "segments"):
        rows = pq.read_table(next((audited_build.out / "data" / config).glob("*.parquet")), columns=["recording_id", "source_sha256"]).to_pylist()
        assert rows and {(r["recording_id"], r["source_sha256"]) for r in rows} == {("actor01", digest)}
