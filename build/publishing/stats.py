"""Statistics of built QA sets: the paper's Table 1 layout and the distributions behind it.

    tables = collect({"llm": "runs/a", "human": "runs/b"})   # built folders (data/qa, data/segments)
    write_stats(tables, "stats/")                             # stats.md + PNG plots

Read from each build's Parquet shards (never the audio): ``qa`` -> ``category``; ``segments`` ->
``primary_emotion``, ``gender``, ``duration``, ``n_pairs``.

Outputs:
- Table 1: QA pairs per category (emotion, speaker, contextual paralinguistic reasoning, other, then
  any other category found), one count and share column per QA set, side by side, and a total row;
- clips per primary emotion and per gender (a missing label counts as "(none)"), clips per duration
  bin (``DURATION_BIN_S`` wide, left-closed: 30.0 s falls in 30-35 s), clips per number of pairs;
- ``stats.md`` with every table, and ``categories.png``, ``emotions.png``, ``genders.png``,
  ``durations.png``, ``pairs_per_clip.png`` (grouped bars, one colour per set; matplotlib, Agg).

``card_section`` is the same content for the dataset card, with the plots linked relative to the card.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from ..models.categories import CATEGORIES
from .card import markdown_table

DURATION_BIN_S = 5
PLOTS = ("categories", "emotions", "genders", "durations", "pairs_per_clip")


@dataclass(frozen=True)
class SetStats:
    categories: Counter
    emotions: Counter
    genders: Counter
    durations: Counter  # bin label -> clips
    pairs_per_clip: Counter  # pairs kept -> clips


def _read(folder: Path, config: str, columns: list[str]) -> dict[str, list]:
    files = sorted((folder / "data" / config).glob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"{folder}: no built dataset here (data/{config}/*.parquet expected)")
    out: dict[str, list] = {name: [] for name in columns}
    for path in files:
        table = pq.read_table(path, columns=columns)
        for name in columns:
            out[name] += table.column(name).to_pylist()
    return out


def duration_bin(seconds: float) -> str:
    lo = int(math.floor(seconds / DURATION_BIN_S) * DURATION_BIN_S)
    return f"{lo}-{lo + DURATION_BIN_S} s"


def set_stats(folder: str | Path) -> SetStats:
    folder = Path(folder)
    qa = _read(folder, "qa", ["category"])
    segments = _read(folder, "segments", ["primary_emotion", "gender", "duration", "n_pairs"])
    return SetStats(
        categories=Counter(qa["category"]),
        emotions=Counter(e or "(none)" for e in segments["primary_emotion"]),
        genders=Counter(g or "(none)" for g in segments["gender"]),
        durations=Counter(duration_bin(d) for d in segments["duration"]),
        pairs_per_clip=Counter(segments["n_pairs"]),
    )


def named_folders(folders: list[str], names: list[str] | None = None) -> dict[str, str]:
    """Set name -> built folder, as ``cpqa.py stats --names`` gives them (default: each folder's name);
    one distinct name per folder, else a ``ValueError``."""
    names = names or [Path(folder).name for folder in folders]
    if len(names) != len(folders) or len(set(names)) != len(names):
        raise ValueError(f"--names needs one distinct name per folder ({len(folders)} folders, names {names})")
    return dict(zip(names, folders))


def collect(folders: dict[str, str | Path]) -> dict[str, SetStats]:
    """Set name -> its statistics, in the given order."""
    return {name: set_stats(folder) for name, folder in folders.items()}


def _keys(stats: dict[str, SetStats], field: str) -> list:
    """The rows of a table: Table 1's four categories always (then any other found), durations by bin
    start, pair counts by number, labels alphabetically."""
    found = set().union(*(getattr(s, field).keys() for s in stats.values()))
    if field == "categories":
        return [*CATEGORIES, *sorted(found - set(CATEGORIES))]
    if field == "durations":
        return sorted(found, key=lambda label: int(label.split("-")[0]))
    return sorted(found)


def table1(stats: dict[str, SetStats]) -> str:
    """QA pairs per category, each set's count and share side by side (the paper's Table 1)."""
    categories = _keys(stats, "categories")
    header = ["category"] + [h for name in stats for h in (f"{name}: pairs", f"{name}: %")]
    rows = []
    for category in [*categories, "total"]:
        row = [category]
        for s in stats.values():
            total = sum(s.categories.values())
            n = total if category == "total" else s.categories.get(category, 0)
            row += [n, f"{100 * n / total:.1f}" if total else "0.0"]
        rows.append(tuple(row))
    return markdown_table(tuple(header), rows)


def counts_table(stats: dict[str, SetStats], field: str, header: str) -> str:
    rows = [(key, *(getattr(s, field).get(key, 0) for s in stats.values())) for key in _keys(stats, field)]
    return markdown_table((header, *(f"{name}: clips" for name in stats)), rows)


def tables(stats: dict[str, SetStats]) -> dict[str, str]:
    return {
        "categories": table1(stats),
        "emotions": counts_table(stats, "emotions", "primary emotion"),
        "genders": counts_table(stats, "genders", "gender"),
        "durations": counts_table(stats, "durations", "duration"),
        "pairs_per_clip": counts_table(stats, "pairs_per_clip", "pairs per clip"),
    }


TITLES = {
    "categories": "QA pairs per category (Table 1)",
    "emotions": "Clips per primary emotion",
    "genders": "Clips per gender",
    "durations": "Clips per duration",
    "pairs_per_clip": "Clips per number of QA pairs",
}


def plot(stats: dict[str, SetStats], field: str, path: Path) -> Path:
    """Grouped bars of one distribution, a colour per set."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    keys = _keys(stats, field)
    figure = Figure(figsize=(max(5.0, 0.9 * len(keys) * max(1, len(stats))), 3.6))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(stats))
    for k, (name, s) in enumerate(stats.items()):
        counts = getattr(s, field)
        axes.bar([i + k * width for i in range(len(keys))], [counts.get(key, 0) for key in keys], width=width, label=name)
    axes.set_xticks([i + width * (len(stats) - 1) / 2 for i in range(len(keys))], [str(key).replace("contextual paralinguistic reasoning", "CP reasoning") for key in keys], rotation=20)
    axes.set_ylabel("QA pairs" if field == "categories" else "clips")
    axes.set_title(TITLES[field])
    if len(stats) > 1:
        axes.legend()
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def markdown(stats: dict[str, SetStats], image_dir: str | None = None, heading: str = "##") -> str:
    """Every table under its title; with ``image_dir``, each plot linked below its table."""
    parts = []
    for field, table in tables(stats).items():
        parts += [f"{heading} {TITLES[field]}", "", table, ""]
        if image_dir is not None:
            parts += [f"![{TITLES[field]}]({image_dir}/{field}.png)", ""]
    return "\n".join(parts)


def write_stats(stats: dict[str, SetStats], out_dir: str | Path) -> Path:
    """``stats.md`` and the PNG plots in ``out_dir``; returns the markdown's path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for field in PLOTS:
        plot(stats, field, out_dir / f"{field}.png")
    path = out_dir / "stats.md"
    names = ", ".join(stats)
    path.write_text(f"# Statistics of {names}\n\n" + markdown(stats, image_dir="."))
    return path


def card_section(folder: str | Path, image_dir: str = "stats") -> str:
    """The statistics of one build for its dataset card; the plots go to ``folder/<image_dir>``."""
    stats = collect({"this dataset": folder})
    write_stats(stats, Path(folder) / image_dir)
    return markdown(stats, image_dir=image_dir, heading="###").rstrip()
