"""The ingest step (global, rank 0): list and probe every recording, sort by id, cut into shards.

Writes ``OUT/work/ingest/recordings.parquet`` (``schema.PLANNED_RECORDING``). A recording refused at
ingest (``build.sources.ingest`` reasons) keeps its row with ``error`` set, so later steps skip it; a
duplicate (same sha256 as a recording earlier by id) too. The plan is redone when the listing (ids,
paths, sizes, modification times) or the shard settings change.
"""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from ..core import schema
from ..core.work import Timer, fingerprint, plan_shards, shard_name
from ..sources import ingest
from .executor import PLAN, Executor


def make_plan(ex: Executor, source: str | Path, allow_outside_root: bool = False) -> None:
    rt = ex.config.runtime
    listed = ingest.list_recordings(source, cache_dir=ex.work.root / "cache", allow_outside_root=allow_outside_root)
    order = sorted(range(len(listed)), key=lambda i: listed["recording_id"][i])
    ids = [listed["recording_id"][i] for i in order]
    paths = [listed["audio_path"][i] for i in order]
    refused = [listed["error"][i] for i in order]
    listing = [(rid, path, *_file_stamp(path)) for rid, path in zip(ids, paths)]
    settings = {"source": str(source), "recordings_per_shard": rt.recordings_per_shard}
    settings |= {"hours_per_shard": rt.hours_per_shard, "allow_outside_root": allow_outside_root}
    fp = fingerprint("ingest", settings, listing)
    if ex.work.is_done(*PLAN, fp):
        return
    timer = Timer()
    probed = _probe(paths, refused, ex.progress)
    durations = [p["duration"] for p in probed]
    errors = [p["error"] for p in probed]
    reasons = [p["drop_reason"] for p in probed]
    hashes = [p["sha256"] for p in probed]
    for i, duplicate in enumerate(ingest.mark_duplicates(ids, paths, hashes)):
        if duplicate is not None:
            errors[i], reasons[i], durations[i] = duplicate, ingest.DUPLICATE, None
    shard_of = [""] * len(ids)
    for index, members in enumerate(plan_shards(durations, rt.recordings_per_shard, rt.hours_per_shard)):
        for i in members:
            shard_of[i] = shard_name("r", index)
    columns = {"recording_id": ids, "audio_path": paths, "duration": durations}
    columns |= {"error": errors, "sha256": hashes, "shard": shard_of}
    dropped = [
        {"stage": "ingest", "recording_id": rid, "reason": r, "detail": e}
        for rid, r, e in zip(ids, reasons, errors)
        if e is not None
    ]
    audio_s = round(sum(d or 0.0 for d in durations), 3)
    stats = {"counts": {"ingest": len(ids)}, "audio_s": audio_s, "wall_s": timer.seconds, "rank": ex.ranks.index}
    ex.work.write(*PLAN, fp, columns, schema.PLANNED_RECORDING, stats=stats, dropped=dropped)


def _probe(paths: list[str], refused: list[str | None], progress: bool) -> list[dict]:
    """Duration, sha256 and refusal of every file, 8 at a time (I/O bound)."""
    with tqdm(total=len(paths), desc="ingest     probing", unit=" files", disable=not progress, file=sys.stderr) as bar:

        def probe(item):
            result = ingest.probe_recordings({"audio_path": [item[0]], "error": [item[1]]})
            bar.update()
            return {name: values[0] for name, values in result.items()}

        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(probe, zip(paths, refused)))


def _file_stamp(path: str) -> tuple:
    """Size and modification time of a local file (a changed file is a new input); () for references."""
    try:
        stat = Path(path).stat()
        return (stat.st_size, stat.st_mtime_ns)
    except (OSError, ValueError):
        return ()
