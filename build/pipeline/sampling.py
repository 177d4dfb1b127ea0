"""The global steps between condensation and transcription (rank 0): balanced sampling and top-ups.

- ``sample``: balanced sampling over every recording shard's candidates; the sample is cut into
  shards ``s00000``, ... of ``runtime.segments_per_shard`` segments (sorted by id), listed in the
  manifest ``work/sample/manifest.parquet``.
- ``topup``: one round of replacements. A primary emotion with fewer delivered segments (at least one
  pair kept) than its quota gets the next never-sampled candidates of its draw order
  (``work/sample/topup-<k>.parquet``, shards ``t<k>s00000``, ...). Over-quota drops of candidates
  taken later are not counted (``build.pipeline.audit``).
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from ..core import schema
from ..core.work import Timer, fingerprint, shard_name
from ..stages import condense
from .columns import SAMPLE_MANIFEST
from .executor import Executor
from .funnel import OVER_QUOTA


def sample_params(ex: Executor) -> dict:
    c = ex.config
    return {"n": c.condense.samples_per_category, "seed": c.condense.seed, "segments_per_shard": c.runtime.segments_per_shard}


def sample_fingerprint(ex: Executor, shards: list[str]) -> str:
    return fingerprint("sample", sample_params(ex), [ex.work.fingerprint_of("condense", s) for s in shards])


def topup_fingerprint(ex: Executor, round_no: int, previous: list[str]) -> str:
    """Chained to the sample and to what the post-filter wrote for the shards of the rounds before."""
    upstream = [ex.work.fingerprint_of("sample", "manifest")]
    upstream += [ex.work.fingerprint_of("postfilter", s) for s in previous]
    return fingerprint("sample", {**sample_params(ex), "topup_round": round_no}, upstream)


def sample(ex: Executor, shards: list[str], fp: str) -> None:
    """Balanced sampling over every shard's candidates; the sample cut into shards sorted by segment id."""
    timer = Timer()
    c = ex.config.condense
    candidates = ex.table("condense", shards, schema.CONDENSED_SEGMENT)
    ids = candidates.column("segment_id").to_pylist()
    primary = candidates.column("primary_emotion").to_pylist()
    kept = condense.balanced_sample(ids, primary, c.samples_per_category, c.seed)
    rids = candidates.column("recording_id").to_pylist()
    dropped = [
        {"stage": "sampling", "recording_id": rid, "segment_id": sid, "reason": OVER_QUOTA}
        for sid, rid in zip(ids, rids)
        if sid not in kept
    ]
    _write_sample(ex, candidates, kept, "s", "manifest", fp, dropped, timer)


def topup(ex: Executor, shards: list[str], sample_shards: list[str], round_no: int, fp: str) -> None:
    """One top-up round: for each primary emotion short of its quota (sampled segments without a
    surviving pair), the next never-sampled candidates of its draw order."""
    timer = Timer()
    c = ex.config.condense
    candidates = ex.table("condense", shards, schema.CONDENSED_SEGMENT)
    ids = candidates.column("segment_id").to_pylist()
    orders = condense.sampling_order(ids, candidates.column("primary_emotion").to_pylist(), c.seed)
    sampled = ex.table("sample", sample_shards, schema.CONDENSED_SEGMENT)
    sampled_ids = sampled.column("segment_id").to_pylist()
    delivered = set(ex.table("postfilter", sample_shards, schema.QA_PAIR).column("segment_id").to_pylist())
    labels = sampled.column("primary_emotion").to_pylist()
    have = Counter(label for sid, label in zip(sampled_ids, labels) if sid in delivered)
    missing = {label: c.samples_per_category - have[label] for label in orders}
    picks = set(condense.topup_picks(orders, set(sampled_ids), missing))
    _write_sample(ex, candidates, picks, f"t{round_no}s", f"topup-{round_no}", fp, [], timer)


def _write_sample(
    ex: Executor, candidates: pa.Table, kept: set[str], prefix: str, name: str, fp: str, dropped: list[dict], timer: Timer
) -> None:
    """The ``kept`` candidates in shards ``<prefix>00000``, ... (sorted by id) and the manifest ``name``."""
    ids = candidates.column("segment_id").to_pylist()
    order = sorted((sid, i) for i, sid in enumerate(ids) if sid in kept)
    size = ex.config.runtime.segments_per_shard
    manifest: dict[str, list] = {"segment_id": [], "shard": [], "start": [], "end": []}
    for n, lo in enumerate(range(0, len(order), size)):
        shard = shard_name(prefix, n)
        indices = [i for _, i in order[lo : lo + size]]
        part = candidates.take(indices)
        stats = {"counts": {}, "rank": ex.ranks.index}
        ex.work.write("sample", shard, fp, part.to_pydict(), schema.CONDENSED_SEGMENT, stats=stats)
        manifest["segment_id"] += part.column("segment_id").to_pylist()
        manifest["shard"] += [shard] * len(indices)
        manifest["start"] += part.column("start").to_pylist()
        manifest["end"] += part.column("end").to_pylist()
    stats = {"counts": {"sampling": len(order)}, "wall_s": timer.seconds, "rank": ex.ranks.index}
    ex.work.write("sample", name, fp, manifest, SAMPLE_MANIFEST, stats=stats, dropped=dropped)


def quota(ex: Executor, shards: list[str], sample_shards: list[str]) -> dict[str, dict[str, int]]:
    """Per primary emotion: the quota asked for, the candidates, the segments sampled (top-ups
    included) and those delivered (with at least one pair after the post-filter)."""
    candidates = Counter(ex.table("condense", shards, schema.CONDENSED_SEGMENT).column("primary_emotion").to_pylist())
    sampled = ex.table("sample", sample_shards, schema.CONDENSED_SEGMENT)
    delivered = set(ex.table("postfilter", sample_shards, schema.QA_PAIR).column("segment_id").to_pylist())
    labels = sampled.column("primary_emotion").to_pylist()
    sampled_n = Counter(labels)
    delivered_n = Counter(label for sid, label in zip(sampled.column("segment_id").to_pylist(), labels) if sid in delivered)
    asked = ex.config.condense.samples_per_category
    return {
        label: {"asked": asked, "candidates": candidates[label], "sampled": sampled_n[label], "delivered": delivered_n[label]}
        for label in sorted(candidates)
    }
