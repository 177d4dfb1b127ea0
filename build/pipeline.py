"""The one orchestrator: the only module that knows the stage order. The CLI and the benchmarks call it.

    ingest (global)  recordings sorted by id, probed, split into shards r00000, r00001, ...
    vad              per recording shard: silero-vad speech regions
    label            per recording shard: segments, length filter, windows, emotion2vec+ ensemble,
                     MSP-Podcast dimensions, gender (build.label: each segment decoded once)
    condense         per recording shard: X_E per window, X_O per segment (Algorithm 1)
    sample (global)  balanced sampling over every shard's candidates; the sample is cut again into
                     shards s00000, s00001, ... of ``runtime.segments_per_shard`` segments
    asr              per sample shard: WhisperX transcript and word times
    qa               per sample shard: word labels, LLM-written pairs (replies cached by request hash)
    postfilter       per sample shard: drops and categories of the pairs
    top-up (global)  up to ``condense.topup_rounds`` rounds: a primary emotion with fewer delivered
                     segments (at least one pair kept) than its quota gets the next never-sampled
                     candidates of its draw order (``work/sample/topup-<k>.parquet``, shards
                     t<k>s00000, ...), which go through asr, qa and postfilter in turn; a round that
                     picks nothing ends them. Over-quota drops of candidates taken later are not counted.
    empathy          per sample shard: word labels, one empathetic-response sample per clip (build.empathy)
    export (global)  Parquet + dataset card, report.json, recordings.jsonl, work/dropped/<stage>.parquet

Every task is a file under ``OUT/work`` (``build.work``): rerunning the same command after a crash
skips every task whose output carries the same fingerprint, and the LLM cache answers every request
that had completed, so nothing is recomputed or sent twice. ``accelerate launch`` runs the same
``build`` on N processes (``build.ranks``): rank r takes every N-th task of each per-shard stage, and
rank 0 runs the global steps after a barrier.

The funnel counts what is left after each step (``FUNNEL``, keyed by stage id) and every drop by
stage and reason; every input recording ends ``kept``, ``dropped`` (stage and reason), ``failed``
(stage and error) or ``duplicate`` (of which recording) in the ledger.

``outputs`` chooses what a build writes: ``qa`` or ``qa,empathy`` (the default). The empathy stage runs
after the top-up rounds over every sample shard and shares ASR and the LLM endpoint with QA (QA is
always built: its deliveries decide the top-ups). A recording is kept when either output holds a row
of it; a recording in neither is reported at the QA stages (its empathy drops are counted in the
funnel and kept in ``work/dropped/empathy.parquet``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, DatasetInfo, Features
from tqdm.auto import tqdm

from . import align, categories, condense, empathy, export, ingest, label, postfilter, preflight, prompting, publish, qa, schema, segment, words
from .config import Config
from .llm import CallStats, stats_delta, summary_line
from .progress import StageProgress
from .ranks import Ranks, current, reports_failures
from .work import Timer, WorkDir, atomic_write, fingerprint, incomplete, interruption, plan_shards, shard_name

_log = logging.getLogger(__name__)

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
STOP_AFTER = ("condense",)
OUTPUTS = ("qa", "empathy")

# drop reasons decided here (the stage modules' own reasons travel through their columns)
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
        pattern = "".join(".+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^}]*\})", known))
        if re.fullmatch(pattern, reason):
            return True
    return False


# ---------------------------------------------------------------- funnel, ledger, result
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
        return _ledger(self.recording_ids, self.funnel, {rid for d in finals for rid in d["recording_id"]})

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
            report["empathy_strategies"] = dict(Counter(r["response_strategy"] for r in self.empathy["desired_response"]))
        if self.funnel.llm is not None:
            report["llm_calls"] = self.funnel.llm_run
            report["llm_calls_build"] = self.funnel.llm
        if self.quota is not None:
            report["quota"] = self.quota
        return report


def _ledger(recording_ids: list[str], funnel: Funnel, kept: set[str]) -> list[dict]:
    """One entry per input recording: kept, failed (stage, error), dropped (stage, reasons) or
    duplicate (the same bytes as another recording, named in ``reason``)."""
    by_recording: dict[str, list[Drop]] = {}
    for d in funnel.drops:
        if d.stage in STAGES:
            by_recording.setdefault(d.recording_id, []).append(d)
    ledger = []
    for rid in recording_ids:
        entry = {"recording_id": rid, "status": "kept", "stage": None, "reason": None}
        drops = by_recording.get(rid, [])
        if rid not in kept and drops:
            # The recording got as far as its furthest segment: report the drops at that stage.
            last = max(STAGES.index(d.stage) for d in drops)
            at_last = [d for d in drops if STAGES.index(d.stage) == last]
            if at_last[0].reason == ingest.DUPLICATE:  # processed once, under the other id
                entry.update(status="duplicate", stage="ingest", reason=at_last[0].detail)
            elif all(d.detail for d in at_last):  # every one of them failed with an error
                entry.update(status="failed", stage=STAGES[last], reason=at_last[0].detail)
            else:
                reasons = Counter(d.reason for d in at_last)
                entry.update(status="dropped", stage=STAGES[last], reason="; ".join(f"{r} (x{n})" if n > 1 else r for r, n in sorted(reasons.items())))
        elif rid not in kept:
            entry.update(status="dropped", stage="segments", reason="no segment")
        ledger.append(entry)
    return ledger


def format_report(result: BuildResult) -> str:
    """The funnel as printed at the end of a build: counts, the drops under the step that made them, the ledger's exceptions."""
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
    if report["primary_emotions"]:
        lines.append("primary emotions: " + ", ".join(f"{k} {v}" for k, v in sorted(report["primary_emotions"].items())))
    if report.get("quota"):
        lines.append("quota per primary emotion (delivered/asked): " + ", ".join(f"{k} {v['delivered']}/{v['asked']}" for k, v in report["quota"].items()))
    if report.get("categories"):
        lines.append("QA categories: " + ", ".join(f"{k} {v}" for k, v in sorted(report["categories"].items())))
    if report.get("empathy_strategies"):
        lines.append("empathy strategies: " + ", ".join(f"{k} {v}" for k, v in sorted(report["empathy_strategies"].items())))
    if report.get("llm_calls"):
        lines += llm_lines(report["llm_calls"], report["llm_calls_build"])
    return "\n".join(lines)


def llm_lines(this_run: dict, build: dict) -> list[str]:
    """What this run asked of the LLM (skipped tasks sent nothing), then, when it skipped any, the totals
    of every task of the build, whichever run did it."""
    skipped = this_run["tasks_skipped"]
    tasks = f"{skipped} task{'s' * (skipped != 1)} skipped as finished"
    lines = [f"LLM calls this run: {summary_line(this_run)}; {tasks}"]
    if skipped:
        lines.append(f"LLM calls, build total (every run): {summary_line(build)}")
    return lines


# ---------------------------------------------------------------- helpers over column dicts
def _rows(columns: dict[str, list]) -> list[dict]:
    return [dict(zip(columns, values)) for values in zip(*columns.values())] if columns else []


def _columns(rows: list[dict], features: Features) -> dict[str, list]:
    return {name: [row.get(name) for row in rows] for name in features}


def _batches(columns: dict[str, list], size: int) -> Iterator[dict[str, list]]:
    n = len(next(iter(columns.values()))) if columns else 0
    for lo in range(0, n, max(1, size)):
        yield {name: values[lo : lo + size] for name, values in columns.items()}


def _split(stage: str, columns: dict[str, list], reasons: list[str | None], details: list | None = None) -> tuple[list[int], list[dict]]:
    """The rows to keep (no reason), and a dropped row (``schema.DROPPED``) for each of the others."""
    keep, dropped = [], []
    for i, reason in enumerate(reasons):
        if reason is None:
            keep.append(i)
            continue
        row = {"stage": stage, "recording_id": columns["recording_id"][i], "segment_id": columns["segment_id"][i], "reason": reason}
        row["detail"] = details[i] if details else None
        if "pair_index" in columns:
            row["pair_index"] = columns["pair_index"][i]
        dropped.append(row)
    return keep, dropped


def _map_with_progress(columns: dict[str, list], fn, size: int, bar: StageProgress, *args, **kwargs) -> dict[str, list]:
    """A stage's batched function over ``columns`` in batches of ``size``; each batch's audio seconds go to ``bar``."""
    out: dict[str, list] = {}
    for batch in _batches(columns, size):
        for name, values in fn(batch, *args, **kwargs).items():
            out.setdefault(name, []).extend(values)
        bar.advance(sum(e - s for s, e in zip(batch["start"], batch["end"])))
    return out


def _dataset(table: pa.Table, features: Features) -> Dataset:
    return Dataset(table.cast(features.arrow_schema), info=DatasetInfo(features=features))


def _features(*parts: Features, without: tuple[str, ...] = ()) -> Features:
    merged: dict = {}
    for part in parts:
        merged.update(part)
    return Features({k: v for k, v in merged.items() if k not in without})


ASR_SEGMENT = _features(schema.CONDENSED_SEGMENT, schema.ASR_OUTPUT, without=("asr_error",))
QA_SEGMENT = _features(ASR_SEGMENT, schema.WORDS_OUTPUT, schema.QA_OUTPUT, without=("qa_error",))
VAD_RECORDING = _features(schema.PLANNED_RECORDING, schema.VAD_OUTPUT)


# ---------------------------------------------------------------- fingerprints
def stage_params(config: Config) -> dict[str, dict]:
    """The config values each stage reads (what its fingerprint hashes; devices and batch sizes are not results)."""
    from .llm_server import resolve_endpoint

    c = config
    qa_model = resolve_endpoint(c.qa)[1]
    return {
        # block_s changes how a recording is read, not the regions (silero's state runs across blocks)
        "vad": {"vad": {k: v for k, v in dataclasses.asdict(c.vad).items() if k not in ("merge_gap_s", "block_s")}, "sample_rate": c.sample_rate},
        "label": {
            "merge_gap_s": c.vad.merge_gap_s,
            "min_segment_s": c.min_segment_s,
            "max_segment_s": c.max_segment_s,
            "emotion_window": dataclasses.asdict(c.emotion_window),
            "gender_window": dataclasses.asdict(c.gender_window),
            "models": dataclasses.asdict(c.models),
            "precision": c.runtime.precision,
        },
        "condense": {"x": c.condense.x, "y": c.condense.y, "alpha": c.condense.alpha},
        "sample": {"n": c.condense.samples_per_category, "seed": c.condense.seed, "segments_per_shard": c.runtime.segments_per_shard},
        "asr": {k: v for k, v in dataclasses.asdict(c.asr).items() if k != "batch_size"},
        "qa": {
            "model": qa_model,  # the model that answers (the embedded one when no endpoint is set)
            "prompt_version": c.qa.prompt_version,
            "word_timing": c.qa.word_timing,
            "pairs_per_segment": c.qa.pairs_per_segment,
            "temperature": c.qa.temperature,
            "max_tokens": c.qa.max_tokens,
            "structured_output": c.qa.structured_output,
            "language": c.qa.language,
        },
        "postfilter": {**dataclasses.asdict(c.postfilter), "pairs_per_segment": c.qa.pairs_per_segment, "categoriser_model": categories.llm_model(c.postfilter.categoriser, c.qa)},
        "empathy": {
            **dataclasses.asdict(c.empathy),
            "model": qa_model,
            "prompt_version": empathy.PROMPT_VERSION,
            "demos": empathy.DEMOS_FILE.read_text(),
        },
    }


# ---------------------------------------------------------------- the build
@dataclass
class _Run:
    config: Config
    work: WorkDir
    ranks: Ranks
    progress: bool
    build_id: str = ""  # rank 0's id for this run (``BUILD_ID_FILE``), written in every task's stats

    def stage(self, stage: str, tasks: list[tuple[str, str, float]], compute: Callable[[str, StageProgress], tuple]) -> None:
        """Run this rank's share of ``tasks`` (shard, fingerprint, audio seconds); finished ones are skipped.

        ``compute(shard, progress)`` returns ``(columns, features, counts, dropped)``."""
        mine = self.ranks.mine(tasks)
        with StageProgress(stage, len(mine), sum(t[2] for t in mine), rank=self.ranks.index, world=self.ranks.world, enabled=self.progress) as bar:
            for shard, fp, audio_s in mine:
                if self.work.is_done(stage, shard, fp):
                    bar.shard_done(audio_s)
                    continue
                self.ranks.working(stage, shard)
                earlier = self.work.mark_started(stage, shard, self.ranks.index)
                if earlier is not None:  # a killed process, a lost node or an error left it unfinished
                    _log.warning(interruption(stage, shard, self.ranks.index, earlier))
                before = bar.bar.n
                timer = Timer()
                columns, features, counts, dropped = compute(shard, bar)
                stats = {"counts": counts, "audio_s": round(audio_s, 3), "wall_s": timer.seconds, "rank": self.ranks.index}
                stats["build_id"] = self.build_id  # the run that computed it ("LLM calls this run")
                # LLM calls that failed (after their retries) leave the shard unfinished: the next run
                # redoes it, with every successful reply from the cache, so only the failures are sent.
                written = incomplete(fp) if counts.get(f"{_LLM}failed") else fp
                self.work.write(stage, shard, written, columns, features, stats=stats, dropped=dropped)
                bar.shard_done(audio_s - (bar.bar.n - before))

    def table(self, stage: str, shards: list[str], features: Features) -> pa.Table:
        tables = [self.work.read_table(stage, s).cast(features.arrow_schema) for s in shards]
        return pa.concat_tables(tables) if tables else features.arrow_schema.empty_table()


@reports_failures
def build(
    source: str | Path,
    config: Config,
    out_dir: str | Path,
    *,
    stop_after: str | None = None,
    outputs: tuple[str, ...] = OUTPUTS,
    license: str = "other",
    sources: str | None = None,
    card_template: str | None = None,
    progress: bool = True,
    say: Callable[[str], None] = print,
    ranks: Ranks | None = None,
    allow_outside_root: bool = False,
) -> BuildResult | None:
    """Build (or resume) the dataset of ``source`` into ``out_dir``.

    Returns the result on rank 0 (None on the others): ``status`` says how far it got. ``say`` receives
    the lines meant for the user (the embedded server starting); progress bars go to stderr.
    ``allow_outside_root``: read manifest rows whose file lies outside the manifest's folder."""
    if stop_after not in (None, *STOP_AFTER):
        raise ValueError(f"stop_after must be one of {STOP_AFTER}, got {stop_after!r}")
    if "qa" not in outputs or any(o not in OUTPUTS for o in outputs):
        # QA is always built: its deliveries decide the top-up rounds that both outputs draw from
        raise ValueError(f"outputs must be qa or qa,empathy, got {','.join(outputs) or 'none'}")
    out_dir = Path(out_dir)
    ranks = (ranks or current(config.runtime.barrier_timeout_s)).reporting(out_dir / "work" / "ranks")
    # ---- preflight (config, output, models, endpoint) on every rank, so none waits at a barrier for
    # a rank 0 that stopped; then ingest: one plan for every process
    preflight.check_build(config, out_dir, stop_after=stop_after)
    run = _Run(config, WorkDir(out_dir / "work"), ranks, progress)
    params = stage_params(config)
    if ranks.is_main:
        new_build_id(run.work)
        _plan(run, source, allow_outside_root)
    ranks.barrier()
    run.build_id = read_build_id(run.work)
    plan = run.work.read("ingest", "recordings")
    recording_ids = plan["recording_id"]
    shards = sorted(set(plan["shard"]))
    members = {s: [i for i, shard in enumerate(plan["shard"]) if shard == s] for s in shards}
    audio = {s: sum(plan["duration"][i] or 0.0 for i in members[s]) for s in shards}
    fps = {"ingest": run.work.fingerprint_of("ingest", "recordings")}
    for stage, upstream in (("vad", "ingest"), ("label", "vad"), ("condense", "label")):
        fps[stage] = {
            s: fingerprint(stage, params[stage], [fps[upstream] if upstream == "ingest" else fps[upstream][s], s, [recording_ids[i] for i in members[s]]])
            for s in shards
        }

    # ---- per recording shard: vad, label, condense
    run.stage("vad", [(s, fps["vad"][s], audio[s]) for s in shards], lambda s, bar: _vad(_pick(plan, members[s]), config, bar))
    run.stage("label", [(s, fps["label"][s], audio[s]) for s in shards], lambda s, bar: _label(run.work.read("vad", s), config, ranks, bar))
    run.stage("condense", [(s, fps["condense"][s], audio[s]) for s in shards], lambda s, bar: _condense(run.work.read("label", s), config))
    ranks.barrier()

    # ---- balanced sampling over every shard
    fps["sample"] = fingerprint("sample", params["sample"], [fps["condense"][s] for s in shards])
    if ranks.is_main and not run.work.is_done("sample", "manifest", fps["sample"]):
        _sample(run, shards, fps["sample"])
    ranks.barrier()
    manifests = ["manifest"]  # then "topup-1", "topup-2", ... (rounds of replacements)
    manifest = run.work.read("sample", "manifest")
    sample_shards = sorted(set(manifest["shard"]))

    def finish(segments: Dataset, pairs: Dataset | None, status: str, extra_stages: tuple[str, ...]) -> BuildResult:
        """Rank 0 only: the funnel and ledger from every task's files, the audit files merged."""
        funnel = _funnel(run, shards, sample_shards, extra_stages, manifests)
        quota = _quota(run, shards, sample_shards, config) if extra_stages else None
        result = BuildResult(
            recording_ids, funnel, segments, pairs, status, out_dir, quota, build_id=run.build_id
        )
        _merge_dropped(run, shards, sample_shards, extra_stages, manifests)
        return result

    if stop_after == "condense" or not sample_shards:
        if not ranks.is_main:
            return None
        segments = _dataset(run.table("sample", sample_shards, schema.CONDENSED_SEGMENT), schema.CONDENSED_SEGMENT)
        save_condensed(segments, out_dir / "condensed")
        result = finish(segments, None, "condensed" if sample_shards else "nothing condensed", ())
        _no_export(out_dir, say)
        write_report(result, out_dir)
        return result

    # ---- per sample shard: asr, qa, postfilter; then top-up rounds for segments lost on the way
    def postfilter_fp(shard: str) -> str:
        # chained to what qa wrote (finished or not), so a qa shard redone for its failed calls is filtered again
        return fingerprint("postfilter", params["postfilter"], [run.work.fingerprint_of("qa", shard), shard])

    def after_sampling(round_shards: list[str], round_manifest: dict[str, list], upstream: str) -> list[str]:
        """ASR, QA and the post-filter over one round's sample shards; returns the post-filter fingerprints."""
        seg_audio = Counter()
        for shard, start, end in zip(round_manifest["shard"], round_manifest["start"], round_manifest["end"]):
            seg_audio[shard] += end - start
        for stage, before in (("asr", "sample"), ("qa", "asr")):
            fps[stage] = {**fps.get(stage, {}), **{s: fingerprint(stage, params[stage], [upstream if before == "sample" else fps[before][s], s]) for s in round_shards}}
        tasks = {stage: [(s, fps[stage][s], seg_audio[s]) for s in round_shards] for stage in ("asr", "qa")}
        run.stage("asr", tasks["asr"], lambda s, bar: _asr(run.work.read("sample", s), config, ranks, bar))
        pending_qa = [t for t in ranks.mine(tasks["qa"]) if not run.work.is_done("qa", t[0], t[1])]
        with _llm_endpoint(config, needed=bool(pending_qa), say=say) as (base_url, qa_config):
            cache_dir = str(run.work.root / "llm-cache")
            run.stage("qa", tasks["qa"], lambda s, bar: _qa(run.work.read("asr", s), qa_config, base_url, cache_dir, bar))
        categoriser = categories.client_for(config.postfilter.categoriser, config.qa, str(run.work.root / "llm-cache"))
        tasks["postfilter"] = [(s, postfilter_fp(s), seg_audio[s]) for s in round_shards]  # this rank's qa shards are written
        run.stage("postfilter", tasks["postfilter"], lambda s, bar: _postfilter(run.work.read("qa", s), config, ranks, categoriser))
        ranks.barrier()
        return [postfilter_fp(s) for s in round_shards]  # after the barrier: every rank's qa shards are written

    upstream = after_sampling(sample_shards, manifest, fps["sample"])
    for round_no in range(1, config.condense.topup_rounds + 1):
        name = f"topup-{round_no}"
        fp = fingerprint("sample", {**params["sample"], "topup_round": round_no}, [fps["sample"], *upstream])
        if ranks.is_main and not run.work.is_done("sample", name, fp):
            _topup(run, shards, sample_shards, name, round_no, fp)
        ranks.barrier()
        manifests.append(name)
        round_manifest = run.work.read("sample", name)
        round_shards = sorted(set(round_manifest["shard"]))
        if not round_shards:
            break
        upstream = after_sampling(round_shards, round_manifest, fp)
        sample_shards = sample_shards + round_shards
    if "empathy" in outputs:  # over every sample shard, top-ups included: one sample per transcribed clip
        _empathy_stage(run, sample_shards, fps["asr"], params, say)
    if not ranks.is_main:
        return None

    pairs = _dataset(run.table("postfilter", sample_shards, schema.QA_PAIR), schema.QA_PAIR)
    segments = _dataset(run.table("qa", sample_shards, QA_SEGMENT), QA_SEGMENT)
    with_pairs = set(pairs["segment_id"])
    segments = segments.select([i for i, sid in enumerate(segments["segment_id"]) if sid in with_pairs])
    stages = ("asr", "qa", "postfilter", *(("empathy",) if "empathy" in outputs else ()))
    samples = _dataset(run.table("empathy", sample_shards, schema.EMPATHY_SAMPLE), schema.EMPATHY_SAMPLE) if "empathy" in outputs else None
    if len(pairs) == 0:  # nothing is exported, so no recording is kept (empathy samples included)
        result = finish(segments, pairs, "no pairs", stages)
        _no_export(out_dir, say)
        write_report(result, out_dir)
        return result
    result = dataclasses.replace(finish(segments, pairs, "built", stages), empathy=samples)
    licences = publish.row_licences(source, result.segments["audio_path"], license, allow_outside_root)
    hashes = {path: digest for path, digest in zip(plan["audio_path"], plan["sha256"]) if digest}  # hashed once, at ingest
    export_dataset(
        result, config, out_dir, license=license, licences=licences, source_hashes=hashes, card_template=card_template,
        sources=sources or f"Recordings supplied by whoever built this dataset ({len(recording_ids)} files); their licences apply.",
    )  # fmt: skip
    return result


def _empathy_stage(run: _Run, sample_shards: list[str], asr_fps: dict[str, str], params: dict, say: Callable[[str], None]) -> None:
    """The empathy task of every sample shard, chained to its ASR output; a barrier after it."""
    audio = {s: sum(e - b for b, e in zip(*run.work.read_table("sample", s).select(["start", "end"]).to_pydict().values())) for s in sample_shards}
    tasks = [(s, fingerprint("empathy", params["empathy"], [asr_fps[s], s]), audio[s]) for s in sample_shards]
    pending = [t for t in run.ranks.mine(tasks) if not run.work.is_done("empathy", t[0], t[1])]
    with _llm_endpoint(run.config, needed=bool(pending), say=say) as (base_url, qa_config):
        cache_dir = str(run.work.root / "llm-cache")
        run.stage("empathy", tasks, lambda s, bar: _empathy(run.work.read("asr", s), run.config.empathy, qa_config, base_url, cache_dir, bar))
    run.ranks.barrier()


def _pick(columns: dict[str, list], indices: list[int]) -> dict[str, list]:
    return {name: [values[i] for i in indices] for name, values in columns.items()}


# ---------------------------------------------------------------- ingest (global)
def _plan(run: _Run, source: str | Path, allow_outside_root: bool = False) -> None:
    """List and probe every recording, sort by id, cut into shards (``OUT/work/ingest/recordings.parquet``).

    A recording refused at ingest (``build.ingest`` reasons) keeps its row with ``error`` set, so
    later stages skip it; a duplicate (same sha256 as a recording earlier by id) too."""
    rt = run.config.runtime
    listed = ingest.list_recordings(source, cache_dir=run.work.root / "cache", allow_outside_root=allow_outside_root)
    order = sorted(range(len(listed)), key=lambda i: listed["recording_id"][i])
    ids = [listed["recording_id"][i] for i in order]
    paths = [listed["audio_path"][i] for i in order]
    refused = [listed["error"][i] for i in order]
    listing = [(rid, path, *_file_stamp(path)) for rid, path in zip(ids, paths)]
    fp = fingerprint("ingest", {"source": str(source), "recordings_per_shard": rt.recordings_per_shard, "hours_per_shard": rt.hours_per_shard, "allow_outside_root": allow_outside_root}, listing)
    if run.work.is_done("ingest", "recordings", fp):
        return
    timer = Timer()
    with tqdm(total=len(paths), desc="ingest     probing", unit=" files", disable=not run.progress, file=sys.stderr) as bar:

        def probe(item):
            result = ingest.probe_recordings({"audio_path": [item[0]], "error": [item[1]]})
            bar.update()
            return {name: values[0] for name, values in result.items()}

        with ThreadPoolExecutor(max_workers=8) as pool:
            probed = list(pool.map(probe, zip(paths, refused)))
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
    columns = {"recording_id": ids, "audio_path": paths, "duration": durations, "error": errors, "sha256": hashes, "shard": shard_of}
    dropped = [{"stage": "ingest", "recording_id": rid, "reason": r, "detail": e} for rid, r, e in zip(ids, reasons, errors) if e is not None]
    stats = {"counts": {"ingest": len(ids)}, "audio_s": round(sum(d or 0.0 for d in durations), 3), "wall_s": timer.seconds, "rank": run.ranks.index}
    run.work.write("ingest", "recordings", fp, columns, schema.PLANNED_RECORDING, stats=stats, dropped=dropped)


def _file_stamp(path: str) -> tuple:
    """Size and modification time of a local file (a changed file is a new input); () for references."""
    try:
        stat = Path(path).stat()
        return (stat.st_size, stat.st_mtime_ns)
    except (OSError, ValueError):
        return ()


# ---------------------------------------------------------------- per recording shard
def _vad(rows: dict[str, list], config: Config, bar: StageProgress):
    vad = config.vad
    kwargs = dict(threshold=vad.threshold, min_speech_ms=vad.min_speech_ms, min_silence_ms=vad.min_silence_ms, speech_pad_ms=vad.speech_pad_ms, block_s=vad.block_s)
    out: dict[str, list] = {"speech": [], "vad_error": []}
    dropped = []
    for row in _rows(rows):
        result = segment.detect_speech({"audio_path": [row["audio_path"]], "error": [row["error"]]}, **kwargs)
        out["speech"] += result["speech"]
        out["vad_error"] += result["vad_error"]
        bar.advance(row["duration"] or 0.0)
        if row["error"] is not None:
            continue  # the ingest step recorded it
        if result["vad_error"][0] is not None:
            dropped.append({"stage": "vad", "recording_id": row["recording_id"], "reason": segment.vad_drop_reason(result["vad_error"][0]), "detail": result["vad_error"][0]})
        elif not result["speech"][0]:
            dropped.append({"stage": "vad", "recording_id": row["recording_id"], "reason": NO_SPEECH})
    columns = {**rows, **out}
    counts = {"vad": sum(1 for s in out["speech"] if s)}
    return columns, VAD_RECORDING, counts, dropped


def _label(recordings: dict[str, list], config: Config, ranks: Ranks, bar: StageProgress):
    vad = config.vad
    segments = segment.explode_segments(recordings, merge_gap_s=vad.merge_gap_s, max_segment_s=config.max_segment_s)
    n_segments = len(segments["segment_id"])
    reasons = [segment.length_drop_reason(start, end, config.min_segment_s, config.max_segment_s) for start, end in zip(segments["start"], segments["end"])]
    keep, dropped = _split("length", segments, reasons)
    segments = _pick(segments, keep)
    rt = config.runtime
    labels = label.label_segments(
        segments,
        emotion_window=dataclasses.asdict(config.emotion_window),
        gender_window=dataclasses.asdict(config.gender_window),
        emotion_models=list(config.models.emotion),
        dimension_model=config.models.dimension,
        gender_model=config.models.gender,
        device=rt.device,
        rank=ranks.local,
        batch_size=rt.batch_size,
        loader_workers=rt.loader_workers,
        precision=rt.precision,
        on_segment_done=bar.advance,
    ) if keep else {name: [] for name in schema.LABEL_OUTPUT}
    errors = labels["label_error"]
    labelled, label_dropped = _split("label", segments, [LABELLING_FAILED if e else None for e in errors], errors)
    dropped += label_dropped
    columns = _pick({**segments, **labels}, labelled)
    counts = {"segments": n_segments, "length": len(keep), "label": len(labelled)}
    return columns, schema.LABELLED_SEGMENT, counts, dropped


def _condense(segments: dict[str, list], config: Config):
    """X_E on every window, X_O on every segment; the gender majority."""
    c = config.condense
    rows = _rows(segments)
    windows = [w for row in rows for w in row["emotion_windows"]]
    marks = condense.mark_consistency({"emotion": [w["emotion"] for w in windows], "valence": [w["valence"] for w in windows]}, x=c.x, y=c.y)
    marked = iter(zip(marks["consistent"], marks["condensed_emotion"]))
    out, dropped = [], []
    for row in rows:
        emotion_windows = []
        for w in row["emotion_windows"]:
            consistent, condensed = next(marked)
            emotion_windows.append({**w, "emotion": condensed, "raw_emotion": w["emotion"], "consistent": consistent})
        occurrence = condense.count_occurrences({"emotion_windows": [emotion_windows]}, alpha=c.alpha)
        if occurrence["drop_reason"][0] is not None:
            dropped.append({"stage": "occurrence", "recording_id": row["recording_id"], "segment_id": row["segment_id"], "reason": occurrence["drop_reason"][0]})
            continue
        out.append(
            {
                **{k: row[k] for k in schema.SEGMENT},
                "emotion_windows": emotion_windows,
                "gender_windows": row["gender_windows"],
                "emotion_counts": occurrence["emotion_counts"][0],
                "emotions": occurrence["emotions"][0],
                "primary_emotion": occurrence["primary_emotion"][0],
                "gender": condense.majority_gender(row["gender_windows"]),
            }
        )
    return _columns(out, schema.CONDENSED_SEGMENT), schema.CONDENSED_SEGMENT, {"occurrence": len(out)}, dropped


# ---------------------------------------------------------------- sampling (global)
def _sample(run: _Run, shards: list[str], fp: str) -> None:
    """Balanced sampling over every shard's candidates; the sample cut into shards sorted by segment id."""
    timer = Timer()
    candidates = run.table("condense", shards, schema.CONDENSED_SEGMENT)
    ids = candidates.column("segment_id").to_pylist()
    kept = condense.balanced_sample(ids, candidates.column("primary_emotion").to_pylist(), run.config.condense.samples_per_category, run.config.condense.seed)
    rids = candidates.column("recording_id").to_pylist()
    dropped = [{"stage": "sampling", "recording_id": rid, "segment_id": sid, "reason": OVER_QUOTA} for sid, rid in zip(ids, rids) if sid not in kept]
    _write_sample(run, candidates, kept, "s", "manifest", fp, dropped, timer)


def _topup(run: _Run, shards: list[str], sample_shards: list[str], name: str, round_no: int, fp: str) -> None:
    """One top-up round: for each primary emotion short of its quota (sampled segments without a surviving
    pair), the next never-sampled candidates of its draw order, in shards ``t<round>s00000``, ..."""
    timer = Timer()
    c = run.config.condense
    candidates = run.table("condense", shards, schema.CONDENSED_SEGMENT)
    orders = condense.sampling_order(candidates.column("segment_id").to_pylist(), candidates.column("primary_emotion").to_pylist(), c.seed)
    sampled = run.table("sample", sample_shards, schema.CONDENSED_SEGMENT)
    delivered = set(run.table("postfilter", sample_shards, schema.QA_PAIR).column("segment_id").to_pylist())
    have = Counter(label for sid, label in zip(sampled.column("segment_id").to_pylist(), sampled.column("primary_emotion").to_pylist()) if sid in delivered)
    missing = {label: c.samples_per_category - have[label] for label in orders}
    picks = set(condense.topup_picks(orders, set(sampled.column("segment_id").to_pylist()), missing))
    _write_sample(run, candidates, picks, f"t{round_no}s", name, fp, [], timer)


def _write_sample(run: _Run, candidates: pa.Table, kept: set[str], prefix: str, name: str, fp: str, dropped: list[dict], timer: Timer) -> None:
    """The ``kept`` candidates in shards ``<prefix>00000``, ... (sorted by id) and the manifest ``name``."""
    ids = candidates.column("segment_id").to_pylist()
    order = sorted((sid, i) for i, sid in enumerate(ids) if sid in kept)
    size = run.config.runtime.segments_per_shard
    manifest: dict[str, list] = {"segment_id": [], "shard": [], "start": [], "end": []}
    for n, lo in enumerate(range(0, len(order), size)):
        shard = shard_name(prefix, n)
        indices = [i for _, i in order[lo : lo + size]]
        part = candidates.take(indices)
        run.work.write("sample", shard, fp, part.to_pydict(), schema.CONDENSED_SEGMENT, stats={"counts": {}, "rank": run.ranks.index})
        manifest["segment_id"] += part.column("segment_id").to_pylist()
        manifest["shard"] += [shard] * len(indices)
        manifest["start"] += part.column("start").to_pylist()
        manifest["end"] += part.column("end").to_pylist()
    stats = {"counts": {"sampling": len(order)}, "wall_s": timer.seconds, "rank": run.ranks.index}
    run.work.write("sample", name, fp, manifest, SAMPLE_MANIFEST, stats=stats, dropped=dropped)


def _quota(run: _Run, shards: list[str], sample_shards: list[str], config: Config) -> dict[str, dict[str, int]]:
    """Per primary emotion: the quota asked for, the candidates, the segments sampled (top-ups included)
    and those delivered (with at least one pair after the post-filter)."""
    candidates = Counter(run.table("condense", shards, schema.CONDENSED_SEGMENT).column("primary_emotion").to_pylist())
    sampled = run.table("sample", sample_shards, schema.CONDENSED_SEGMENT)
    delivered = set(run.table("postfilter", sample_shards, schema.QA_PAIR).column("segment_id").to_pylist())
    labels = sampled.column("primary_emotion").to_pylist()
    sampled_n = Counter(labels)
    delivered_n = Counter(label for sid, label in zip(sampled.column("segment_id").to_pylist(), labels) if sid in delivered)
    asked = config.condense.samples_per_category
    return {label: {"asked": asked, "candidates": candidates[label], "sampled": sampled_n[label], "delivered": delivered_n[label]} for label in sorted(candidates)}


SAMPLE_MANIFEST = Features({"segment_id": schema.SEGMENT["segment_id"], "shard": schema.PLANNED_RECORDING["shard"], "start": schema.SEGMENT["start"], "end": schema.SEGMENT["end"]})


# ---------------------------------------------------------------- per sample shard
def _asr(segments: dict[str, list], config: Config, ranks: Ranks, bar: StageProgress):
    asr = config.asr
    out = _map_with_progress(
        segments, align.transcribe_and_align, asr.batch_size, bar, ranks.local,
        model=asr.model, aligner=asr.aligner, language=asr.language, compute_type=asr.compute_type, batch_size=asr.batch_size, device=config.runtime.device,
        diarize=asr.diarize,
    )  # fmt: skip
    errors = [e or None for e in out.get("asr_error", [])]
    reasons = [ASR_FAILED if e else (None if t and t.strip() else NO_WORDS) for e, t in zip(errors, out.get("transcript", []))]
    keep, dropped = _split("asr", segments, reasons, errors)
    columns = _pick({**segments, **out}, keep)
    return columns, ASR_SEGMENT, {"asr": len(keep)}, dropped


def _qa(segments: dict[str, list], qa_config, base_url: str, cache_dir: str, bar: StageProgress):
    segments = {**segments, **words.tag_words(segments)}
    q = qa_config
    kwargs = dict(
        base_url=base_url, model=q.model, api_key_env=q.api_key_env, cache_dir=cache_dir, pairs_per_segment=q.pairs_per_segment,
        temperature=q.temperature, max_tokens=q.max_tokens, structured_output=q.structured_output, concurrency=q.concurrency,
        max_retries=q.max_retries, timeout_s=q.timeout_s, prompt_version=q.prompt_version, word_timing=q.word_timing, language=q.language,
    )  # fmt: skip
    client = prompting.llm_client(base_url, q.model, q.api_key_env, cache_dir, q.concurrency, q.max_retries, q.timeout_s)
    before = client.calls.snapshot()
    out = _map_with_progress(segments, qa.generate_qa, max(q.concurrency * 4, 16), bar, **kwargs)
    errors = out.get("qa_error", [])
    reasons = [(e if e in (qa.UNPARSEABLE, qa.NO_TRANSCRIPT) else LLM_FAILED) if e else (None if pairs else NO_PAIRS) for e, pairs in zip(errors, out.get("qa_pairs", []))]
    keep, dropped = _split("qa", segments, reasons, errors)
    return _pick({**segments, **out}, keep), QA_SEGMENT, {"qa": len(keep), **_llm_counts(stats_delta(client.calls.snapshot(), before))}, dropped


# An LLM stage's call counts ride in its shard's integer counts as "llm:<field>", "llm:retry:<reason>"
# and "llm:failed:<reason>"; llm_calls() reads them back for the build's summary.
_LLM = "llm:"


def _llm_counts(calls: dict) -> dict[str, int]:
    counts = {f"{_LLM}{name}": calls[name] for name in CallStats.FIELDS}
    counts.update({f"{_LLM}retry:{reason}": n for reason, n in calls["retry_reasons"].items()})
    counts.update({f"{_LLM}failed:{reason}": n for reason, n in calls["failure_reasons"].items()})
    return counts


def llm_calls(counts: dict[str, int]) -> dict | None:
    """The LLM call counts of a build (summed over its shards), or None when no LLM stage ran."""
    if f"{_LLM}requests" not in counts:
        return None
    calls = {name: counts.get(f"{_LLM}{name}", 0) for name in CallStats.FIELDS}
    for field, prefix in (("retry_reasons", f"{_LLM}retry:"), ("failure_reasons", f"{_LLM}failed:")):
        calls[field] = {key[len(prefix) :]: n for key, n in sorted(counts.items()) if key.startswith(prefix)}
    return calls


def _empathy(segments: dict[str, list], empathy_config, qa_config, base_url: str, cache_dir: str, bar: StageProgress):
    """One empathetic-response sample per clip; clips without one are dropped with the reason."""
    segments = {**segments, **words.tag_words(segments)}
    e, q = empathy_config, qa_config
    kwargs = dict(
        base_url=base_url, model=q.model, api_key_env=q.api_key_env, cache_dir=cache_dir, strategy=e.strategy, demos_per_sample=e.demos_per_sample,
        max_response_chars=e.max_response_chars, pause_s=e.pause_s, temperature=e.temperature, max_tokens=e.max_tokens,
        structured_output=e.structured_output, concurrency=q.concurrency, max_retries=q.max_retries, timeout_s=q.timeout_s,
    )  # fmt: skip
    client = prompting.llm_client(base_url, q.model, q.api_key_env, cache_dir, q.concurrency, q.max_retries, q.timeout_s)
    before = client.calls.snapshot()
    out = {name: [] for name in empathy.OUTPUT_COLUMNS}  # a shard that lost every clip at ASR
    out.update(_map_with_progress(segments, empathy.generate_empathy, max(q.concurrency * 4, 16), bar, **kwargs))
    errors = out["empathy_error"]
    reasons = [(err if err in empathy.REASONS else empathy.REQUEST_FAILED) if err else None for err in errors]
    # the audit keeps the transport error, or the rejected reply itself
    details = [err if reason == empathy.REQUEST_FAILED else raw for err, reason, raw in zip(errors, reasons, out["empathy_raw"])]
    keep, dropped = _split("empathy", segments, reasons, details)
    counts = {"empathy": len(keep), **_llm_counts(stats_delta(client.calls.snapshot(), before))}
    return _pick({**segments, **out}, keep), schema.EMPATHY_SAMPLE, counts, dropped


def _postfilter(segments: dict[str, list], config: Config, ranks: Ranks, categoriser=None):
    pf = config.postfilter
    pairs = postfilter.explode_pairs(segments)
    reasons = postfilter.filter_reasons(
        pairs, transcript_words=list(pf.transcript_words), min_answer_chars=pf.min_answer_chars, max_question_chars=pf.max_question_chars,
        max_answer_chars=pf.max_answer_chars, max_pairs=config.qa.pairs_per_segment, prompt_fragments=qa.prompt_fragments(),
    )  # fmt: skip
    reasons = postfilter.mark_duplicates({**pairs, **reasons}, ranks.local, model=pf.embedding_model, threshold=pf.duplicate_threshold, device=config.runtime.device)
    texts = [f"Q: {q} | A: {a}" for q, a in zip(pairs["question"], pairs["answer"])]
    keep, dropped = _split("pairs", pairs, reasons["drop_reason"], texts)
    kept = _pick(pairs, keep)
    before = categoriser.calls.snapshot() if categoriser is not None else None
    kept = {**kept, **postfilter.categorise(kept, categoriser)}
    with_pairs = set(kept["segment_id"])
    dropped += _split("postfilter", segments, [None if sid in with_pairs else NO_PAIR_SURVIVED for sid in segments["segment_id"]])[1]
    counts = {"generated": len(pairs["segment_id"]), "pairs": len(keep), "postfilter": len(with_pairs)}
    if categoriser is not None:  # a failed call fell back to the rules: the shard is redone on the next run
        counts.update(_llm_counts(stats_delta(categoriser.calls.snapshot(), before)))
    return kept, schema.QA_PAIR, counts, dropped


# ---------------------------------------------------------------- the LLM endpoint
@contextlib.contextmanager
def _llm_endpoint(config: Config, *, needed: bool, say: Callable[[str], None]):
    """(base URL, QA config with the model the endpoint serves); the embedded server runs only while
    this process has QA tasks left and no endpoint is configured."""
    from .llm_server import embedded_server, resolve_endpoint

    base_url, model = resolve_endpoint(config.qa)
    qa_config = dataclasses.replace(config.qa, model=model)
    if base_url is not None or not needed:
        yield base_url, qa_config
        return
    say("starting the embedded LLM server (llama.cpp, SmolLM2-135M-Instruct) ...")
    with embedded_server(model) as url:
        yield url, qa_config


# ---------------------------------------------------------------- funnel and audit files
def _tasks(shards: list[str], sample_shards: list[str], extra_stages: tuple[str, ...], manifests: list[str]) -> list[tuple[str, str]]:
    tasks = [("ingest", "recordings")]
    tasks += [(stage, s) for stage in ("vad", "label", "condense") for s in shards]
    tasks += [("sample", m) for m in manifests]
    tasks += [(stage, s) for stage in extra_stages for s in sample_shards]
    return tasks


def _dropped_rows(run: _Run, shards: list[str], sample_shards: list[str], extra_stages: tuple[str, ...], manifests: list[str]) -> pa.Table:
    """Every task's dropped rows, less the over-quota drops of candidates that a top-up round took later."""
    tables = [run.work.read_dropped(stage, shard) for stage, shard in _tasks(shards, sample_shards, extra_stages, manifests)]
    table = pa.concat_tables(tables) if tables else schema.DROPPED.arrow_schema.empty_table()
    rescued = {sid for m in manifests[1:] for sid in run.work.read("sample", m)["segment_id"]}
    if not rescued:
        return table
    keep = [i for i, (stage, sid) in enumerate(zip(table.column("stage").to_pylist(), table.column("segment_id").to_pylist())) if not (stage == "sampling" and sid in rescued)]
    return table.take(keep)


def _funnel(run: _Run, shards: list[str], sample_shards: list[str], extra_stages: tuple[str, ...], manifests: list[str]) -> Funnel:
    """Counts summed over every task's stats; the LLM calls also over the tasks this run computed (its
    build id in their stats), with the LLM tasks it skipped because an earlier run had finished them."""
    counts: Counter = Counter()
    this_run: Counter = Counter()
    skipped = 0
    for stage, shard in _tasks(shards, sample_shards, extra_stages, manifests):
        stats = run.work.read_stats(stage, shard)
        counts.update(stats["counts"])
        if f"{_LLM}requests" in stats["counts"]:
            if stats.get("build_id") == run.build_id:
                this_run.update(stats["counts"])
            else:
                skipped += 1
    drops = [Drop(**row) for row in _dropped_rows(run, shards, sample_shards, extra_stages, manifests).to_pylist()]
    ordered = {stage: counts[stage] for stage in FUNNEL if stage in counts}
    build = llm_calls(counts)
    mine = None
    if build is not None:
        mine = {**llm_calls({f"{_LLM}requests": 0, **this_run}), "tasks_skipped": skipped}
    return Funnel(ordered, tuple(drops), build, mine)


def _merge_dropped(run: _Run, shards: list[str], sample_shards: list[str], extra_stages: tuple[str, ...], manifests: list[str]) -> None:
    """Every dropped row of the build in ``OUT/work/dropped/<stage>.parquet``, one file per funnel stage."""
    table = _dropped_rows(run, shards, sample_shards, extra_stages, manifests)
    folder = run.work.root / "dropped"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    stages = table.column("stage").to_pylist()
    for stage in FUNNEL:
        indices = [i for i, s in enumerate(stages) if s == stage]
        if indices:
            pq.write_table(table.take(indices), folder / f"{stage}.parquet")


def write_report(result: BuildResult, out_dir: str | Path) -> None:
    """``report.json`` (funnel, with ``configs``: the dataset configs exported in ``out_dir``, none when
    this build exported nothing) and ``recordings.jsonl`` (ledger) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    exported = export.written_configs(out_dir) if (out_dir / "README.md").exists() else []
    report = {**result.report(), "configs": exported}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out_dir / "recordings.jsonl", "w") as f:
        for entry in result.ledger:
            f.write(json.dumps(entry) + "\n")


# ---------------------------------------------------------------- export
def model_ids(config: Config) -> dict[str, object]:
    """The models behind the labels, as published (local folders by name only)."""
    return {
        "emotion_models": [export.public_model_id(m) for m in config.models.emotion],
        "dimension_model": export.public_model_id(config.models.dimension),
        "gender_model": export.public_model_id(config.models.gender),
        "asr_model": export.public_model_id(config.asr.model),
    }


def export_dataset(
    result: BuildResult, config: Config, out_dir: str | Path, *, license: str, sources: str, card_template: str | None = None, licences: list[str] | None = None,
    source_hashes: dict[str, str] | None = None,
) -> Path:
    """Parquet shards for the ``qa``, ``segments`` and ``empathy`` configs (those built), the card as
    README.md, and the reports (``licences``: each segment's source licence, default ``license``;
    ``source_hashes``: path -> sha256).

    The export is written into ``OUT/.export-<build id>`` and then replaces the previous one
    (``export.install_export``), so ``OUT`` never mixes the files of two builds."""
    out_dir = Path(out_dir)
    if card_template is None:
        card_template = (Path(__file__).resolve().parents[1] / "dataset_card.md").read_text()
    for stale in out_dir.glob(".export-*"):  # left by a run that died while exporting
        shutil.rmtree(stale)
    staging = out_dir / f".export-{result.build_id}"
    export.write_dataset(
        result.segments, result.pairs, config, staging, models=model_ids(config), report=result.report(),
        card_template=card_template, license=license, sources=sources, build_id=result.build_id,
        licences=licences, empathy=result.empathy, source_hashes=source_hashes, load_path=str(out_dir),
    )  # fmt: skip
    export.install_export(staging, out_dir)
    write_report(result, out_dir)
    return out_dir


BUILD_ID_FILE = "build.json"  # under OUT/work: the id rank 0 gave this run, read by every rank


def new_build_id(work: WorkDir) -> str:
    """A fresh id for this run of ``build``, written for the other ranks to read after the barrier."""
    build_id = uuid.uuid4().hex[:16]
    atomic_write(work.root / BUILD_ID_FILE, lambda p: p.write_text(json.dumps({"build_id": build_id}) + "\n"))
    return build_id


def read_build_id(work: WorkDir) -> str:
    return json.loads((work.root / BUILD_ID_FILE).read_text())["build_id"]


def _no_export(out_dir: Path, say: Callable[[str], None]) -> None:
    """A build that exports nothing leaves no earlier build's export behind, and says so."""
    removed = export.remove_export(out_dir)
    if removed:
        say(f"removed the previous build's export ({', '.join(removed)}): this build exported nothing")


def save_condensed(segments: Dataset, path: Path) -> None:
    """``segments`` as a ``save_to_disk`` folder that replaces ``path`` whole (no shard of an earlier run
    left); an empty result is written as one empty shard, so that ``load_from_disk`` opens it with its
    features."""
    token = uuid.uuid4().hex[:8]
    staging, old = path.with_name(f".{path.name}-{token}"), path.with_name(f".{path.name}-old-{token}")
    segments.save_to_disk(str(staging), num_shards=None if len(segments) else 1)
    if path.exists():
        path.rename(old)
    staging.rename(path)
    shutil.rmtree(old, ignore_errors=True)
