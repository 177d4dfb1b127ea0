#!/usr/bin/env python
"""cpqa: contextual paralinguistic QA data from in-the-wild speech.

    python cpqa.py demo                       # offline: bundled audio, tiny local models
    python cpqa.py build SOURCE --out DIR     # SOURCE: file, folder, manifest (.csv/.jsonl),
                                              #   save_to_disk folder, or hf://owner/name[:split]
    python cpqa.py build SOURCE --out DIR --profile tiny --set condense.x=0.6 --set runtime.device=cuda

Options shared by the build commands: ``--config FILE`` (YAML or JSON, any subset of the config tree),
``--set key=value`` (repeatable, dotted keys, JSON values), ``--profile paper|tiny``.
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
    from build.config import Config, paper_config, tiny_config

    if args.profile == "tiny":
        from build.tiny import build_tiny_models

        config = tiny_config(str(build_tiny_models(TINY_MODELS)))
    else:
        config = paper_config()
    if args.config:
        text = Path(args.config).read_text()
        if args.config.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        merged = config.to_dict()
        _deep_update(merged, data)
        config = Config.from_dict(merged)
    return config.with_overrides(args.set or [])


def _deep_update(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "alpha":
            _deep_update(base[key], value)
        else:
            base[key] = value


def run_build(source: str, out: str, config) -> int:
    from build.pipeline import run_labelling, write_outputs

    result = run_labelling(source, config, work_dir=Path(out) / "work")
    out_dir = write_outputs(result, out)
    print(format_report(result, out_dir))
    return 0


def format_report(result, out_dir: Path) -> str:
    report = result.report()
    lines = [f"cpqa build ({len(result.ledger)} recordings in)"]
    drops = report["drops"]
    stage_of_count = {
        "recordings with speech": "vad",
        "segments within length": "length",
        "segments labelled": "label",
        "segments passing occurrence": "occurrence",
        "condensed segments": "sampling",
    }
    for name, count in report["counts"].items():
        lines.append(f"  {name:<30} {count:>6}")
        for reason, n in sorted(drops.get(stage_of_count.get(name, ""), {}).items()):
            lines.append(f"      dropped: {n} {reason}")
    statuses = report["recordings"]
    lines.append("recordings: " + ", ".join(f"{statuses.get(s, 0)} {s}" for s in ("kept", "dropped", "failed")))
    for entry in result.ledger:
        if entry["status"] != "kept":
            lines.append(f"  {entry['recording_id']}: {entry['status']} at {entry['stage']}: {entry['reason']}")
    if report["primary_emotions"]:
        lines.append("primary emotions: " + ", ".join(f"{k} {v}" for k, v in sorted(report["primary_emotions"].items())))
    lines.append(f'open with: datasets.load_from_disk("{out_dir / "condensed"}")')
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpqa", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def config_options(p, profile):
        p.add_argument("--profile", choices=("paper", "tiny"), default=profile)
        p.add_argument("--config", help="YAML or JSON file with config values")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one config value")

    demo = sub.add_parser("demo", help="run the pipeline offline on the bundled sample audio")
    demo.add_argument("--out", default="runs/demo")
    config_options(demo, "tiny")
    build_cmd = sub.add_parser("build", help="build from your own audio")
    build_cmd.add_argument("source")
    build_cmd.add_argument("--out", required=True)
    config_options(build_cmd, "paper")

    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("CPQA_LOG", "WARNING"))
    if args.command == "demo":  # offline by construction; set before transformers/datasets import
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = load_config(args)
    if args.command == "demo":
        return run_build(str(SAMPLES), args.out, config)
    return run_build(args.source, args.out, config)


if __name__ == "__main__":
    sys.exit(main())
