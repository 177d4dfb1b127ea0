#!/usr/bin/env python
"""cpqa: contextual paralinguistic QA data from in-the-wild speech.

    python cpqa.py demo                       # offline: bundled audio, tiny local models, embedded LLM
    python cpqa.py build SOURCE --out DIR     # SOURCE: file, folder, manifest (.csv/.jsonl),
                                              #   save_to_disk folder, or hf://owner/name[:split]
    python cpqa.py build SOURCE --out DIR --profile tiny --set condense.x=0.6 --set runtime.device=cuda
    python cpqa.py build SOURCE --out DIR --stop-after condense   # labels and condensation only
    python cpqa.py build SOURCE --out DIR --outputs qa           # QA pairs only (default: qa,empathy)
    accelerate launch --multi_gpu --num_processes 8 cpqa.py build SOURCE --out DIR   # 8 GPUs, same output
                                              # rerun the same command after a crash: it resumes
    python cpqa.py build SOURCE --out DIR --publish metadata-only --splits train=0.8,test=0.2
                                              # no audio in the tables; recording-disjoint splits
    python cpqa.py rehydrate DIR --audio-root MY_COPY   # DIR-rehydrated: audio from your copy, sha256-checked
    python cpqa.py push DIR --repo-id you/name [--public] [--dry-run]   # token from $HF_TOKEN
    python cpqa.py calibrate SOURCE --corpus ravdess [--labels FILE] --out DIR [--write-config FILE]
                                              # Figure 3 (UWA over x, y) and the SER table on labelled speech
    python cpqa.py stats DIR [DIR2 ...] --out stats/   # Table 1 (pairs per category, sets side by side), distributions, plots
    python cpqa.py evaluate DATASET --judge gpt-4o [--judge model=...,base_url=...] --out results/
                                              # Qwen2-Audio answers, LLM judges score (metrics/cpqa)
    python cpqa.py evaluate DATASET --backend openai --base-url http://localhost:8000/v1 --judge ...
                                              # any served audio model (vllm serve Qwen/Qwen2-Audio-7B-Instruct)
    python cpqa.py review DIR [--overlap 2]   # people check pairs and labels, write their own (browser, 127.0.0.1)
    python cpqa.py review export DIR          # qa_reviewed, qa_human, empathy_reviewed + the card's Human review
    python cpqa.py review import DIR FILE.csv # human pairs written elsewhere

Options shared by the build commands: ``--config FILE`` (YAML or JSON, any subset of the config tree),
``--set key=value`` (repeatable, dotted keys, JSON values), ``--profile paper|tiny``, ``--quiet`` (no
progress lines), ``--debug`` (tracebacks instead of one-line errors).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
# Our pipeline package is ./build; PyPA's `build` has the same import name, so ours must come first.
if str(REPO) not in sys.path[:1]:
    sys.path.insert(0, str(REPO))

SAMPLES = REPO / "data" / "samples"
TINY_MODELS = REPO / ".cpqa" / "tiny-models"


def load_config(args: argparse.Namespace):
    from build.core.config import paper_config, tiny_config

    if args.profile == "tiny":
        from build.models.tiny import build_tiny_models

        config = tiny_config(str(build_tiny_models(TINY_MODELS)))
    else:
        config = paper_config()
    if args.config:
        config = config.with_file(args.config)
    config = config.with_overrides(args.set or [])
    return with_export_options(config, args) if hasattr(args, "publish") else config  # calibrate publishes nothing


def with_export_options(config, args: argparse.Namespace):
    """``--publish``, ``--splits`` and ``--split-by`` on top of the config's ``export`` section."""
    import dataclasses

    from build.publishing.splits import parse_splits

    changes = {"publish": args.publish, "splits": parse_splits(args.splits) if args.splits else None}
    changes = {k: v for k, v in changes.items() if v is not None}
    return dataclasses.replace(config, export=dataclasses.replace(config.export, **changes)) if changes else config


DEMO_SOURCES = (
    "The demo audio ships with cpqa (`data/samples/`): six recordings joined from RAVDESS clips "
    "(Livingstone & Russo 2018, PLoS ONE 13(5): e0196391; CC BY-NC-SA 4.0: non-commercial, share-alike), "
    "a one-minute AMI Meeting Corpus excerpt (Carletta et al. 2005; CC BY 4.0) and 89 s of Apollo 11 "
    "air-to-ground radio (NASA, presumed public domain). Because of RAVDESS, this build is CC BY-NC-SA 4.0."
)
def run_build(source: str, out: str, config, *, stop_after: str | None, outputs: str, license: str, sources: str | None, quiet: bool, allow_outside_root: bool = False) -> int:
    from build import pipeline

    card = (REPO / "dataset_card.md").read_text()
    wanted = tuple(o.strip() for o in outputs.split(",") if o.strip())
    result = pipeline.build(
        source, config, out, stop_after=stop_after, outputs=wanted, license=license, sources=sources, card_template=card, progress=not quiet, allow_outside_root=allow_outside_root
    )
    if result is None:  # not rank 0: the main process prints the report
        return 0
    print(pipeline.format_report(result))
    out_dir = Path(out)
    if result.status in ("condensed", "nothing condensed"):
        empty = " (0 rows: nothing was condensed)" if result.status == "nothing condensed" else ""
        print(f'open with: datasets.load_from_disk("{out_dir / "condensed"}"){empty}')
        return 0
    if result.status == "no pairs":
        print(f"no QA pair survived: nothing to export (see {out_dir / 'recordings.jsonl'})")
        return 1
    from build.publishing.card import written_splits

    written = written_splits(out_dir)  # the configs this build wrote, no other
    others = ", ".join(f'load_dataset("{out_dir}", "{name}")' for name in written if name != "qa")
    split = next(iter(written["qa"]))
    print(f'open with: datasets.load_dataset("{out_dir}", split="{split}")   # or {others}')
    return 0


JUDGE_KEYS = ("preset", "model", "base_url", "api_key_env", "name", "max_tokens", "timeout", "max_retries", "temperature", "samples")


def parse_judge(spec: str) -> dict:
    """``model=gpt-4o,base_url=http://...,api_key_env=OPENAI_API_KEY,name=gpt4o`` -> a judge dict; a bare
    word is a preset (``gpt-4o``, ``llama3-70b-awq``), and ``preset=...,base_url=...`` overrides one."""
    if "=" not in spec:
        return {"preset": spec}
    judge = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in JUDGE_KEYS:
            raise SystemExit(f"--judge {spec!r}: expected comma-separated key=value with keys {', '.join(JUDGE_KEYS)}, or a preset name")
        judge[key] = int(value) if key in ("max_tokens", "max_retries", "samples") else float(value) if key in ("timeout", "temperature") else value
    if "model" not in judge and "preset" not in judge:
        raise SystemExit(f"--judge {spec!r}: model=... (or preset=...) is required")
    if "preset" not in judge:
        judge.setdefault("api_key_env", "OPENAI_API_KEY" if "base_url" not in judge else None)
    return judge


def run_evaluate(args) -> int:
    """Score a speech-LLM on QA sets (build/evaluate.py); write predictions.jsonl, results.json and results.md."""
    from build.commands.evaluate import EvaluateOptions, evaluate_sets

    judges = [parse_judge(spec) for spec in args.judge]
    if args.judge_samples:
        judges = [{**judge, "samples": judge.get("samples", args.judge_samples)} for judge in judges]
    datasets, labels = args.dataset, args.labels
    if args.name and len(args.name) > 1 and len(datasets) == 1:  # one folder, several configs (--name qa qa_human)
        datasets, labels = datasets * len(args.name), labels or args.name
    options = EvaluateOptions(
        datasets=datasets,
        judges=judges,
        out=args.out,
        labels=labels,
        name=args.name,
        split=args.split,
        limit=args.limit,
        prompts=tuple(args.prompts),
        backend=args.backend or ("predictions" if args.predictions else "transformers"),
        model=args.model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        predictions=args.predictions,
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        device=args.device,
        window_s=None if args.whole_clip else args.window_s,
        controls=args.controls,
        control_model=parse_judge(args.control_model) if args.control_model else None,
        quiet=args.quiet,
    )
    evaluate_sets(options)
    return 0


def run_calibrate(args, config) -> int:
    from build.commands import calibrate

    result = calibrate.calibrate(
        args.source, corpus=args.corpus, config=config, out_dir=args.out, labels_file=args.labels,
        xs=calibrate.parse_grid(args.x_grid), ys=calibrate.parse_grid(args.y_grid),
    )  # fmt: skip
    best = result.best
    dropped = ", ".join(f"{label} {n}" for label, n in result.dropped.items()) or "none"
    print(f"cpqa calibrate: {result.n_utterances} utterances of {args.corpus} (left out: {dropped}); window labels {'from the cache' if result.cache_hit else 'computed'}")
    for row in result.ser:
        print(f"  SER {row['model']}: accuracy {row['accuracy']:.2f} %, UWA {row['uwa']:.2f} %, weighted F1 {row['weighted_f1']:.2f} %")
    print(f"best cell: x = {best['x']:g}, y = {best['y']:g}: UWA {best['uwa']:.2f} %, accuracy {best['accuracy']:.2f} %, weighted F1 {best['weighted_f1']:.2f} %")
    print(f"wrote {args.out}/grid.csv, ser.csv, calibration.md, heatmap.png")
    if args.write_config:
        print(f"wrote {calibrate.write_config(args.write_config, best)} (use it with --config)")
    return 0


def run_stats(args) -> int:
    from build.publishing import stats

    collected = stats.collect(stats.named_folders(args.dataset, args.names))
    path = stats.write_stats(collected, args.out)
    print(stats.table1(collected))
    print(f"wrote {path} and {', '.join(f'{p}.png' for p in stats.PLOTS)} in {args.out}")
    return 0


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    from build.commands.review.options import add_arguments  # argparse only

    add_arguments(parser)


def _config_options(p: argparse.ArgumentParser, profile: str) -> None:
    p.add_argument("--profile", choices=("paper", "tiny"), default=profile)
    p.add_argument("--config", help="YAML or JSON file with config values")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config value")

def _build_commands(sub) -> list[argparse.ArgumentParser]:
    demo = sub.add_parser("demo", help="run the pipeline offline on the bundled sample audio")
    demo.add_argument("--out", default="runs/demo")
    build_cmd = sub.add_parser("build", help="build from your own audio")
    build_cmd.add_argument("source")
    build_cmd.add_argument("--out", required=True)
    build_cmd.add_argument("--license", default="other", help="licence of the built dataset (that of your audio)")
    build_cmd.add_argument("--sources", help="a sentence on where the audio comes from, for the dataset card")
    build_cmd.add_argument("--allow-outside-root", action="store_true", help="read manifest rows whose file lies outside the manifest's folder")
    for p, profile in ((demo, "tiny"), (build_cmd, "paper")):
        _config_options(p, profile)
        p.add_argument("--stop-after", choices=("condense",), help="stop after condensation (no ASR, no LLM)")
        p.add_argument("--outputs", default="qa,empathy", help="what to build: qa,empathy (default) or qa")
        p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
        p.add_argument("--publish", choices=("full", "gated", "metadata-only"), help="embed the audio (full), embed it behind the Hub's access form (gated), or publish no audio (metadata-only)")
        p.add_argument("--splits", metavar="NAME=FRACTION,...", help="e.g. train=0.8,test=0.2 (default: all in test)")
    return [demo, build_cmd]


def _corpus_commands(sub) -> list[argparse.ArgumentParser]:
    calib_cmd = sub.add_parser("calibrate", help="grid-search condense.x/y and score the SER models on a human-labelled corpus")
    calib_cmd.add_argument("source", help="as for build; labels come from --labels or from a manifest's emotion/label column")
    calib_cmd.add_argument("--corpus", required=True, help="label table of build/corpora.py (ravdess, iemocap, meld, ...; emotion2vec: labels already in the taxonomy)")
    calib_cmd.add_argument("--labels", help="CSV or JSONL: recording_id or audio path, emotion (or label), optional start/end")
    calib_cmd.add_argument("--out", required=True, help="folder for grid.csv, ser.csv, calibration.md, heatmap.png and the window cache")
    calib_cmd.add_argument("--write-config", metavar="FILE", help="write the best x and y as a config fragment (.yaml or .json) for --config")
    calib_cmd.add_argument("--x-grid", default="0.3:0.7:0.05", help="start:stop:step or comma-separated values (default %(default)s)")
    calib_cmd.add_argument("--y-grid", default="0:0.5:0.05", help="start:stop:step or comma-separated values (default %(default)s)")
    _config_options(calib_cmd, "paper")
    stats_cmd = sub.add_parser("stats", help="Table 1 and the distributions of built QA sets, as markdown and PNG plots")
    stats_cmd.add_argument("dataset", nargs="+", help="built folder(s); two or more are shown side by side")
    stats_cmd.add_argument("--names", nargs="+", help="a name per folder for the tables (default: folder names)")
    stats_cmd.add_argument("--out", required=True, help="folder for stats.md and the plots")
    return [calib_cmd, stats_cmd]


def _hub_commands(sub) -> list[argparse.ArgumentParser]:
    push_cmd = sub.add_parser("push", help="upload a built dataset to the Hugging Face Hub")
    push_cmd.add_argument("folder")
    push_cmd.add_argument("--repo-id", required=True)
    push_cmd.add_argument("--public", action="store_true", help="make the dataset public (default: private)")
    push_cmd.add_argument("--dry-run", action="store_true", help="list what would be uploaded; contact nothing")
    rehydrate_cmd = sub.add_parser("rehydrate", help="rebuild the audio of a metadata-only build from your copy of the sources")
    rehydrate_cmd.add_argument("folder")
    rehydrate_cmd.add_argument("--audio-root", required=True, help="folder holding your copy of the source files (searched recursively by name)")
    rehydrate_cmd.add_argument("--into", help="where the copy with audio goes (default: FOLDER-rehydrated)")
    return [push_cmd, rehydrate_cmd]


def _evaluate_command(sub) -> argparse.ArgumentParser:
    eval_cmd = sub.add_parser("evaluate", help="score a speech-LLM on CPQA-style QA sets with LLM judges")
    eval_cmd.add_argument("dataset", nargs="+", help="built folder(s), Parquet or save_to_disk folder(s), or Hub id(s) with context/instruction/answer; two sets over the same clips are also correlated")
    eval_cmd.add_argument("--labels", nargs="+", help="a name per dataset for the table (default: folder names)")
    eval_cmd.add_argument("--name", nargs="+", help="dataset config(s) (default: qa when the set has it): one "
                          "per dataset, or several for one folder (--name qa qa_human: the LLM and the human set)")
    eval_cmd.add_argument("--split", default="test")
    eval_cmd.add_argument("--judge", action="append", required=True, metavar="PRESET|model=...,base_url=...,api_key_env=...,name=...",
                          help="a judge: a preset (gpt-4o, llama3-70b-awq) or key=value settings; repeat for several")
    eval_cmd.add_argument("--judge-samples", type=int, metavar="K", help="K ratings per answer at temperature > 0 (0.7 unless given), averaged")
    eval_cmd.add_argument("--prompts", nargs="+", default=["audiobench", "paralinguistic"])
    eval_cmd.add_argument("--backend", choices=("transformers", "openai", "predictions"),
                          help="who answers: Qwen2-Audio in-process, an OpenAI-compatible audio endpoint, or a file (default: predictions with --predictions, else transformers)")
    eval_cmd.add_argument("--model", default="Qwen/Qwen2-Audio-7B-Instruct", help="speech-LLM: hub id or local folder (transformers), served model name (openai)")
    eval_cmd.add_argument("--base-url", help="the OpenAI-compatible endpoint of --backend openai, e.g. http://localhost:8000/v1")
    eval_cmd.add_argument("--api-key-env", help="variable holding the endpoint's key, e.g. OPENAI_API_KEY (default: none, for local servers)")
    eval_cmd.add_argument("--predictions", help="JSONL of question_id + prediction (or this command's predictions.jsonl): judge these")
    eval_cmd.add_argument("--window-s", type=float, default=30.0, help="answer clips longer than this on their first and last window (default 30, the paper's)")
    eval_cmd.add_argument("--whole-clip", action="store_true", help="send each clip whole, for models that take long audio")
    eval_cmd.add_argument("--controls", action=argparse.BooleanOptionalAction, default=True,
                          help="also answer from the transcript alone (text LLM) and on silenced audio (default on; --no-controls skips)")
    eval_cmd.add_argument("--control-model", metavar="model=...,base_url=...", help="the text LLM of the text-only control (default: the first endpoint judge)")
    eval_cmd.add_argument("--batch-size", type=int, default=4, help="transformers batch size")
    eval_cmd.add_argument("--concurrency", type=int, default=8, help="requests in flight per endpoint")
    eval_cmd.add_argument("--device")
    eval_cmd.add_argument("--limit", type=int, help="only the first N questions of each set")
    eval_cmd.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    eval_cmd.add_argument("--out", default="results")
    return eval_cmd


def _review_command(sub) -> argparse.ArgumentParser:
    review_cmd = sub.add_parser("review", help="human review in the browser (review OUT), its configs and card "
                                "section (review export OUT), human pairs from a file (review import OUT FILE)")
    add_review_arguments(review_cmd)
    return review_cmd


def build_parser() -> argparse.ArgumentParser:
    """The command line: one sub-command per job, each with ``--debug``."""
    parser = argparse.ArgumentParser(prog="cpqa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = [*_build_commands(sub), *_corpus_commands(sub), *_hub_commands(sub), _evaluate_command(sub), _review_command(sub)]
    for p in commands:
        p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # one line for anything a user can cause; the traceback with --debug
        if args.debug:
            raise
        from build.core.errors import first_line

        print(f"cpqa {args.command}: {first_line(error, with_type=False)} (--debug shows the traceback)", file=sys.stderr)
        return 2



def _run(args: argparse.Namespace) -> int:
    # --debug also shows what third-party libraries print while loading models (build.core.logs)
    logging.basicConfig(level="DEBUG" if args.debug else os.environ.get("CPQA_LOG", "WARNING"))
    if not os.environ.get("CPQA_PROGRESS"):  # keep the printed funnel readable
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars too
    if args.command == "evaluate":
        return run_evaluate(args)
    if args.command == "stats":
        return run_stats(args)
    if args.command == "review":
        from build.commands.review.cli import run

        return run(args)
    if args.command == "push":
        from build.publishing.publish import push_build

        push_build(args.folder, args.repo_id, public=args.public, dry_run=args.dry_run, say=print)
        return 0
    if args.command == "rehydrate":
        from build.publishing.publish import rehydrate

        report = rehydrate(args.folder, args.audio_root, args.into)
        print("\n".join(report.lines()))
        return 1 if report.missing or report.changed else 0
    if args.command == "demo":  # offline by construction; set before transformers/datasets import
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(args)
    if args.command == "calibrate":
        return run_calibrate(args, config)
    if args.command == "demo":
        return run_build(str(SAMPLES), args.out, config, stop_after=args.stop_after, outputs=args.outputs, license="cc-by-nc-sa-4.0", sources=DEMO_SOURCES, quiet=args.quiet)
    return run_build(
        args.source, args.out, config, stop_after=args.stop_after, outputs=args.outputs, license=args.license, sources=args.sources, quiet=args.quiet, allow_outside_root=args.allow_outside_root
    )


if __name__ == "__main__":
    sys.exit(main())
