"""The funnel and the audit files of a build, read back from every task's stats and dropped rows (rank 0).

``OUT/work/dropped/<stage>.parquet`` holds every dropped row of the build, one file per funnel stage
(datatrove's exclusion writer), less the over-quota drops of candidates that a top-up round took later.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from ..core import schema
from ..core.work import WorkDir
from .funnel import FUNNEL, LLM_PREFIX, Drop, Funnel, llm_calls


@dataclass(frozen=True)
class Tasks:
    """Every task a build ran: recording shards, sample shards (top-ups included), the extra per-sample
    stages that ran, and the sample manifests (``manifest``, ``topup-1``, ...)."""

    shards: list[str]
    sample_shards: list[str]
    stages: tuple[str, ...]
    manifests: list[str]

    def __iter__(self):
        yield "ingest", "recordings"
        yield from ((stage, s) for stage in ("vad", "label", "condense") for s in self.shards)
        yield from (("sample", m) for m in self.manifests)
        yield from ((stage, s) for stage in self.stages for s in self.sample_shards)


def dropped_rows(work: WorkDir, tasks: Tasks) -> pa.Table:
    """Every task's dropped rows, less the over-quota drops of candidates that a top-up round took later."""
    tables = [work.read_dropped(stage, shard) for stage, shard in tasks]
    table = pa.concat_tables(tables) if tables else schema.DROPPED.arrow_schema.empty_table()
    rescued = {sid for m in tasks.manifests[1:] for sid in work.read("sample", m)["segment_id"]}
    if not rescued:
        return table
    stages, sids = table.column("stage").to_pylist(), table.column("segment_id").to_pylist()
    return table.take([i for i, (stage, sid) in enumerate(zip(stages, sids)) if not (stage == "sampling" and sid in rescued)])


def funnel(work: WorkDir, tasks: Tasks, dropped: pa.Table, build_id: str) -> Funnel:
    """Counts summed over every task's stats; the LLM calls also over the tasks this run computed (its
    build id in their stats), with the LLM tasks it skipped because an earlier run had finished them."""
    counts: Counter = Counter()
    this_run: Counter = Counter()
    skipped = 0
    for stage, shard in tasks:
        stats = work.read_stats(stage, shard)
        counts.update(stats["counts"])
        if f"{LLM_PREFIX}requests" in stats["counts"]:
            if stats.get("build_id") == build_id:
                this_run.update(stats["counts"])
            else:
                skipped += 1
    drops = [Drop(**row) for row in dropped.to_pylist()]
    ordered = {stage: counts[stage] for stage in FUNNEL if stage in counts}
    build = llm_calls(counts)
    mine = None
    if build is not None:
        mine = {**llm_calls({f"{LLM_PREFIX}requests": 0, **this_run}), "tasks_skipped": skipped}
    return Funnel(ordered, tuple(drops), build, mine)


def merge_dropped(work: WorkDir, dropped: pa.Table) -> None:
    """``dropped`` in ``OUT/work/dropped/<stage>.parquet``, one file per funnel stage."""
    folder = work.root / "dropped"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    stages = dropped.column("stage").to_pylist()
    for stage in FUNNEL:
        indices = [i for i, s in enumerate(stages) if s == stage]
        if indices:
            pq.write_table(dropped.take(indices), folder / f"{stage}.parquet")
