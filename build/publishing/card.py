"""The dataset card: its YAML header (configs, dataset_info, gating), its text from the template and
the build's numbers, and what a written card says back (build id, publication mode, configs).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from pathlib import Path

from datasets import Dataset

from ..core.schema import EMOTION_FAMILY
from .licences import gating_yaml, publication_text

DEFAULT_CONFIG = "qa"


def configs_yaml(out_dir: str | Path) -> str:
    """The card's ``configs``: every written config with a ``data_files`` entry per split (``qa`` the default)."""
    lines = ["configs:"]
    for name, splits in written_splits(out_dir).items():
        lines.append(f"- config_name: {name}")
        if name == DEFAULT_CONFIG:
            lines.append("  default: true")
        lines.append("  data_files:")
        for split in splits:
            lines += [f"  - split: {split}", f"    path: data/{name}/{split}-*.parquet"]
    return "\n".join(lines)


def render_card(template: str, values: dict[str, str]) -> str:
    """Fill ``$name`` fields; a field the template names but ``values`` lacks is an error."""
    try:
        return string.Template(template).substitute(values)
    except KeyError as exc:
        raise KeyError(f"dataset card template needs a value for ${exc.args[0]}") from exc


def markdown_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def dataset_info_yaml(out_dir: str | Path) -> str:
    """The card's ``dataset_info``: rows and Parquet bytes per config and split, read from the written shards.

    Besides informing the Hub viewer, it makes a rebuild load fresh: ``load_dataset`` on a local
    folder caches under the folder's name and a hash of the card's metadata (not of the data files),
    so without these numbers a rebuild into the same folder would load the previous build's cache.
    """
    import pyarrow.parquet as pq

    lines = ["dataset_info:"]
    for name, splits in written_splits(out_dir).items():
        lines += [f"- config_name: {name}", "  splits:"]
        total = 0
        for split, paths in splits.items():
            size = sum(p.stat().st_size for p in paths)
            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
            total += size
            lines += [f"  - name: {split}", f"    num_bytes: {size}", f"    num_examples: {rows}"]
        lines += [f"  download_size: {total}", f"  dataset_size: {total}"]
    return "\n".join(lines)


def card_header(out_dir: str | Path) -> dict:
    """The YAML header of ``out_dir/README.md`` ({} when there is none)."""
    import yaml

    card = Path(out_dir) / "README.md"
    text = card.read_text() if card.exists() else ""
    return (yaml.safe_load(text.split("---")[1]) or {}) if text.startswith("---") else {}


def written_configs(out_dir: str | Path) -> list[str]:
    """The configs with Parquet shards under ``out_dir/data`` (``qa`` first)."""
    return list(written_splits(out_dir))


_SECTION = re.compile(r"^<!-- cpqa:(\w+) -->\n(.*?)^<!-- /cpqa:\1 -->\n", re.S | re.M)


def card_sections(template: str, configs: list[str]) -> str:
    """The template with each ``<!-- cpqa:NAME -->`` ... ``<!-- /cpqa:NAME -->`` part kept (without its
    marker lines) when NAME is one of ``configs``, and removed otherwise."""
    return _SECTION.sub(lambda m: m.group(2) if m.group(1) in configs else "", template)


def public_model_id(model: str) -> str:
    """Hub ids stay as they are; a local folder is named ``local:<folder name>`` (no local paths in data)."""
    return f"local:{Path(model).name}" if Path(model).exists() else model


def empathy_card_values(samples: Dataset | None) -> dict[str, str]:
    """``$n_empathy`` and ``$empathy_strategy_table`` (samples per family, primary emotion and strategy); the
    card shows them only when the ``empathy`` config was written (``card_sections``)."""
    if samples is None:
        return {"n_empathy": "0", "empathy_strategy_table": "(none)"}
    counts = Counter(
        (EMOTION_FAMILY[t["emotions"]["primary"]], t["emotions"]["primary"], r["response_strategy"]) for t, r in zip(samples["target_utterance"], samples["desired_response"])
    )
    rows = sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[1], kv[0][2]))
    table = markdown_table(("emotion family", "primary emotion", "response strategy", "samples"), [(*key, n) for key, n in rows]) if rows else "(none)"
    return {"n_empathy": str(len(samples)), "empathy_strategy_table": table}


PROFILE_NOTES = {
    "paper": "",
    "tiny": (
        "> **Demo build.** This dataset was made with cpqa's offline profile: its emotion, valence and gender\n"
        "> labels come from tiny random-weight models and its QA pairs from a 135M-parameter LLM. It shows\n"
        "> the pipeline and the format; it is not a benchmark."
    ),
}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _quota_table(quota: dict | None) -> str:
    if not quota:
        return "(none)"
    rows = [(label, q["asked"], q["candidates"], q["sampled"], q["delivered"]) for label, q in quota.items()]
    return markdown_table(("primary emotion", "asked", "candidates", "sampled (with top-ups)", "delivered"), rows)


def _counts_table(values: list, header: str) -> str:
    counts = Counter(v if v is not None else "(none)" for v in values)
    return markdown_table((header, "count"), sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) if counts else "(none)"


def card_values(config, qa: Dataset, segment_rows: Dataset, report: dict, models: dict, *, license: str, sources: str, load_path: str) -> dict[str, str]:
    """Every ``$field`` of dataset_card.md, from the built tables, the funnel and the config."""
    funnel_rows = [(name, count) for name, count in report["counts"].items()]
    for stage, reasons in report["drops"].items():
        funnel_rows += [(f"dropped at {stage}: {reason}", n) for reason, n in sorted(reasons.items())]
    model_rows = [(role, value if isinstance(value, str) else ", ".join(value)) for role, value in models.items()]
    if len(qa):
        model_rows += [("llm_model", ", ".join(sorted(set(qa["llm_model"])))), ("aligner", ", ".join(sorted(set(qa["aligner"]))))]
    c = config
    return {
        "license": license,
        "language": "\n- ".join(sorted({l for l in segment_rows["language"] if l})) or "multilingual",  # YAML list items
        "pretty_name": "CPQA: contextual paralinguistic QA" + (" (demo build)" if c.profile == "tiny" else ""),
        "size_category": _size_category(len(qa)),
        "profile_note": PROFILE_NOTES.get(c.profile, ""),
        "load_path": load_path,
        "n_pairs": str(len(qa)),
        "n_segments": str(len(segment_rows)),
        "n_recordings": str(len(set(segment_rows["recording_id"]))),
        "hours": f"{sum(segment_rows['duration']) / 3600:.2f}",
        "quota_table": _quota_table(report.get("quota")),
        "language_table": _counts_table(segment_rows["language"], "language"),
        "funnel_table": markdown_table(("step", "count"), funnel_rows),
        "models_table": markdown_table(("role", "model"), model_rows),
        "merge_gap_s": f"{c.vad.merge_gap_s:g}",
        "min_segment_s": f"{c.min_segment_s:g}",
        "max_segment_s": f"{c.max_segment_s:g}",
        "emotion_window_s": f"{c.emotion_window.label_s:g}",
        "emotion_context_s": f"{c.emotion_window.context_s:g}",
        "gender_window_s": f"{c.gender_window.label_s:g}",
        "gender_context_s": f"{c.gender_window.context_s:g}",
        "x": f"{c.condense.x:g}",
        "y": f"{c.condense.y:g}",
        "v_neg_max": f"{c.thresholds['v_neg_max']:g}",
        "v_neu_max": f"{c.thresholds['v_neu_max']:g}",
        "alpha": ", ".join(f"{k} {v}" for k, v in c.condense.alpha.items()),
        "samples_per_category": str(c.condense.samples_per_category),
        "seed": str(c.condense.seed),
        "topup_rounds": str(c.condense.topup_rounds),
        "pairs_per_segment": str(c.qa.pairs_per_segment),
        "prompt_version": ", ".join(sorted(set(qa["prompt_version"]))) if len(qa) else "(none)",
        "duplicate_threshold": f"{c.postfilter.duplicate_threshold:g}",
        "sources": sources,
    }


def publication_values(out_dir: str | Path, mode: str, licence: str, segment_splits: list[str], qa_splits: list[str], export_config) -> dict[str, str]:
    """The card fields that depend on the written files, the publication mode and the splits (every
    configured split is listed, an empty one with 0: a recording-disjoint split of few recordings can leave one empty)."""
    names, split_by = list(export_config.splits), export_config.split_by
    clips, pairs = Counter(segment_splits), Counter(qa_splits)
    rule = "one split" if len(names) == 1 else f"{split_by}-disjoint: no {split_by} has clips in two splits"
    return {
        "dataset_info": dataset_info_yaml(out_dir),
        "configs": configs_yaml(out_dir),
        "publish": mode,
        "gating": gating_yaml(mode),
        "publication_note": publication_text(mode, licence),
        "split_name": next((n for n in names if clips[n]), names[0]),
        "split_rule": rule,
        "split_table": markdown_table(("split", "clips", "QA pairs"), [(n, clips[n], pairs[n]) for n in names]),
    }


def written_splits(out_dir: str | Path) -> dict[str, dict[str, list[Path]]]:
    """config -> split -> its Parquet shards, from the files under ``out_dir/data`` (configs sorted, ``qa`` first)."""
    found: dict[str, dict[str, list[Path]]] = {}
    root = Path(out_dir) / "data"
    for path in sorted(root.glob("*/*.parquet")):
        found.setdefault(path.parent.name, {}).setdefault(path.name.split("-")[0], []).append(path)
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != DEFAULT_CONFIG, kv[0])))
