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
    python cpqa.py push DIR --repo-id you/name [--public]         # token from $HF_TOKEN
    python cpqa.py evaluate DATASET --judge model=gpt-4o [--judge model=...,base_url=...] --out results/
                                              # Qwen2-Audio answers, LLM judges score (metrics/cpqa)

Options shared by the build commands: ``--config FILE`` (YAML or JSON, any subset of the config tree),
``--set key=value`` (repeatable, dotted keys, JSON values), ``--profile paper|tiny``, ``--quiet`` (no
progress lines), ``--debug`` (tracebacks instead of one-line errors).
"""

from __future__ import annotations

import argparse
import json
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
    from build.config import paper_config, tiny_config

    if args.profile == "tiny":
        from build.tiny import build_tiny_models

        config = tiny_config(str(build_tiny_models(TINY_MODELS)))
    else:
        config = paper_config()
    if args.config:
        config = config.with_file(args.config)
    return config.with_overrides(args.set or [])


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
        print(f'open with: datasets.load_from_disk("{out_dir / "condensed"}")')
        return 0
    if result.status in ("no pairs", "no samples"):
        what = "QA pair" if result.status == "no pairs" else "empathy sample"
        print(f"no {what} survived: nothing to export (see {out_dir / 'recordings.jsonl'})")
        return 1
    others = ", ".join(f'load_dataset("{out_dir}", "{name}")' for name in ("segments", "empathy") if name != "empathy" or result.empathy is not None)
    print(f'open with: datasets.load_dataset("{out_dir}", split="test")   # or {others}')
    return 0


def parse_judge(spec: str) -> dict:
    """``model=gpt-4o,base_url=http://...,api_key_env=OPENAI_API_KEY,name=gpt4o`` -> a judge dict."""
    judge = {}
    for part in spec.split(","):
        key, sep, value = part.partition("=")
        if not sep or key not in ("model", "base_url", "api_key_env", "name", "max_tokens", "timeout", "max_retries"):
            raise SystemExit(f"--judge {spec!r}: expected comma-separated model=..., base_url=..., api_key_env=..., name=...")
        judge[key] = int(value) if key in ("max_tokens", "max_retries") else float(value) if key == "timeout" else value
    if "model" not in judge:
        raise SystemExit(f"--judge {spec!r}: model=... is required")
    judge.setdefault("api_key_env", "OPENAI_API_KEY" if "base_url" not in judge else None)
    return judge


def run_evaluate(args) -> int:
    """Score a speech-LLM on built QA sets; write results.json and a Table-2 style results.md."""
    import evaluate
    from datasets import load_dataset

    from metrics.cpqa import report

    metric = evaluate.load(str(REPO / "metrics" / "cpqa"))
    judges = [parse_judge(spec) for spec in args.judge]
    predictions = _read_predictions(args.predictions) if args.predictions else None
    results = {}
    for label, source in zip(args.labels or [Path(d).name for d in args.dataset], args.dataset):
        data = load_dataset(source, args.name, split=args.split)
        if args.limit:
            data = data.select(range(min(args.limit, len(data))))
        kwargs = dict(
            questions=data["instruction"],
            references=data["answer"],
            categories=data["category"],
            clip_ids=data["segment_id"],
            judges=judges,
            prompts=args.prompts,
            cache_dir=str(Path(args.out) / "judge-cache"),
        )
        if predictions is not None:
            missing = [q for q in data["question_id"] if q not in predictions]
            if missing:
                raise SystemExit(f"{args.predictions}: no prediction for {len(missing)} question(s), e.g. {missing[0]}")
            kwargs["predictions"] = [predictions[q] for q in data["question_id"]]
        else:
            kwargs.update(audio=data["context"], model=args.model, batch_size=args.batch_size)
            if args.device:
                kwargs["device"] = args.device
        results[label] = metric.compute(**kwargs)
        print(f"{label}: score {results[label]['score']:.2f} (successful only {results[label]['score_successful']:.2f}, success rate {results[label]['success_rate']:.3f})")
        for judge_name, calls in results[label]["judge_calls"].items():
            print(f"  judge {judge_name}: {calls['summary']}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# CPQA evaluation", "", report.table2_markdown(results), ""]
    for label, res in results.items():
        lines += [f"## {label}: by QA category", "", report.category_table_markdown(res), ""]
    if len(results) == 2:
        (a, res_a), (b, res_b) = results.items()
        lines += [f"## Per-clip correlation, {a} vs {b}", "", "| judge | prompt | clips | Pearson | Spearman |", "|---|---|---|---|---|"]
        for judge_name, by_prompt in res_a["judges"].items():
            for prompt in by_prompt:
                c = report.clip_correlation(res_a, res_b, judge_name, prompt)
                lines.append(f"| {judge_name} | {prompt} | {c['n_clips']} | {_fmt(c['pearson'])} | {_fmt(c['spearman'])} |")
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'results.json'} and {out / 'results.md'}")
    return 0


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _read_predictions(path: str) -> dict[str, object]:
    """A JSONL file of ``{"question_id": ..., "prediction": ...}`` lines."""
    out = {}
    for n, line in enumerate(open(path), 1):
        if line.strip():
            record = json.loads(line)
            if "question_id" not in record or "prediction" not in record:
                raise SystemExit(f"{path}:{n}: each line needs question_id and prediction")
            out[record["question_id"]] = record["prediction"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpqa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def config_options(p, profile):
        p.add_argument("--profile", choices=("paper", "tiny"), default=profile)
        p.add_argument("--config", help="YAML or JSON file with config values")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config value")

    demo = sub.add_parser("demo", help="run the pipeline offline on the bundled sample audio")
    demo.add_argument("--out", default="runs/demo")
    build_cmd = sub.add_parser("build", help="build from your own audio")
    build_cmd.add_argument("source")
    build_cmd.add_argument("--out", required=True)
    build_cmd.add_argument("--license", default="other", help="licence of the built dataset (that of your audio)")
    build_cmd.add_argument("--sources", help="a sentence on where the audio comes from, for the dataset card")
    build_cmd.add_argument("--allow-outside-root", action="store_true", help="read manifest rows whose file lies outside the manifest's folder")
    for p, profile in ((demo, "tiny"), (build_cmd, "paper")):
        config_options(p, profile)
        p.add_argument("--stop-after", choices=("condense",), help="stop after condensation (no ASR, no LLM)")
        p.add_argument("--outputs", default="qa,empathy", help="what to build: qa, empathy, or qa,empathy (default)")
        p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    push_cmd = sub.add_parser("push", help="upload a built dataset to the Hugging Face Hub")
    push_cmd.add_argument("folder")
    push_cmd.add_argument("--repo-id", required=True)
    push_cmd.add_argument("--public", action="store_true", help="make the dataset public (default: private)")
    eval_cmd = sub.add_parser("evaluate", help="score a speech-LLM on built QA sets with LLM judges")
    eval_cmd.add_argument("dataset", nargs="+", help="built folder(s) or Hub id(s); two sets over the same clips are also correlated")
    eval_cmd.add_argument("--labels", nargs="+", help="a name per dataset for the table (default: folder names)")
    eval_cmd.add_argument("--name", default="qa", help="dataset config (default qa)")
    eval_cmd.add_argument("--split", default="test")
    eval_cmd.add_argument("--judge", action="append", required=True, metavar="model=...,base_url=...,api_key_env=...,name=...")
    eval_cmd.add_argument("--prompts", nargs="+", default=["audiobench", "paralinguistic"])
    eval_cmd.add_argument("--model", default="Qwen/Qwen2-Audio-7B-Instruct", help="speech-LLM (hub id or local folder)")
    eval_cmd.add_argument("--predictions", help="JSONL of question_id + prediction: judge these instead of running a model")
    eval_cmd.add_argument("--batch-size", type=int, default=4)
    eval_cmd.add_argument("--device")
    eval_cmd.add_argument("--limit", type=int, help="only the first N questions of each set")
    eval_cmd.add_argument("--out", default="results")

    for p in (demo, build_cmd, push_cmd, eval_cmd):
        p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # one line for anything a user can cause; the traceback with --debug
        if args.debug:
            raise
        from build.errors import first_line

        print(f"cpqa {args.command}: {first_line(error, with_type=False)} (--debug shows the traceback)", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=os.environ.get("CPQA_LOG", "WARNING"))
    if not os.environ.get("CPQA_PROGRESS"):  # keep the printed funnel readable
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' "Loading weights" bars too
    if args.command == "evaluate":
        return run_evaluate(args)
    if args.command == "push":
        from build.export import files_to_upload, push
        from build.preflight import check_push

        check_push()
        print("uploading: " + ", ".join(files_to_upload(args.folder)))
        print(push(args.folder, args.repo_id, private=not args.public))
        return 0
    if args.command == "demo":  # offline by construction; set before transformers/datasets import
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(args)
    if args.command == "demo":
        return run_build(str(SAMPLES), args.out, config, stop_after=args.stop_after, outputs=args.outputs, license="cc-by-nc-sa-4.0", sources=DEMO_SOURCES, quiet=args.quiet)
    return run_build(
        args.source, args.out, config, stop_after=args.stop_after, outputs=args.outputs, license=args.license, sources=args.sources, quiet=args.quiet, allow_outside_root=args.allow_outside_root
    )


if __name__ == "__main__":
    sys.exit(main())
