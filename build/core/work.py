"""Work units on disk: shards, task outputs, fingerprints, completion and stats.

The execution model is datatrove's (tasks, a completion marker per task, a stats file per task) on
Parquet files, so that a build survives a crash and spreads over processes:

- A **task** is one stage over one shard: ``OUT/work/<stage>/<shard>.parquet`` holds its output rows,
  ``<shard>.stats.json`` its counts, audio seconds and wall time, ``<shard>.dropped.parquet`` the rows
  it dropped with their reason and detail (``schema.DROPPED``).
- Every file is written under a temporary name and renamed into place; the output Parquet is
  written last and carries the task's **fingerprint** in its schema metadata. A task whose output
  exists with the same fingerprint is complete and is skipped; anything else (no file, another
  fingerprint, a torn write that never got renamed) is computed again.
- A task that starts writes ``<shard>.started.json`` (rank, process, host) and its finished output
  removes it, so a task that was interrupted (a killed process, a lost node, an error) is known on
  the next run: ``mark_started`` returns the earlier start, and the temporary files the
  interrupted writes left are removed.
- A fingerprint hashes the stage name, the stage's code version, the config values the stage reads
  and the fingerprint of its input, so a changed value recomputes the stages it affects and those
  after them, and nothing before.
- **Shards** have deterministic membership: recordings sorted by id, closed after a fixed count or a
  number of audio hours; condensed segments sorted by id, a fixed count per shard. Membership never
  depends on the number of processes, so any number of processes builds the same rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features

from .schema import DROPPED

# Bump a stage's version when its code changes what it writes: its outputs (and those after) are then recomputed.
STAGE_VERSIONS = {"ingest": 2, "vad": 2, "label": 2, "condense": 2, "sample": 2, "asr": 2, "qa": 2, "postfilter": 3, "calibrate": 1, "empathy": 1}
_METADATA_KEY = b"cpqa"


def fingerprint(stage: str, params: dict, upstream: str | Sequence[str] | None = None) -> str:
    """A short stable hash of what a task's output depends on."""
    payload = {"stage": stage, "version": STAGE_VERSIONS[stage], "params": params, "upstream": upstream}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def incomplete(fp: str) -> str:
    """The fingerprint an output is written under when it is usable but not finished (some of its LLM
    calls failed): it never equals the task's own, so the next run redoes the task."""
    return f"{fp}-incomplete"


def interruption(stage: str, shard: str, rank: int, earlier: dict) -> str:
    """The warning for a task that an earlier run started and never finished (``WorkDir.mark_started``)."""
    by = ""
    if {"rank", "pid", "host"} <= earlier.keys():
        by = f" (started by rank {earlier['rank']}, process {earlier['pid']} on {earlier['host']})"
    return f"rank {rank}: {stage} shard {shard} was interrupted in an earlier run{by}; redoing it"


def plan_shards(durations: Sequence[float | None], per_shard: int, hours_per_shard: float | None = None) -> list[list[int]]:
    """Consecutive index ranges over items already sorted by id.

    By count (``per_shard`` items) or, with ``hours_per_shard``, closing a shard once its audio reaches
    that many hours (unknown durations count as 0; a shard never ends empty)."""
    if per_shard < 1:
        raise ValueError(f"a shard holds at least one item, got {per_shard}")
    shards: list[list[int]] = []
    current: list[int] = []
    seconds = 0.0
    for i, duration in enumerate(durations):
        current.append(i)
        seconds += duration or 0.0
        full = seconds >= hours_per_shard * 3600 if hours_per_shard else len(current) >= per_shard
        if full:
            shards.append(current)
            current, seconds = [], 0.0
    if current:
        shards.append(current)
    return shards


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}{index:05d}"


def table_from_columns(columns: dict[str, list], features: Features) -> pa.Table:
    """Columns typed by ``features`` (the column order of ``features``), with the features kept in the
    schema metadata so that ``datasets`` reads them back."""
    table = pa.Table.from_pydict({name: columns[name] for name in features}, schema=features.arrow_schema)
    return table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features.to_dict()}}).encode()})


def atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class WorkDir:
    """The task files of one build under ``OUT/work``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # ---------------------------------------------------------------- paths
    def output(self, stage: str, shard: str) -> Path:
        return self.root / stage / f"{shard}.parquet"

    def stats_path(self, stage: str, shard: str) -> Path:
        return self.root / stage / f"{shard}.stats.json"

    def dropped_path(self, stage: str, shard: str) -> Path:
        return self.root / stage / f"{shard}.dropped.parquet"

    def started_path(self, stage: str, shard: str) -> Path:
        return self.root / stage / f"{shard}.started.json"

    # ---------------------------------------------------------------- interrupted tasks
    def mark_started(self, stage: str, shard: str, rank: int) -> dict | None:
        """Record that ``rank`` starts the task. Returns what an earlier start of it that never finished
        recorded (``{}`` when its record is unreadable), or None when there was none."""
        path = self.started_path(stage, shard)
        try:
            earlier = json.loads(path.read_text())
        except FileNotFoundError:
            earlier = None
        except (OSError, ValueError):
            earlier = {}
        for leftover in path.parent.glob(f".{shard}.*.tmp"):  # writes the interrupted run never renamed
            leftover.unlink(missing_ok=True)
        record = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
        atomic_write(path, lambda p: p.write_text(json.dumps(record) + "\n"))
        return earlier if earlier is None or isinstance(earlier, dict) else {}

    # ---------------------------------------------------------------- completion
    def fingerprint_of(self, stage: str, shard: str) -> str | None:
        """The fingerprint a finished task wrote, or None when there is no readable output."""
        try:
            metadata = pq.read_schema(self.output(stage, shard)).metadata or {}
        except (FileNotFoundError, pa.ArrowInvalid, OSError):
            return None
        entry = metadata.get(_METADATA_KEY)
        return json.loads(entry)["fingerprint"] if entry else None

    def is_done(self, stage: str, shard: str, fp: str) -> bool:
        return self.fingerprint_of(stage, shard) == fp

    # ---------------------------------------------------------------- write
    def write(
        self,
        stage: str,
        shard: str,
        fp: str,
        columns: dict[str, list],
        features: Features,
        *,
        stats: dict,
        dropped: list[dict] = (),
    ) -> None:
        """Write a finished task: dropped rows, then stats, then the output (its completion marker)."""
        dropped_table = table_from_columns({name: [row.get(name) for row in dropped] for name in DROPPED}, DROPPED)
        atomic_write(self.dropped_path(stage, shard), lambda p: pq.write_table(dropped_table, p))
        entry = {"stage": stage, "shard": shard, "fingerprint": fp, **stats}
        atomic_write(self.stats_path(stage, shard), lambda p: p.write_text(json.dumps(entry, indent=1) + "\n"))
        table = table_from_columns(columns, features)
        metadata = {**(table.schema.metadata or {}), _METADATA_KEY: json.dumps({"stage": stage, "shard": shard, "fingerprint": fp}).encode()}
        atomic_write(self.output(stage, shard), lambda p: pq.write_table(table.replace_schema_metadata(metadata), p))
        self.started_path(stage, shard).unlink(missing_ok=True)

    # ---------------------------------------------------------------- read
    def read(self, stage: str, shard: str) -> dict[str, list]:
        return pq.read_table(self.output(stage, shard)).to_pydict()

    def read_table(self, stage: str, shard: str) -> pa.Table:
        return pq.read_table(self.output(stage, shard))

    def read_stats(self, stage: str, shard: str) -> dict:
        return json.loads(self.stats_path(stage, shard).read_text())

    def read_dropped(self, stage: str, shard: str) -> pa.Table:
        return pq.read_table(self.dropped_path(stage, shard))


class Timer:
    """Wall seconds of a task, for its stats file."""

    def __init__(self):
        self.start = time.perf_counter()

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.start, 3)
