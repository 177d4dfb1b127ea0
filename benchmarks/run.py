"""The scale-out benchmark: five sections, each printed as a markdown table headed by the machine,
the date and the command line. Every figure comes from the orchestrator (``build.pipeline.build``),
the stage function it calls (``build.stages.label.label_segments``) or the CLI; nothing here wires stages.

    .venv/bin/python benchmarks/run.py                          # every section, tiny models, CPU
    .venv/bin/python benchmarks/run.py --only overhead          # one section
    .venv/bin/python benchmarks/run.py --device cuda --profile paper --repeats 3 --json bench.json

Sections (``--only``):

1. ``throughput``: ``pipeline.build`` on ``--source`` (default ``data/samples``) twice in one process,
   fresh output folders: ``cold`` (models load inside the stage) and ``warm`` (models cached). Reads
   every task's ``OUT/work/<stage>/*.stats.json`` and prints audio seconds per wall second per stage.
   QA goes to a loopback OpenAI-compatible stub (``tests/openai_stub.py``) that answers at once, so no
   LLM time is measured; ``--stop-after condense`` stops before ASR instead.
2. ``overhead``: the label stage of ``pipeline.build`` (tiny models) with ``emotion.classify_clips``,
   ``dimension.classify_clips`` and ``gender.classify_clips`` wrapped in timers (as ``build.stages.label``
   sees them), then with null labellers (constant, correctly shaped outputs at once), each with the
   configured ``loader_workers`` and with 0 (then ``audio.decode_span`` is timed too, in-process).
   overhead = (label wall - model time) / label wall; target <= 10 %. Ingest and VAD outputs of a
   warm-up build are copied into each fresh output folder, so ``build`` resumes at the label stage.
3. ``fullsize``: random-weight models of the real sizes, written under a temporary folder: the
   MSP-Podcast dimensional model (wav2vec2-large-robust layout; audeering's checkpoint keeps 12 of
   its 24 layers, ``--dimension-layers``), an XLS-R-large gender classifier (24 layers) and, when
   ``benchmarks/emotion2vec_batching.py`` is there, an emotion2vec+ large member built by it.
   For each, on the same windows of ``--segments`` 32 s segments: (a) ``label.label_segments`` with
   only that model real (the other two labellers replaced by null ones: ``label_segments`` always
   runs all three), (b) the bare forward on the same windows decoded and sliced beforehand, in the
   same length-sorted batches of the same size: ``model(**extractor(batch))`` under
   ``torch.inference_mode()`` (for emotion2vec: per-clip normalisation, padding, ``extract_features``,
   mean, ``proj``). Both warmed up once on a short segment; median of ``--repeats``. Target (a)/(b) <= 1.1.
4. ``memory``: runs ``benchmarks/memory.py`` (peak RSS of VAD + decoding, 2 min vs 2 h) and prints its
   ratio; skipped when that file is absent.
5. ``processes``: ``cpqa.py build SRC --stop-after condense --quiet`` on ``--copies`` copies of the
   source under distinct names with ``runtime.recordings_per_shard=2``, once as one process and once
   under ``accelerate launch --multi_gpu --num_processes N`` (torchrun on a machine without GPUs), both
   with ``OMP_NUM_THREADS=1``, fresh output folders; wall seconds, speed-up, and whether the condensed
   rows are identical.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the local build/ package, not PyPA's
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SECTIONS = ("throughput", "overhead", "fullsize", "memory", "processes")
STAGE_ORDER = ("ingest", "vad", "label", "condense", "sample", "asr", "qa", "postfilter")
TINY_MODELS = REPO / ".cpqa" / "tiny-models"  # where cpqa.py builds them
SAMPLES = REPO / "data" / "samples"
# Segments for the full-size section: (bundled file, start s); each lasts --segment-s seconds.
FULLSIZE_SEGMENTS = (
    ("ami_es2004_excerpt.flac", 0.0),
    ("ravdess_actor01.flac", 0.0),
    ("ravdess_actor02.flac", 0.0),
    ("ravdess_actor03.flac", 0.0),
    ("ravdess_actor04.flac", 0.0),
    ("ravdess_actor05.flac", 0.0),
    ("ravdess_actor06.flac", 0.0),
    ("ami_es2004_excerpt.flac", 28.0),
)
STUB_REPLY = (
    "Q: How does the speaker sound overall?\nA: Calm and steady, without raising the voice.\n"
    "Q: Does the speaker's mood change during the clip?\nA: It brightens a little towards the end."
)


# ---------------------------------------------------------------- printing
def machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) + (f" x{torch.cuda.device_count()}" if torch.cuda.device_count() > 1 else "") if cuda else "none",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }


def header(title: str) -> dict:
    m = machine()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"\n### {title}\n")
    print(f"machine: {m['cores']} cores ({m['usable_cores']} usable), GPU: {m['gpu']}, torch {m['torch']} "
          f"({m['torch_threads']} threads), Python {m['python']}; load average before: {load}  ")
    print(f"date: {when}  ")
    print(f"command: `{command_line()}`\n")
    return {**m, "date": when, "load_before": load}


def command_line() -> str:
    script = os.path.relpath(Path(sys.argv[0]).resolve(), Path.cwd())
    return " ".join(shlex.quote(a) for a in ["python", script, *sys.argv[1:]])


def table(columns: list[str], rows: list[list]) -> None:
    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
        return str(v)

    print("| " + " | ".join(columns) + " |")
    print("|" + "|".join([":---"] + ["---:"] * (len(columns) - 1)) + "|")
    for row in rows:
        print("| " + " | ".join(cell(v) for v in row) + " |")
    print()


def verdict(value: float, target: float, what: str) -> str:
    return f"{what}: {value:.3g} (target <= {target:g}): {'met' if value <= target else 'MISSED'}"


# ---------------------------------------------------------------- shared helpers
def load_config(profile: str, device: str, overrides: list[str]):
    from build.core.config import paper_config, tiny_config

    if profile == "tiny":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from build.models.tiny import build_tiny_models

        config = tiny_config(str(build_tiny_models(TINY_MODELS)))
    else:
        config = paper_config()
    extra = [] if device == "auto" else [f"runtime.device={device}"]
    return config.with_overrides([*extra, *overrides])


def resolve_device(device: str) -> str:
    from build.core.devices import device_for

    return device_for(0, device)


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def stage_totals(work: Path) -> dict[str, dict]:
    """Per stage: tasks, summed audio_s (None when no task has one), summed wall_s, wall_s per rank."""
    totals = {}
    for stage in STAGE_ORDER:
        stats = [json.loads(p.read_text()) for p in sorted((work / stage).glob("*.stats.json"))]
        if not stats:
            continue
        audio = [s["audio_s"] for s in stats if s.get("audio_s") is not None]
        ranks: dict[int, float] = {}
        for s in stats:
            ranks[s.get("rank", 0)] = ranks.get(s.get("rank", 0), 0.0) + (s.get("wall_s") or 0.0)
        totals[stage] = {
            "tasks": len(stats),
            "audio_s": sum(audio) if audio else None,
            "wall_s": sum(s.get("wall_s") or 0.0 for s in stats),
            "wall_by_rank": ranks,
        }
    return totals


def forget_decoders() -> None:
    """Drop this process's cached torchcodec decoders before anything forks loader workers.

    Workaround, not a fix: a DataLoader worker forked from a process that holds a decoder in
    ``build.sources.audio``'s forward-reader cache hangs for ever in ``audio._after_fork`` (dropping the
    parent's decoder in the child blocks on a futex). That happens when one process decodes in the
    parent (ASR, ``loader_workers=0``, a pre-decode) and then runs a label stage with workers."""
    from build.sources import audio

    audio.clear_caches()


@contextlib.contextmanager
def patched(module, name: str, replacement) -> Iterator[None]:
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        setattr(module, name, original)


class Stopwatch:
    """Wraps a function: seconds spent inside it and the number of calls (in this process)."""

    def __init__(self, fn: Callable, device: str = "cpu"):
        self.fn, self.device, self.seconds, self.calls = fn, device, 0.0, 0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            synchronize(self.device)
            self.seconds += time.perf_counter() - start
            self.calls += 1


# Null labellers: the signatures and output columns of the real classify_clips, constant values, no model.
def null_emotion(clips, spans, *, model_ids, device, hub=None, precision="float32"):
    from build.core.schema import EMOTION_LABELS

    scores = [0.02] * len(EMOTION_LABELS)
    scores[EMOTION_LABELS.index("happy")] = 1.0 - 0.02 * (len(EMOTION_LABELS) - 1)
    return {"emotion": ["happy"] * len(clips), "emotion_scores": [list(scores) for _ in clips], "emotion_error": [None] * len(clips)}


def null_dimension(clips, spans, *, model_id, device, precision="float32"):
    n = len(clips)
    return {"arousal": [0.5] * n, "dominance": [0.5] * n, "valence": [0.9] * n, "dimension_error": [None] * n}


def null_gender(clips, spans, *, model_id, device, precision="float32"):
    n = len(clips)
    return {"gender": ["female"] * n, "gender_score": [0.9] * n, "gender_error": [None] * n}


def labellers():
    from build.models import dimension, emotion, gender

    return {"emotion": (emotion, null_emotion), "dimension": (dimension, null_dimension), "gender": (gender, null_gender)}


@contextlib.contextmanager
def labellers_replaced(replacements: dict[str, Callable]) -> Iterator[None]:
    """``{"emotion": fn, ...}``: set ``<module>.classify_clips`` for the named labellers."""
    with contextlib.ExitStack() as stack:
        for name, fn in replacements.items():
            module, _ = labellers()[name]
            stack.enter_context(patched(module, "classify_clips", fn))
        yield


@contextlib.contextmanager
def qa_stub() -> Iterator[str]:
    """Base URL of a loopback OpenAI-compatible server that answers every request at once."""
    spec = importlib.util.spec_from_file_location("cpqa_openai_stub", REPO / "tests" / "openai_stub.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while it executes
    spec.loader.exec_module(module)
    with module.OpenAIStub(lambda request: STUB_REPLY) as stub:
        yield stub.base_url


# ---------------------------------------------------------------- 1. per-stage throughput
def stage_functions() -> dict[str, tuple]:
    """The function ``build.pipeline`` calls for the models of each stage, as (module, name)."""
    from build.stages import align, label, postfilter, segment

    return {"vad": (segment, "detect_speech"), "label": (label, "label_segments"), "asr": (align, "transcribe_and_align"),
            "postfilter": (postfilter, "mark_duplicates")}



def section_throughput(args, results: dict) -> None:
    import torch

    from build import pipeline

    info = header("1. Per-stage throughput (pipeline.build, stats.json of every task)")
    config = load_config(args.profile, args.device, args.set)
    stop = "condense" if args.stop_after == "condense" else None
    runs: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="cpqa-bench-") as tmp, contextlib.ExitStack() as stack:
        if stop is None:
            url = stack.enter_context(qa_stub())
            config = config.with_overrides(["qa.structured_output=text", "qa.max_retries=0", f"qa.base_url={url}"])
        for name in ("cold", "warm"):
            out = Path(tmp) / name
            forget_decoders()
            threads: dict[str, set] = {}
            with contextlib.ExitStack() as watch:
                for stage, (module, fn_name) in stage_functions().items():  # torch threads when the stage's function runs
                    def spy(*a, _fn=getattr(module, fn_name), _stage=stage, **k):
                        threads.setdefault(_stage, set()).add(torch.get_num_threads())
                        return _fn(*a, **k)

                    watch.enter_context(patched(module, fn_name, spy))
                start = time.perf_counter()
                result = pipeline.build(args.source, config, out, stop_after=stop, progress=False, say=lambda line: print(line, file=sys.stderr))
            runs[name] = {"total_s": time.perf_counter() - start, "status": result.status, "stages": stage_totals(out / "work"),
                          "torch_threads": {k: sorted(v) for k, v in threads.items()}}
    cold, warm = runs["cold"]["stages"], runs["warm"]["stages"]
    rows = []
    for stage in STAGE_ORDER:
        if stage not in warm:
            continue
        audio = warm[stage]["audio_s"]
        rate = (lambda w: audio / w if audio and w else None)
        shown = " / ".join(",".join(map(str, runs[r]["torch_threads"].get(stage, ["-"]))) for r in ("cold", "warm"))
        rows.append([stage, warm[stage]["tasks"], audio, cold[stage]["wall_s"], warm[stage]["wall_s"], rate(cold[stage]["wall_s"]), rate(warm[stage]["wall_s"]),
                     shown if stage in stage_functions() else ""])
    print(f"source: `{args.source}`, profile {args.profile}, device {resolve_device(config.runtime.device)}, batch {config.runtime.batch_size}, "
          f"loader_workers {config.runtime.loader_workers}; " + ("QA: loopback stub (no LLM time)" if stop is None else "stopped after condense (no ASR, QA, post-filter)")
          + f"; build status {runs['warm']['status']}\n")
    table(["stage", "tasks", "audio s", "wall s cold", "wall s warm", "audio s/s cold", "audio s/s warm", "torch threads cold/warm"], rows)
    print(f"whole build: cold {runs['cold']['total_s']:.1f} s, warm {runs['warm']['total_s']:.1f} s. 'cold' loads the models inside "
          "the stage (first build of the process), 'warm' reuses them. audio s = the stage's input: recordings for vad, label, "
          "condense; condensed segments for asr, qa, postfilter; sample has none. torch threads: torch.get_num_threads() when the stage's "
          "function is called (importing silero_vad sets 1 for the whole process; WhisperX's loader sets min(4, cores)).")
    results["throughput"] = {"machine": info, "source": str(args.source), "runs": runs}


# ---------------------------------------------------------------- 2. pipeline overhead, tiny models
def section_overhead(args, results: dict) -> None:
    from build import pipeline
    from build.sources import audio as audio_module
    from build.stages import label as label_module

    info = header("2. Pipeline overhead of the label stage (tiny models, pipeline.build)")
    config = load_config("tiny", args.device, args.set)
    device = resolve_device(config.runtime.device)
    workers = config.runtime.loader_workers
    runs = []
    with tempfile.TemporaryDirectory(prefix="cpqa-bench-") as tmp:
        warmup = Path(tmp) / "warm-up"
        forget_decoders()
        pipeline.build(args.source, config, warmup, stop_after="condense", progress=False)  # loads every model

        def label_run(name: str, null: bool, loader_workers: int) -> None:
            out = Path(tmp) / name.replace(" ", "-").replace(",", "").replace("=", "")
            for stage in ("ingest", "vad"):  # resume at the label stage
                shutil.copytree(warmup / "work" / stage, out / "work" / stage)
            run_config = config.with_overrides([f"runtime.loader_workers={loader_workers}"])
            watches = {k: Stopwatch(null_fn if null else module.classify_clips, device) for k, (module, null_fn) in labellers().items()}
            decode = Stopwatch(label_module.decode_span)
            forget_decoders()
            with labellers_replaced(watches), patched(label_module, "decode_span", decode):
                pipeline.build(args.source, run_config, out, stop_after="condense", progress=False)
            totals = stage_totals(out / "work")
            wall = totals["label"]["wall_s"]
            model = sum(w.seconds for w in watches.values())
            runs.append({
                "run": name, "null": null, "loader_workers": loader_workers, "label_wall_s": wall, "model_s": model,
                "per_model_s": {k: w.seconds for k, w in watches.items()}, "calls": {k: w.calls for k, w in watches.items()},
                "decode_s": decode.seconds if loader_workers == 0 else None, "overhead": (wall - model) / wall,
                "label_audio_s": totals["label"]["audio_s"],
            })

        label_run(f"tiny models, loader_workers={workers}", False, workers)
        if workers:
            label_run("tiny models, loader_workers=0", False, 0)
        label_run(f"null models, loader_workers={workers}", True, workers)
        if workers:
            label_run("null models, loader_workers=0", True, 0)
    _ = audio_module  # decode_span is timed where build.stages.label calls it
    rows = [[r["run"], r["label_wall_s"], r["per_model_s"]["emotion"], r["per_model_s"]["dimension"], r["per_model_s"]["gender"],
             r["decode_s"], f"{100 * r['overhead']:.0f} %"] for r in runs]
    print(f"source: `{args.source}` ({runs[0]['label_audio_s']:.0f} s of recordings), device {device}, batch {config.runtime.batch_size}; "
          f"model calls per run: {runs[0]['calls']}\n")
    table(["label stage run", "label wall s", "emotion s", "dimension s", "gender s", "decode s (in-process)", "overhead"], rows)
    main = runs[0]
    print(verdict(100 * main["overhead"], 10, f"overhead with tiny models, loader_workers={workers} (%)"))
    print(f"null-model label wall: {runs[len(runs) // 2]['label_wall_s']:.2f} s (loader_workers={workers})"
          + (f", {runs[-1]['label_wall_s']:.2f} s (loader_workers=0)" if workers else "")
          + ". Model time is measured in this process; decoding in loader workers overlaps it and is not counted.")
    results["overhead"] = {"machine": info, "runs": runs}


# ---------------------------------------------------------------- 3. full-size labelling vs the bare forward
def _wav2vec2_large(**overrides):
    large = dict(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2), conv_bias=True,
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, feat_extract_norm="layer", do_stable_layer_norm=True,
    )  # fmt: skip
    return {**large, **overrides}


def _save_random(model_class, config, dest: Path) -> tuple[str, float]:
    import torch

    from build.models.tiny.classifiers import tiny_feature_extractor

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_class(config).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    model.save_pretrained(dest)
    tiny_feature_extractor().save_pretrained(dest)
    del model
    return str(dest), params


def build_fullsize_dimension(dest: Path, layers: int) -> tuple[str, float]:
    from build.models.base import MspDimensionModel
    from build.models.tiny.classifiers import tiny_dimension_config

    return _save_random(MspDimensionModel, tiny_dimension_config(**_wav2vec2_large(num_hidden_layers=layers)), dest)


def build_fullsize_gender(dest: Path) -> tuple[str, float]:
    from transformers import Wav2Vec2ForSequenceClassification

    from build.models.tiny.classifiers import tiny_gender_config

    return _save_random(Wav2Vec2ForSequenceClassification, tiny_gender_config(**_wav2vec2_large(classifier_proj_size=256)), dest)


def build_fullsize_emotion2vec(dest: Path) -> tuple[str, float] | None:
    path = REPO / "benchmarks" / "emotion2vec_batching.py"
    if not path.exists():
        return None
    spec = importlib.util.spec_from_file_location("cpqa_emotion2vec_batching", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder, params = module.write_large_member(dest)
    return folder, params / 1e6


def _bare_transformers(model, extractor, device: str):
    import torch

    from build.sources.audio import SAMPLE_RATE

    def forward(batch):
        inputs = extractor(batch, sampling_rate=SAMPLE_RATE, padding=True, return_attention_mask=True, return_tensors="pt")
        inputs = {k: v.to(device, model.dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
        with torch.inference_mode():
            return model(**inputs).logits

    return forward


def _bare_emotion2vec(member, device: str):
    import torch
    import torch.nn.functional as F

    net = member.net
    dtype = net.proj.weight.dtype

    def forward(batch):
        with torch.inference_mode():
            lengths = [len(c) for c in batch]
            source = torch.zeros(len(batch), max(lengths), device=device)
            for row, clip in enumerate(batch):
                wave = torch.from_numpy(clip).to(device)
                source[row, : len(clip)] = F.layer_norm(wave, wave.shape) if net.cfg.normalize else wave
            mask = None if min(lengths) == max(lengths) else torch.arange(max(lengths), device=device) >= torch.tensor(lengths, device=device)[:, None]
            hidden = net.extract_features(source.to(dtype), padding_mask=mask)["x"]
            return net.proj(hidden.mean(dim=1))

    return forward


def _windows(segments: dict, spec) -> list:
    """The windows ``label_segments`` cuts (same formula), decoded and sliced in memory."""
    from build.core.windows import window_spans
    from build.sources.audio import SAMPLE_RATE, decode_span

    clips = []
    for path, start, end in zip(segments["audio_path"], segments["start"], segments["end"]):
        audio = decode_span(path, start, end)
        for _, _, lo, hi in window_spans(start, end, spec.label_s, spec.context_s, spec.min_last_fraction):
            a = int(round((lo - start) * SAMPLE_RATE))
            clips.append(audio[a : a + int(round((hi - lo) * SAMPLE_RATE))])
    return clips


def _length_sorted_batches(clips: list, batch_size: int) -> list[list]:
    order = sorted(range(len(clips)), key=lambda k: (-len(clips[k]), k))  # build.stages.label's order
    return [[clips[k] for k in order[i : i + batch_size]] for i in range(0, len(order), batch_size)]


def section_fullsize(args, results: dict) -> None:
    import gc

    import numpy as np
    import torch

    from build.core import devices
    from build.models import dimension, emotion, gender
    from build.stages import label

    info = header("3. Full-size labelling (label_segments) vs the bare batched forward")
    config = load_config("tiny", args.device, [])
    device = resolve_device(args.device)
    precision = args.precision
    batch_size = args.batch_size or 16
    n_segments = args.segments or (2 if device == "cpu" else 16)
    repeats = args.repeats or (1 if device == "cpu" else 3)
    picked = [FULLSIZE_SEGMENTS[i % len(FULLSIZE_SEGMENTS)] for i in range(n_segments)]
    segments = {
        "segment_id": [f"seg{i}" for i in range(n_segments)],
        "recording_id": [f"rec{i}" for i in range(n_segments)],
        "audio_path": [str(SAMPLES / name) for name, _ in picked],
        "start": [start for _, start in picked],
        "end": [start + args.segment_s for _, start in picked],
    }
    short = {k: v[:1] for k, v in segments.items()} | {"end": [segments["start"][0] + 6.0]}  # warm-up: 3 windows
    tiny = config.models
    rows, figures = [], []
    with tempfile.TemporaryDirectory(prefix="cpqa-fullsize-") as tmp:
        plans = [
            ("dimension", f"MSP-Podcast dims (w2v2-large-robust, {args.dimension_layers} layers)", lambda: build_fullsize_dimension(Path(tmp) / "dim", args.dimension_layers), config.emotion_window),
            ("gender", "gender (XLS-R large, 24 layers)", lambda: build_fullsize_gender(Path(tmp) / "gender"), config.gender_window),
            ("emotion", "emotion2vec+ large member", lambda: build_fullsize_emotion2vec(Path(tmp) / "e2v"), config.emotion_window),
        ]
        for kind, title, builder, spec in plans:
            if args.fullsize_models and kind not in args.fullsize_models:
                continue
            started = time.perf_counter()
            built = builder()
            if built is None:
                print(f"{title}: skipped (benchmarks/emotion2vec_batching.py is absent)\n")
                continue
            folder, params = built
            build_s = time.perf_counter() - started
            models = dataclasses.replace(tiny, **{kind: [folder] if kind == "emotion" else folder})
            runtime = dataclasses.replace(config.runtime, device=device, batch_size=batch_size, precision=precision)
            run_config = dataclasses.replace(config, models=models, runtime=runtime)
            nulls = {k: null for k, (_, null) in labellers().items() if k != kind}

            def run_a(segs):
                forget_decoders()
                with labellers_replaced(nulls):
                    out = label.label_segments(segs, run_config)
                synchronize(device)
                errors = [e for e in out["label_error"] if e]
                if errors:
                    raise SystemExit(f"{title}: label_segments failed: {errors[0]}")
                return out

            started = time.perf_counter()
            run_a(short)  # loads the model
            load_s = time.perf_counter() - started
            if kind == "dimension":
                model, extractor, _ = dimension._model(folder, device, precision)  # the object label_segments used
                forward = _bare_transformers(model, extractor, device)
            elif kind == "gender":
                model, extractor, _ = gender._model(folder, device, precision)
                forward = _bare_transformers(model, extractor, device)
            else:
                forward = _bare_emotion2vec(emotion._member(folder, device, emotion.DEFAULT_HUB, precision), device)
            clips = _windows(segments, spec)
            batches = _length_sorted_batches(clips, batch_size)
            forward(_windows(short, spec))  # warm-up
            synchronize(device)

            def run_b():
                outs = [forward(batch) for batch in batches]
                synchronize(device)
                return outs

            times_a, times_b = [], []
            for _ in range(repeats):
                t = time.perf_counter()
                labelled = run_a(segments)
                times_a.append(time.perf_counter() - t)
                t = time.perf_counter()
                bare = run_b()
                times_b.append(time.perf_counter() - t)
            a, b = statistics.median(times_a), statistics.median(times_b)
            check = None
            if kind == "dimension":  # same windows, same numbers: the largest difference in valence
                order = sorted(range(len(clips)), key=lambda k: (-len(clips[k]), k))
                logits = np.concatenate([x.float().cpu().numpy() for x in bare])
                valence = {k: logits[j, 2] for j, k in enumerate(order)}
                staged = [w["valence"] for ws in labelled["emotion_windows"] for w in ws]
                check = max(abs(staged[k] - valence[k]) for k in range(len(clips)))
            lengths = sorted({round(len(c) / 16000, 2) for c in clips})
            rows.append([title, f"{params:.0f} M", len(clips), batch_size, a, b, a / b, check])
            figures.append({"model": kind, "params_m": params, "windows": len(clips), "window_s": lengths, "batch_size": batch_size,
                            "label_segments_s": times_a, "bare_s": times_b, "ratio": a / b, "build_s": build_s, "load_and_warmup_s": load_s,
                            "max_valence_diff": check})
            print(f"{title}: built in {build_s:.0f} s, loaded + warm-up {load_s:.0f} s; window lengths {lengths} s; "
                  f"(a) {', '.join(f'{x:.1f}' for x in times_a)} s, (b) {', '.join(f'{x:.1f}' for x in times_b)} s", file=sys.stderr)
            forward = batches = clips = bare = labelled = None  # free the model before the next one loads
            devices.clear_cache()
            gc.collect()
            shutil.rmtree(Path(folder), ignore_errors=True)
    print(f"{n_segments} segment(s) of {args.segment_s:g} s from data/samples, device {device}, precision {precision}, torch threads {torch.get_num_threads()}, "
          f"loader_workers {config.runtime.loader_workers}, median of {repeats}. (a) = label.label_segments with only this model real "
          "(the other two labellers null: label_segments always runs all three); (b) = model(**extractor(batch)) on the same windows, "
          "pre-decoded, in the same length-sorted batches.\n")
    table(["model (random weights)", "params", "windows", "batch", "(a) label_segments s", "(b) bare forward s", "(a)/(b)", "max valence diff (a) vs (b)"], rows)
    for f in figures:
        print(verdict(f["ratio"], 1.1, f"{f['model']}: (a)/(b)"))
    results["fullsize"] = {"machine": info, "device": device, "precision": precision, "repeats": repeats, "models": figures}


# ---------------------------------------------------------------- 4. peak RSS
def section_memory(args, results: dict) -> None:
    info = header("4. Peak RSS of VAD + decoding: 2 min vs 2 h (benchmarks/memory.py)")
    script = REPO / "benchmarks" / "memory.py"
    if not script.exists():
        print("skipped: benchmarks/memory.py is absent")
        results["memory"] = {"machine": info, "skipped": True}
        return
    cmd = [sys.executable, str(script), *args.memory_args]
    print(f"runs: `{' '.join(shlex.quote(c) for c in [os.path.relpath(cmd[0]), os.path.relpath(cmd[1]), *cmd[2:]])}`\n")
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        print(f"benchmarks/memory.py failed (exit {proc.returncode}):\n{proc.stderr.strip()[-2000:]}")
        results["memory"] = {"machine": info, "failed": proc.returncode}
        return
    rows, ratios = [], {}
    line_re = re.compile(r"^(\w+)\s+([\d.]+) min: peak RSS\s+([\d.]+) MB \(after imports ([\d.]+) MB, after VAD ([\d.]+) MB\); VAD ([\d.]+) s")
    for line in proc.stdout.splitlines():
        m = line_re.match(line)
        if m:
            mode, minutes, peak, base, vad_peak, vad_s = m.groups()
            rows.append([f"{mode}, {float(minutes):g} min", float(peak), float(base), float(vad_peak), float(vad_s)])
        m = re.match(r"^(\w+)\s+peak ratio long/short: ([\d.]+)", line)
        if m:
            ratios[m.group(1)] = float(m.group(2))
    if not rows:
        print("could not read benchmarks/memory.py's output:\n" + proc.stdout)
    table(["recording", "peak RSS MB", "RSS after imports MB", "peak after VAD MB", "VAD s"], rows)
    for mode, ratio in ratios.items():
        print(verdict(ratio, 2, f"{mode}: peak RSS ratio long/short"))
    print(f"(benchmarks/memory.py took {wall:.0f} s)")
    results["memory"] = {"machine": info, "rows": rows, "ratios": ratios, "stdout": proc.stdout}


# ---------------------------------------------------------------- 5. one process vs N
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copies(source: Path, dest: Path, copies: int) -> tuple[int, float]:
    from build.sources.audio import probe_duration
    from build.sources.ingest import AUDIO_EXTENSIONS

    files = [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    seconds = sum(probe_duration(str(p)) or 0.0 for p in files)
    for k in range(copies):
        folder = dest / f"copy{k}"
        folder.mkdir(parents=True)
        for p in files:
            shutil.copy2(p, folder / p.name)  # recording ids copy<k>__<name>
    return len(files) * copies, seconds * copies


def section_processes(args, results: dict) -> None:
    info = header(f"5. One process vs {args.num_processes} (cpqa.py build --stop-after condense)")
    with tempfile.TemporaryDirectory(prefix="cpqa-procs-") as tmp:
        source = Path(tmp) / "source"
        n_files, audio_s = _copies(Path(args.source), source, args.copies)
        build_args = ["cpqa.py", "build", str(source), "--profile", args.profile, "--stop-after", "condense", "--quiet",
                      "--set", f"runtime.recordings_per_shard={args.recordings_per_shard}"]  # fmt: skip
        if args.device not in ("auto", "cuda"):  # "auto"/"cuda": each rank takes cuda:<local rank> when there are GPUs
            build_args += ["--set", f"runtime.device={args.device}"]
        for item in args.set:
            build_args += ["--set", item]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(args.num_processes),
                  "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())]  # fmt: skip
        runs = {}
        for name, prefix in (("1 process", [sys.executable]), (f"{args.num_processes} processes", launch)):
            out = Path(tmp) / name.replace(" ", "-")
            cmd = [*prefix, *build_args, "--out", str(out)]
            started = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise SystemExit(f"{name} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()[-3000:]}")
            totals = stage_totals(out / "work")
            shown = " ".join(shlex.quote(c) for c in ["python" if c == sys.executable else c for c in cmd])
            runs[name] = {"wall_s": wall, "stages": totals, "command": shown.replace(tmp, "$TMP"), "out": out}
        from datasets import load_from_disk

        rows_of = {name: load_from_disk(str(r["out"] / "condensed")).to_list() for name, r in runs.items()}
        identical = len({json.dumps(rows, sort_keys=True, default=str) for rows in rows_of.values()}) == 1
        n_rows = len(next(iter(rows_of.values())))
    shards = runs["1 process"]["stages"]["label"]["tasks"]
    print(f"source: {args.copies} copies of `{args.source}` = {n_files} recordings, {audio_s / 60:.1f} min of audio, "
          f"{shards} shards of {args.recordings_per_shard}; profile {args.profile}; OMP_NUM_THREADS=1 for both; fresh output folders. "
          f"Commands (env OMP_NUM_THREADS=1, $TMP a temporary folder):\n")
    for name, r in runs.items():
        print(f"- {name}: `{r['command']}`")
    print()
    base = runs["1 process"]["wall_s"]
    rows = []
    for name, r in runs.items():
        stages = r["stages"]
        per_rank = {s: stages[s]["wall_by_rank"] for s in ("vad", "label", "condense") if s in stages}
        rank_text = "; ".join(f"{s} " + "/".join(f"{v:.0f}" for _, v in sorted(w.items())) for s, w in per_rank.items())
        rows.append([name, r["wall_s"], base / r["wall_s"], audio_s / r["wall_s"], rank_text])
    table(["run", "wall s", "speed-up", "audio s/s", "task wall s per rank (vad; label; condense)"], rows)
    print(f"condensed rows identical: {'yes' if identical else 'NO'} ({n_rows} rows). "
          f"{os.cpu_count()} cores on this machine: {args.num_processes} processes at 1 thread each can at best use "
          f"{min(args.num_processes, os.cpu_count())} of them.")
    results["processes"] = {"machine": info, "files": n_files, "audio_s": audio_s, "identical": identical,
                            "runs": {k: {kk: vv for kk, vv in v.items() if kk != "out"} for k, v in runs.items()}}


# ---------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", nargs="?", default=str(SAMPLES), help="audio folder (default: the bundled data/samples)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run this section (repeatable); default: all")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1")
    parser.add_argument("--profile", choices=("tiny", "paper"), default="tiny", help="models of sections 1 and 5")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (sections 1, 2, 5)")
    parser.add_argument("--stop-after", choices=("condense",), help="section 1: stop after condense instead of stubbing QA")
    parser.add_argument("--precision", default="auto", help="section 3: auto, float32, float16, bfloat16")
    parser.add_argument("--segments", type=int, help="section 3: segments (default 2 on CPU, 16 on GPU)")
    parser.add_argument("--segment-s", type=float, default=32.0, help="section 3: seconds per segment")
    parser.add_argument("--batch-size", type=int, help="section 3: windows per batch (default 16)")
    parser.add_argument("--repeats", type=int, help="section 3: timed repeats, median (default 1 on CPU, 3 on GPU)")
    parser.add_argument("--dimension-layers", type=int, default=12, help="section 3: audeering's checkpoint has 12 (pruned from 24)")
    parser.add_argument("--fullsize-models", nargs="+", choices=("dimension", "gender", "emotion"), help="section 3: only these")
    parser.add_argument("--memory-args", nargs=argparse.REMAINDER, default=[], help="section 4: arguments for benchmarks/memory.py (last)")
    parser.add_argument("--copies", type=int, default=8, help="section 5: copies of the source")
    parser.add_argument("--recordings-per-shard", type=int, default=2, help="section 5")
    parser.add_argument("--num-processes", type=int, default=2, help="section 5")
    parser.add_argument("--json", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    args.source = str(Path(args.source).resolve())
    results: dict = {"command": command_line()}
    print(f"# cpqa scale-out benchmark\n\ncommand: `{command_line()}`")
    for name in SECTIONS:
        if args.only and name not in args.only:
            continue
        forget_decoders()
        globals()[f"section_{name}"](args, results)
        sys.stdout.flush()
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
