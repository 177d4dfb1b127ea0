"""Drops kept for audit: every reason is a registered constant, every dropped row is in work/dropped/."""

import pyarrow.parquet as pq
import pytest
from audited_build import PAIRS

from build import pipeline
from build.core import schema
from build.sources import ingest
from build.stages import condense, postfilter, qa, segment


def _dropped(out) -> dict[str, list[dict]]:
    return {p.stem: pq.read_table(p).to_pylist() for p in sorted((out / "work" / "dropped").glob("*.parquet"))}


def test_the_registry_holds_each_module_constant_once():
    flat = [reason for reasons in pipeline.DROP_REASONS.values() for reason in reasons]
    assert len(flat) == len(set(flat))
    assert set(pipeline.DROP_REASONS) <= set(pipeline.FUNNEL)
    for constant in (ingest.DUPLICATE, ingest.TRUNCATED, segment.NON_FINITE, condense.NO_EMOTION_PASSED, qa.UNPARSEABLE, postfilter.NEAR_DUPLICATE):
        assert constant in flat
    assert pipeline.registered("length", "shorter than 30 s") and pipeline.registered("length", "longer than 60 s")
    assert not pipeline.registered("length", "shorter than") and not pipeline.registered("vad", "shorter than 30 s")


def test_every_reason_in_the_funnel_and_the_audit_files_is_registered(audited_build):
    drops = audited_build.result.funnel.drop_counts()
    # empathy: the loopback LLM answers every request with QA pairs, so the one clip yields no sample
    assert set(drops) == {"ingest", "vad", "length", "pairs", "empathy"}
    for stage, reasons in drops.items():
        for reason in reasons:
            assert pipeline.registered(stage, reason), (stage, reason)
    for stage, rows in _dropped(audited_build.out).items():
        assert all(row["stage"] == stage and pipeline.registered(stage, row["reason"]) for row in rows), stage


def test_every_dropped_row_is_in_its_stage_file_with_reason_and_detail(audited_build):
    result, out, source = audited_build.result, audited_build.out, audited_build.source
    dropped = _dropped(out)
    assert {stage: len(rows) for stage, rows in dropped.items()} == {stage: sum(n.values()) for stage, n in result.funnel.drop_counts().items()}
    ingest_rows = {row["recording_id"]: row for row in dropped["ingest"]}
    assert sorted(ingest_rows) == ["actor01_copy", "corrupt"]
    assert ingest_rows["actor01_copy"]["reason"] == ingest.DUPLICATE
    assert ingest_rows["actor01_copy"]["detail"].endswith(f"as actor01 ({source / 'actor01.flac'}); processed once, as actor01")
    assert ingest_rows["corrupt"]["reason"] == ingest.UNREADABLE and ingest_rows["corrupt"]["detail"].startswith(f"{source / 'corrupt.wav'}: cannot open as audio")
    assert [(r["recording_id"], r["segment_id"], r["reason"], r["detail"]) for r in dropped["vad"]] == [("silence", None, "no speech detected", None)]
    assert {r["recording_id"] for r in dropped["length"]} == {"short"} and all(r["segment_id"].startswith("short-") for r in dropped["length"])
    assert {r["reason"] for r in dropped["length"]} == {"shorter than 30 s"}
    # what the post-filter removed, readable: the pair's index in the reply and its text
    pairs = [(r["segment_id"], r["pair_index"], r["reason"], r["detail"]) for r in dropped["pairs"]]
    text = lambda i: f"Q: {PAIRS[i]['question']} | A: {PAIRS[i]['answer']}"  # noqa: E731
    assert pairs == [("actor01-0000", 2, postfilter.PRESUPPOSES_TRANSCRIPT, text(2)), ("actor01-0000", 3, postfilter.NEAR_DUPLICATE, text(3))]
    assert result.funnel.counts["generated"] == len(PAIRS) and result.funnel.counts["pairs"] == len(PAIRS) - 2
    assert sorted(result.pairs["pair_index"]) == [0, 1]


def test_the_ledger_accounts_for_every_file(audited_build):
    ledger = {e["recording_id"]: (e["status"], e["stage"]) for e in audited_build.result.ledger}
    assert ledger == {
        "actor01": ("kept", None),
        "actor01_copy": ("duplicate", "ingest"),
        "corrupt": ("failed", "ingest"),
        "short": ("dropped", "length"),
        "silence": ("dropped", "vad"),
    }
    assert audited_build.result.status == "built"


@pytest.mark.parametrize("stage", ["ingest", "vad", "length", "pairs"])
def test_the_audit_files_have_the_dropped_schema(audited_build, stage):
    written = pq.read_schema(audited_build.out / "work" / "dropped" / f"{stage}.parquet")
    assert written.names == list(schema.DROPPED)
