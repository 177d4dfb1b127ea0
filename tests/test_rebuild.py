"""Reruns into a used folder: the export, the condensed result, the report and push always describe
the last build, never an earlier one.

Each test reruns a copy of the session's audited build (tests/audited_build.py: one clip, two pairs
kept, its one empathy sample rejected), so only the stages a changed value touches run again.
"""

import json
import shutil

import pytest
import yaml
from audited_build import PAIRS, audited_config, reply
from datasets import load_from_disk
from openai_stub import OpenAIStub, Reply

import cpqa
from build import pipeline
from build.core import schema
from build.models.llm import summary_line
from build.publishing import publish

NO_LIVE_REPLY = Reply(500, "no live replies in this test")
REMOVED = "removed the previous build's export (README.md, data/, stats/): this build exported nothing"


@pytest.fixture
def out(audited_build, tmp_path):
    """A copy of the audited build's folder, safe to rerun into."""
    copy = tmp_path / "out"
    shutil.copytree(audited_build.out, copy)
    return copy


def _card(out):
    return yaml.safe_load((out / "README.md").read_text().split("---")[1])


def _report(out):
    return json.loads((out / "report.json").read_text())


def _rebuild(audited_build, out, stub, sets=(), **kwargs):
    """``cpqa.py build`` over the audited source into ``out``; returns its exit status."""
    config = audited_config(audited_build.config, stub.base_url).with_overrides(list(sets))
    options = dict(stop_after=None, outputs="qa,empathy", license="other", sources=None, quiet=True)
    options.update(kwargs)
    return cpqa.run_build(str(audited_build.source), str(out), config, **options)


def _push_dry_run(out, capsys):
    capsys.readouterr()
    status = cpqa.main(["push", str(out), "--repo-id", "you/cpqa", "--dry-run"])
    return status, capsys.readouterr()


def test_a_rerun_that_keeps_no_pair_removes_the_old_export_and_push_refuses(audited_build, out, capsys):
    old_id = _report(out)["build_id"]
    assert _card(out)["cpqa_build_id"] == old_id and _push_dry_run(out, capsys)[0] == 0
    kept = ("README.md", "data/qa/test-00000-of-00001.parquet")
    old_export = {name: (out / name).read_bytes() for name in kept}
    transcript_only = json.dumps({"pairs": [PAIRS[2]]})  # presupposes a transcript: the post-filter drops it
    with OpenAIStub(lambda request: transcript_only) as stub:
        assert _rebuild(audited_build, out, stub, ["qa.pairs_per_segment=3"], outputs="qa") == 1
        assert len(stub.requests) == 1  # the QA request of the one clip, asked for 3 pairs
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == REMOVED
    assert printed[-1] == f"no QA pair survived: nothing to export (see {out / 'recordings.jsonl'})"
    assert [name for name in ("README.md", "data", "stats") if (out / name).exists()] == []
    report = _report(out)
    assert report["counts"]["QA pairs kept"] == 0 and report["configs"] == []
    new_id = report["build_id"]
    assert new_id != old_id
    status, said = _push_dry_run(out, capsys)
    assert status == 2 and said.out == ""
    assert said.err == (
        f"cpqa push: {out}: no exported dataset here (its last build, {new_id}, exported nothing: "
        "see report.json): README.md and data/*/*.parquet expected (--debug shows the traceback)\n"
    )
    # an earlier build's export put back (say, restored from a backup) is not this build's either
    for name, data in old_export.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    status, said = _push_dry_run(out, capsys)
    assert status == 2 and said.out == ""
    assert said.err == (
        f"cpqa push: {out}: the export (build {old_id}) is not that of the folder's last build ({new_id}): "
        "rebuild with the same command, then push (--debug shows the traceback)\n"
    )


def test_stop_after_condense_removes_the_export_and_an_empty_result_opens_empty(audited_build, out, capsys):
    with OpenAIStub(lambda request: NO_LIVE_REPLY) as stub:
        assert _rebuild(audited_build, out, stub, stop_after="condense") == 0
        first = capsys.readouterr().out.splitlines()
        none_sampled = ["condense.samples_per_category=0"]
        assert _rebuild(audited_build, out, stub, none_sampled, stop_after="condense") == 0
        second = capsys.readouterr().out.splitlines()
        assert stub.requests == []
    assert first[0] == REMOVED
    assert first[-1] == f'open with: datasets.load_from_disk("{out / "condensed"}")'
    assert not (out / "README.md").exists() and not (out / "data").exists()
    # nothing condensed: the message says so, and the folder opens as 0 rows with the condensed features
    assert "removed" not in second[0]
    folder = out / "condensed"
    assert second[-1] == f'open with: datasets.load_from_disk("{folder}") (0 rows: nothing was condensed)'
    condensed = load_from_disk(str(folder))
    assert len(condensed) == 0 and condensed.features == schema.CONDENSED_SEGMENT
    listed = [entry["filename"] for entry in json.loads((folder / "state.json").read_text())["_data_files"]]
    assert sorted(p.name for p in folder.iterdir()) == sorted(["dataset_info.json", "state.json", *listed])
    assert _report(out)["configs"] == [] and _report(out)["counts"]["condensed segments"] == 0


def _llm_tasks(out) -> dict[str, dict]:
    """Stage -> its LLM call counts, from the stats of every task that called the LLM."""
    found = {}
    for path in sorted((out / "work").glob("*/*.stats.json")):
        stats = json.loads(path.read_text())
        if "llm:requests" in stats["counts"]:
            found[stats["stage"]] = pipeline.llm_calls(stats["counts"])
    return found


def test_the_report_counts_the_llm_calls_of_this_run_and_names_the_build_total(audited_build, out, capsys):
    tasks = _llm_tasks(out)
    assert sorted(tasks) == ["empathy", "qa"]
    # 1. --outputs qa, nothing left to do: no request, the QA task skipped; the total is the QA task's
    with OpenAIStub(lambda request: NO_LIVE_REPLY) as stub:
        assert _rebuild(audited_build, out, stub, outputs="qa") == 0
        assert stub.requests == []
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3:-1] == [
        "LLM calls this run: 0 requests: 0 from cache, 0 sent in 0 attempts; 0 retried; 0 failed; "
        "1 task skipped as finished",
        f"LLM calls, build total (every run): {summary_line(tasks['qa'])}",
    ]
    assert _report(out)["llm_calls"]["tasks_skipped"] == 1
    # 2. a changed empathy value: only the empathy task is redone, and only its requests are counted
    with OpenAIStub(reply) as stub:
        assert _rebuild(audited_build, out, stub, ["empathy.demos_per_sample=1"]) == 0
        sent = len(stub.requests)
    assert sent == 1  # one clip
    printed = capsys.readouterr().out.splitlines()
    assert printed[-3:-1] == [
        f"LLM calls this run: {sent} requests: 0 from cache, {sent} sent in {sent} attempts; 0 retried; "
        "0 failed; 1 task skipped as finished",
        f"LLM calls, build total (every run): {summary_line(pipeline.llm_calls(_sum_counts(out)))}",
    ]
    assert pipeline.llm_calls(_sum_counts(out))["requests"] == tasks["qa"]["requests"] + sent


def _sum_counts(out) -> dict[str, int]:
    total: dict[str, int] = {}
    for stage in ("qa", "empathy"):
        for key, n in json.loads((out / "work" / stage / "s00000.stats.json").read_text())["counts"].items():
            total[key] = total.get(key, 0) + n
    return total


def test_the_card_and_report_name_only_the_configs_written(audited_build, out, capsys):
    """The audited build rejected its one empathy sample: no empathy config; nor with --outputs qa."""
    for folder in (audited_build.out, out):
        if folder is out:
            with OpenAIStub(lambda request: NO_LIVE_REPLY) as stub:
                assert _rebuild(audited_build, out, stub, outputs="qa") == 0
            last = capsys.readouterr().out.splitlines()[-1]
            segments = f'load_dataset("{out}", "segments")'
            assert last == f'open with: datasets.load_dataset("{out}", split="test")   # or {segments}'
        assert not (folder / "data" / "empathy").exists()
        card = (folder / "README.md").read_text()
        assert [c["config_name"] for c in _card(folder)["configs"]] == ["qa", "segments"]
        assert '"empathy", split=' not in card and "## The `empathy` config" not in card
        assert "<!--" not in card  # the template's section markers
        assert _report(folder)["configs"] == ["qa", "segments"]
        assert _card(folder)["cpqa_build_id"] == _report(folder)["build_id"]
    assert publish.check_current(out) == _report(out)["build_id"] != _report(audited_build.out)["build_id"]
