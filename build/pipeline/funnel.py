"""What a build counts and reports: the funnel, the drop reasons, the ledger of recordings, report.json.

The funnel counts what is left after each step (``FUNNEL``, keyed by stage id) and every drop by
stage and reason; every input recording ends ``kept``, ``dropped`` (stage and reason), ``failed``
(stage and error) or ``duplicate`` (of which recording) in the ledger.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset

from ..models.llm import CallStats, summary_line
from ..publishing import card
from ..sources import ingest
from ..stages import condense, empathy, postfilter, qa, segment

# stage id -> the funnel line that counts what is left after it, in pipeline order
FUNNEL = {
    "ingest": "recordings",
    "vad": "recordings with speech",
    "segments": "segments",
    "length": "segments within length",
    "label": "segments labelled",
    "occurrence": "segments passing occurrence",
    "sampling": "condensed segments",
    "asr": "segments transcribed",
    "qa": "segments with QA pairs",
    "generated": "QA pairs generated",
    "pairs": "QA pairs kept",
    "postfilter": "segments in the benchmark",
    "empathy": "empathy samples",
}
# Stages at which a recording can end (QA pair drops never end a recording), in order.
STAGES = ("ingest", "vad", "length", "label", "occurrence", "sampling", "asr", "qa", "postfilter")

# drop reasons decided by the pipeline's own steps (the stage modules' reasons travel through their columns)
NO_SPEECH = "no speech detected"
LABELLING_FAILED = "labelling failed"
OVER_QUOTA = "over the per-category quota"
ASR_FAILED = "transcription failed"
NO_WORDS = "no words recognised"
LLM_FAILED = "LLM request failed"
NO_PAIRS = "no pairs in the reply"
NO_PAIR_SURVIVED = "no pair survived the post-filter"

# Every reason a funnel stage can record, each a constant of the module that decides it; a reason
# with {...} is a template naming a configured bound ("shorter than 30 s"). ``registered`` checks one.
DROP_REASONS: dict[str, tuple[str, ...]] = {
    "ingest": ingest.REASONS,
    "vad": (segment.VAD_FAILED, segment.NON_FINITE, NO_SPEECH),
    "length": (segment.SHORTER, segment.LONGER),
    "label": (LABELLING_FAILED,),
    "occurrence": (condense.NO_EMOTION_PASSED,),
    "sampling": (OVER_QUOTA,),
    "asr": (ASR_FAILED, NO_WORDS),
    "qa": (LLM_FAILED, qa.UNPARSEABLE, qa.NO_TRANSCRIPT, NO_PAIRS),
    "pairs": postfilter.REASONS,
    "postfilter": (NO_PAIR_SURVIVED,),
    "empathy": (*empathy.REASONS, empathy.REQUEST_FAILED),
}


def registered(stage: str, reason: str) -> bool:
    """Whether ``reason`` is one of ``DROP_REASONS[stage]`` (a template matches any value of its field)."""
    for known in DROP_REASONS.get(stage, ()):
        parts = re.split(r"(\{[^}]*\})", known)
        pattern = "".join(".+" if part.startswith("{") else re.escape(part) for part in parts)
        if re.fullmatch(pattern, reason):
            return True
    return False


@dataclass(frozen=True)
class Drop:
    stage: str
    recording_id: str
    reason: str  # counted in the funnel: no file names, nothing that varies per row
    detail: str | None = None  # the full error message or the dropped text, kept in the ledger
    segment_id: str | None = None
    pair_index: int | None = None


@dataclass(frozen=True)
class Funnel:
    counts: dict[str, int]  # stage id -> rows left after it (FUNNEL order)
    drops: tuple[Drop, ...] = ()
    llm: dict | None = None  # LLM call counts of every task of the build, whichever run did it
    llm_run: dict | None = None  # the same counts of the tasks this run computed, with ``tasks_skipped``

    def drop_counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = {}
        for d in self.drops:
            table.setdefault(d.stage, Counter())[d.reason] += 1
        return {stage: dict(table[stage]) for stage in FUNNEL if stage in table}

    def named_counts(self) -> dict[str, int]:
        return {FUNNEL[stage]: n for stage, n in self.counts.items()}


@dataclass(frozen=True)
class BuildResult:
    recording_ids: list[str]
    funnel: Funnel
    segments: Dataset  # condensed segments; after QA, the segments in the benchmark
    pairs: Dataset | None = None  # kept QA pairs, once the QA stages ran
    status: str = "built"  # "built", "condensed" (stop-after), "nothing condensed", "no pairs"
    out_dir: Path | None = None
    quota: dict[str, dict[str, int]] | None = None  # per primary emotion: asked, candidates, sampled, delivered
    empathy: Dataset | None = None  # empathy samples (schema.EMPATHY_SAMPLE), once that stage ran
    build_id: str | None = None  # this run's id, in report.json and the exported card

    @property
    def ledger(self) -> list[dict]:
        finals = [d for d in (self.pairs, self.empathy) if d is not None] or [self.segments]
        return ledger(self.recording_ids, self.funnel, {rid for d in finals for rid in d["recording_id"]})

    def report(self) -> dict:
        """The funnel, drops, ledger statuses and labels; ``llm_calls`` counts this run's LLM calls (with
        ``tasks_skipped``: LLM tasks an earlier run finished), ``llm_calls_build`` those of every task."""
        report = {
            "build_id": self.build_id,
            "counts": self.funnel.named_counts(),
            "drops": self.funnel.drop_counts(),
            "recordings": dict(Counter(entry["status"] for entry in self.ledger)),
            "primary_emotions": dict(Counter(self.segments["primary_emotion"])),
        }
        if self.pairs is not None:
            report["categories"] = dict(Counter(self.pairs["category"]))
        if self.empathy is not None:
            strategies = Counter(r["response_strategy"] for r in self.empathy["desired_response"])
            report["empathy_strategies"] = dict(strategies)
        if self.funnel.llm is not None:
            report["llm_calls"] = self.funnel.llm_run
            report["llm_calls_build"] = self.funnel.llm
        if self.quota is not None:
            report["quota"] = self.quota
        return report


def ledger(recording_ids: list[str], funnel: Funnel, kept: set[str]) -> list[dict]:
    """One entry per input recording: kept, failed (stage, error), dropped (stage, reasons) or
    duplicate (the same bytes as another recording, named in ``reason``)."""
    by_recording: dict[str, list[Drop]] = {}
    for d in funnel.drops:
        if d.stage in STAGES:
            by_recording.setdefault(d.recording_id, []).append(d)
    entries = []
    for rid in recording_ids:
        entry = {"recording_id": rid, "status": "kept", "stage": None, "reason": None}
        drops = by_recording.get(rid, [])
        if rid not in kept and drops:
            entry.update(_ended(drops))
        elif rid not in kept:
            entry.update(status="dropped", stage="segments", reason="no segment")
        entries.append(entry)
    return entries


def _ended(drops: list[Drop]) -> dict:
    """Status, stage and reason of a recording that was not kept: the drops at its furthest stage."""
    last = max(STAGES.index(d.stage) for d in drops)
    at_last = [d for d in drops if STAGES.index(d.stage) == last]
    if at_last[0].reason == ingest.DUPLICATE:  # processed once, under the other id
        return {"status": "duplicate", "stage": "ingest", "reason": at_last[0].detail}
    if all(d.detail for d in at_last):  # every one of them failed with an error
        return {"status": "failed", "stage": STAGES[last], "reason": at_last[0].detail}
    reasons = Counter(d.reason for d in at_last)
    text = "; ".join(f"{r} (x{n})" if n > 1 else r for r, n in sorted(reasons.items()))
    return {"status": "dropped", "stage": STAGES[last], "reason": text}


def format_report(result: BuildResult) -> str:
    """The funnel as printed at the end of a build: counts, the drops under the step that made them,
    the ledger's exceptions."""
    report = result.report()
    lines = [f"cpqa build: {len(result.recording_ids)} recordings in"]
    drops = report["drops"]
    for stage, count in result.funnel.counts.items():
        lines.append(f"  {FUNNEL[stage]:<30} {count:>6}")
        for reason, n in sorted(drops.get(stage, {}).items()):
            lines.append(f"      dropped: {n} {reason}")
    statuses = report["recordings"]
    shown = ("kept", "dropped", "failed") + (("duplicate",) if statuses.get("duplicate") else ())
    lines.append("recordings: " + ", ".join(f"{statuses.get(s, 0)} {s}" for s in shown))
    for entry in result.ledger:
        if entry["status"] != "kept":
            lines.append(f"  {entry['recording_id']}: {entry['status']} at {entry['stage']}: {entry['reason']}")
    lines += _summary_lines(report)
    return "\n".join(lines)


def _summary_lines(report: dict) -> list[str]:
    def counted(values: dict) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(values.items()))

    lines = []
    if report["primary_emotions"]:
        lines.append("primary emotions: " + counted(report["primary_emotions"]))
    if report.get("quota"):
        quota = ", ".join(f"{k} {v['delivered']}/{v['asked']}" for k, v in report["quota"].items())
        lines.append("quota per primary emotion (delivered/asked): " + quota)
    if report.get("categories"):
        lines.append("QA categories: " + counted(report["categories"]))
    if report.get("empathy_strategies"):
        lines.append("empathy strategies: " + counted(report["empathy_strategies"]))
    if report.get("llm_calls"):
        lines += llm_lines(report["llm_calls"], report["llm_calls_build"])
    return lines


def llm_lines(this_run: dict, build: dict) -> list[str]:
    """What this run asked of the LLM (skipped tasks sent nothing), then, when it skipped any, the totals
    of every task of the build, whichever run did it."""
    skipped = this_run["tasks_skipped"]
    tasks = f"{skipped} task{'s' * (skipped != 1)} skipped as finished"
    lines = [f"LLM calls this run: {summary_line(this_run)}; {tasks}"]
    if skipped:
        lines.append(f"LLM calls, build total (every run): {summary_line(build)}")
    return lines


def write_report(result: BuildResult, out_dir: str | Path) -> None:
    """``report.json`` (funnel, with ``configs``: the dataset configs exported in ``out_dir``, none when
    this build exported nothing) and ``recordings.jsonl`` (ledger) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exported = card.written_configs(out_dir) if (out_dir / "README.md").exists() else []
    report = {**result.report(), "configs": exported}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out_dir / "recordings.jsonl", "w") as f:
        for entry in result.ledger:
            f.write(json.dumps(entry) + "\n")


# An LLM step's call counts ride in its shard's integer counts as "llm:<field>", "llm:retry:<reason>"
# and "llm:failed:<reason>"; llm_calls() reads them back for the build's summary.
LLM_PREFIX = "llm:"


def llm_counts(calls: dict) -> dict[str, int]:
    """A ``CallStats`` snapshot (or delta) as integer counts of a shard's stats file."""
    counts = {f"{LLM_PREFIX}{name}": calls[name] for name in CallStats.FIELDS}
    counts.update({f"{LLM_PREFIX}retry:{reason}": n for reason, n in calls["retry_reasons"].items()})
    counts.update({f"{LLM_PREFIX}failed:{reason}": n for reason, n in calls["failure_reasons"].items()})
    return counts


def llm_calls(counts: dict[str, int]) -> dict | None:
    """The LLM call counts of a build (summed over its shards), or None when no LLM step ran."""
    if f"{LLM_PREFIX}requests" not in counts:
        return None
    calls = {name: counts.get(f"{LLM_PREFIX}{name}", 0) for name in CallStats.FIELDS}
    for field, prefix in (("retry_reasons", f"{LLM_PREFIX}retry:"), ("failure_reasons", f"{LLM_PREFIX}failed:")):
        calls[field] = {key[len(prefix) :]: n for key, n in sorted(counts.items()) if key.startswith(prefix)}
    return calls
