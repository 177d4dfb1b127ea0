"""The one loop around every step, in datatrove's manner: this rank's share of a step's shards, each
skipped when its output carries the same fingerprint, else run, then written with its stats and
dropped rows (``build.core.work``), with progress on stderr.

A step's fingerprint chains to the fingerprint its input was *written* under, so an input that was
redone (an LLM shard written "incomplete" and finished on a later run) makes its readers redo too.
Rank r runs tasks r, r + N, ... of every step; the task lists of consecutive steps are in the same
order, so a rank reads only outputs it wrote itself until the next barrier.
"""

from __future__ import annotations

import logging

import pyarrow as pa
from datasets import Features

from ..core.config import Config
from ..core.progress import StageProgress
from ..core.work import Timer, fingerprint, incomplete, interruption
from .columns import pick
from .context import Context
from .funnel import LLM_PREFIX
from .steps import Step

_log = logging.getLogger(__package__)  # "build.pipeline": the log of every step
PLAN = ("ingest", "recordings")  # the work file of the ingest plan (build.pipeline.plan)


class Executor:
    """Runs steps over shards for one rank of one build."""

    def __init__(self, ctx: Context, progress: bool = True):
        self.ctx, self.work, self.ranks, self.progress = ctx, ctx.work, ctx.ranks, progress
        self.build_id = ""  # rank 0's id for this run (``build.pipeline.output``), written in every task's stats
        self.plan: dict[str, list] = {}  # the ingest plan's columns, once read
        self.members: dict[str, list[int]] = {}  # recording shard -> plan rows

    @property
    def config(self) -> Config:
        return self.ctx.config

    def load_plan(self) -> None:
        self.plan = self.work.read(*PLAN)
        self.members = {}
        for i, shard in enumerate(self.plan["shard"]):
            self.members.setdefault(shard, []).append(i)

    def input_fingerprint(self, reads: str, shard: str) -> str | None:
        return self.work.fingerprint_of(*PLAN) if reads == "ingest" else self.work.fingerprint_of(reads, shard)

    def fingerprint(self, step: Step, shard: str) -> str:
        return fingerprint(step.name, step.params(self.config), [self.input_fingerprint(step.reads, shard), shard])

    def read(self, reads: str, shard: str) -> dict[str, list]:
        return pick(self.plan, self.members[shard]) if reads == "ingest" else self.work.read(reads, shard)

    def run(self, step: Step, shards: list[str], audio_s: dict[str, float]) -> None:
        """This rank's share of ``step`` over ``shards`` (``audio_s``: each shard's audio, for progress)."""
        mine = self.ranks.mine(shards)
        total = sum(audio_s[s] for s in mine)
        bar = StageProgress(step.name, len(mine), total, rank=self.ranks.index, world=self.ranks.world, enabled=self.progress)
        with bar:
            for shard in mine:
                fp = self.fingerprint(step, shard)
                if self.work.is_done(step.name, shard, fp):
                    bar.shard_done(audio_s[shard])
                    continue
                before = bar.bar.n
                self._run_task(step, shard, fp, audio_s[shard], bar)
                bar.shard_done(audio_s[shard] - (bar.bar.n - before))

    def _run_task(self, step: Step, shard: str, fp: str, audio_s: float, bar: StageProgress) -> None:
        self.ranks.working(step.name, shard)
        earlier = self.work.mark_started(step.name, shard, self.ranks.index)
        if earlier is not None:  # a killed process, a lost node or an error left it unfinished
            _log.warning(interruption(step.name, shard, self.ranks.index, earlier))
        timer = Timer()
        result = step.run(self.read(step.reads, shard), self.ctx, bar.advance)
        stats = {"counts": result.counts, "audio_s": round(audio_s, 3), "wall_s": timer.seconds, "rank": self.ranks.index}
        stats["build_id"] = self.build_id  # the run that computed it ("LLM calls this run")
        # LLM calls that failed (after their retries) leave the shard unfinished: the next run redoes
        # it, with every successful reply from the cache, so only the failures are sent.
        written = incomplete(fp) if result.counts.get(f"{LLM_PREFIX}failed") else fp
        self.work.write(step.name, shard, written, result.columns, result.features, stats=stats, dropped=result.dropped)

    def table(self, stage: str, shards: list[str], features: Features) -> pa.Table:
        """Every shard's output of ``stage`` as one table typed by ``features``."""
        tables = [self.work.read_table(stage, s).cast(features.arrow_schema) for s in shards]
        return pa.concat_tables(tables) if tables else features.arrow_schema.empty_table()
