"""``build()``: the method as a list of steps, run by one executor.

    ingest (global)  recordings sorted by id, probed, split into shards r00000, r00001, ...
    vad, label, condense                  per recording shard (RECORDING_STEPS)
    sample (global)  balanced sampling; the sample cut into shards s00000, ...
    asr, qa, postfilter                   per sample shard (SAMPLE_STEPS), then up to
                     ``condense.topup_rounds`` top-up rounds through the same steps
    empathy          per sample shard, top-ups included (``outputs`` with ``empathy``)
    export (global)  Parquet + dataset card, report.json, recordings.jsonl, work/dropped/<stage>.parquet

Every task is a file under ``OUT/work`` (``build.core.work``): rerunning the same command after a crash
skips every task whose output carries the same fingerprint, and the LLM cache answers every request
that had completed. ``accelerate launch`` runs the same ``build`` on N processes (``build.core.ranks``):
rank r takes every N-th task of each per-shard step, and rank 0 runs the global steps after a barrier.
QA is always built (its deliveries decide the top-up rounds that both outputs draw from); a recording
is kept when either output holds a row of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset

from ..commands import preflight
from ..core import schema
from ..core.config import Config
from ..core.ranks import Ranks, current, reports_failures
from ..core.work import WorkDir
from ..publishing import licences
from . import audit, sampling
from .columns import QA_SEGMENT, dataset
from .context import Context, LlmEndpoint
from .executor import Executor
from .funnel import BuildResult, write_report
from .output import export_dataset, new_build_id, no_export, read_build_id, save_condensed
from .plan import make_plan
from .steps import Asr, Condense, Empathy, Label, PostFilter, Qa, Vad

RECORDING_STEPS = (Vad(), Label(), Condense())
SAMPLE_STEPS = (Asr(), Qa(), PostFilter())
EMPATHY = Empathy()
STOP_AFTER = ("condense",)
OUTPUTS = ("qa", "empathy")


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
    _check_options(stop_after, outputs)
    out_dir = Path(out_dir)
    ranks = (ranks or current(config.runtime.barrier_timeout_s)).reporting(out_dir / "work" / "ranks")
    # on every rank, so none waits at a barrier for a rank 0 that stopped
    preflight.check_build(config, out_dir, stop_after=stop_after)
    with contextlib.ExitStack() as stack:
        ex = Executor(Context(config, ranks, WorkDir(out_dir / "work"), LlmEndpoint(config, say, stack)), progress)
        if ranks.is_main:
            new_build_id(ex.work)
            make_plan(ex, source, allow_outside_root)
        ranks.barrier()
        ex.build_id = read_build_id(ex.work)
        ex.load_plan()
        shards = sorted(ex.members)
        audio = {s: sum(ex.plan["duration"][i] or 0.0 for i in ex.members[s]) for s in shards}
        for step in RECORDING_STEPS:
            ex.run(step, shards, audio)
        ranks.barrier()
        fp = sampling.sample_fingerprint(ex, shards)
        if ranks.is_main and not ex.work.is_done("sample", "manifest", fp):
            sampling.sample(ex, shards, fp)
        ranks.barrier()
        if stop_after == "condense" or not _shards_of(ex.work.read("sample", "manifest")):
            return _condensed(ex, shards, out_dir, say) if ranks.is_main else None
        sample_shards, manifests = _sample_rounds(ex, shards)
        if "empathy" in outputs:
            ex.run(EMPATHY, sample_shards, _audio_of(ex.work, manifests))
            ranks.barrier()
    if not ranks.is_main:
        return None
    tasks = audit.Tasks(shards, sample_shards, ("asr", "qa", "postfilter", *(("empathy",) if "empathy" in outputs else ())), manifests)
    options = dict(license=license, sources=sources, card_template=card_template, allow_outside_root=allow_outside_root)
    return _export(ex, tasks, out_dir, source, say, **options)


def step_params(config: Config) -> dict[str, dict]:
    """What each per-shard step's fingerprint hashes of ``config``, by step name."""
    return {step.name: step.params(config) for step in (*RECORDING_STEPS, *SAMPLE_STEPS, EMPATHY)}


def _check_options(stop_after: str | None, outputs: tuple[str, ...]) -> None:
    if stop_after not in (None, *STOP_AFTER):
        raise ValueError(f"stop_after must be one of {STOP_AFTER}, got {stop_after!r}")
    if "qa" not in outputs or any(o not in OUTPUTS for o in outputs):
        raise ValueError(f"outputs must be qa or qa,empathy, got {','.join(outputs) or 'none'}")


def _shards_of(manifest: dict[str, list]) -> list[str]:
    return sorted(set(manifest["shard"]))


def _audio_of(work: WorkDir, manifests: list[str]) -> dict[str, float]:
    """Seconds of segment audio per sample shard of ``manifests``, for progress."""
    audio: Counter = Counter()
    for name in manifests:
        manifest = work.read("sample", name)
        for shard, start, end in zip(manifest["shard"], manifest["start"], manifest["end"]):
            audio[shard] += end - start
    return audio


def _sample_rounds(ex: Executor, shards: list[str]) -> tuple[list[str], list[str]]:
    """ASR, QA and the post-filter over the sample, then the top-up rounds through the same steps;
    returns every sample shard and the manifests (``manifest``, ``topup-1``, ...)."""
    manifests, sample_shards = ["manifest"], []
    round_shards = _shards_of(ex.work.read("sample", "manifest"))
    for round_no in range(1, ex.config.condense.topup_rounds + 2):
        audio = _audio_of(ex.work, manifests[-1:])
        for step in SAMPLE_STEPS:
            ex.run(step, round_shards, audio)
        ex.ranks.barrier()  # after it, every rank's post-filter shards are written
        sample_shards += round_shards
        if round_no > ex.config.condense.topup_rounds:
            break
        name, fp = f"topup-{round_no}", sampling.topup_fingerprint(ex, round_no, round_shards)
        if ex.ranks.is_main and not ex.work.is_done("sample", name, fp):
            sampling.topup(ex, shards, sample_shards, round_no, fp)
        ex.ranks.barrier()
        manifests.append(name)
        round_shards = _shards_of(ex.work.read("sample", name))
        if not round_shards:
            break
    return sample_shards, manifests


def _condensed(ex: Executor, shards: list[str], out_dir: Path, say: Callable[[str], None]) -> BuildResult:
    """Rank 0 after condensation only (``stop_after``, or an empty sample): the condensed segments."""
    sample_shards = _shards_of(ex.work.read("sample", "manifest"))
    segments = dataset(ex.table("sample", sample_shards, schema.CONDENSED_SEGMENT), schema.CONDENSED_SEGMENT)
    save_condensed(segments, out_dir / "condensed")
    tasks = audit.Tasks(shards, sample_shards, (), ["manifest"])
    status = "condensed" if sample_shards else "nothing condensed"
    result = _result(ex, tasks, segments, None, status, out_dir, quota=None)
    no_export(out_dir, say)
    write_report(result, out_dir)
    return result


def _result(ex: Executor, tasks: audit.Tasks, segments: Dataset, pairs, status: str, out_dir: Path, quota) -> BuildResult:
    """The funnel and ledger from every task's files; the audit files merged."""
    dropped = audit.dropped_rows(ex.work, tasks)
    funnel = audit.funnel(ex.work, tasks, dropped, ex.build_id)
    audit.merge_dropped(ex.work, dropped)
    return BuildResult(ex.plan["recording_id"], funnel, segments, pairs, status, out_dir, quota, build_id=ex.build_id)


def _export(ex: Executor, tasks: audit.Tasks, out_dir: Path, source, say, *, license, sources, card_template, allow_outside_root) -> BuildResult:
    """Rank 0: the kept pairs, their segments and the empathy samples, exported with the card."""
    pairs = dataset(ex.table("postfilter", tasks.sample_shards, schema.QA_PAIR), schema.QA_PAIR)
    segments = dataset(ex.table("qa", tasks.sample_shards, QA_SEGMENT), QA_SEGMENT)
    with_pairs = set(pairs["segment_id"])
    segments = segments.select([i for i, sid in enumerate(segments["segment_id"]) if sid in with_pairs])
    quota = sampling.quota(ex, tasks.shards, tasks.sample_shards)
    if len(pairs) == 0:  # nothing is exported, so no recording is kept (empathy samples included)
        result = _result(ex, tasks, segments, pairs, "no pairs", out_dir, quota)
        no_export(out_dir, say)
        write_report(result, out_dir)
        return result
    samples = None
    if "empathy" in tasks.stages:
        samples = dataset(ex.table("empathy", tasks.sample_shards, schema.EMPATHY_SAMPLE), schema.EMPATHY_SAMPLE)
    result = dataclasses.replace(_result(ex, tasks, segments, pairs, "built", out_dir, quota), empathy=samples)
    row_licences = licences.row_licences(source, result.segments["audio_path"], license, allow_outside_root)
    plan = ex.plan
    hashes = {path: digest for path, digest in zip(plan["audio_path"], plan["sha256"]) if digest}  # hashed at ingest
    n = len(plan["recording_id"])
    sources = sources or f"Recordings supplied by whoever built this dataset ({n} files); their licences apply."
    export_dataset(result, ex.config, out_dir, license=license, licences=row_licences, source_hashes=hashes, card_template=card_template, sources=sources)
    return result
