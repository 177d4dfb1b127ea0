"""Calibration on a human-labelled corpus: the paper's Figure 3 (UWA over x, y) and §3.1 (SER scores).

    result = calibrate(source, corpus="ravdess", config=config, out_dir="calib/", labels_file=None)

Input: ``source`` as for a build (folder, manifest, ``save_to_disk`` folder, ``hf://``), listed by
``build.sources.ingest``; the human labels come from ``labels_file`` (CSV or JSONL) or, without one, from the
source itself: a CSV/JSONL manifest's label column, or the label column of a ``save_to_disk`` folder
or ``hf://`` dataset (row by row, as ``build.sources.ingest`` lists them; a ClassLabel gives its names; a
``start``/``end`` column is used too). A labels row names its audio by ``recording_id`` or by a
path column (``audio_path``, ``path``, ``audio``, ``file`` or ``recording``; relative to the labels
file's folder, else to the source folder), gives the label in ``emotion`` or ``label``, and may give
``start``/``end`` (seconds; default: the whole file). Labels are normalised with ``build.sources.corpora``
(``corpus``); utterances whose label has no counterpart are left out and counted. Label files are
read as UTF-8 with or without a byte-order mark (``ingest.read_rows``). A span that cannot be
labelled (``start < 0``, ``end <= start``, past the file's probed end, not a number) refuses the
whole labels file before any model runs, every such row named (``checked_spans``).

Labelling (once, cached): each utterance is cut into the emotion windows of ``config.emotion_window``
(``build.core.windows``); every emotion2vec model of ``config.models.emotion`` gives its nine posteriors
per window and the dimensional model its valence. The window table is written to
``out_dir/cache/windows-<fingerprint>.parquet``; the fingerprint hashes the model ids, the window
spec, the precision and the utterance list, so a rerun (or another grid) runs no model.

Utterance labels:
- SER (§3.1 table), per model and for the ensemble: the argmax over the nine classes of the
  utterance's mean window posterior (the ensemble's window posterior is the pipeline's: the members'
  renormalised posteriors averaged, ``build.models.emotion.average_posteriors``). No usable window: "unknown".
- Condensed label for a cell (x, y) (Figure 3): the pipeline's rule with α = 1 for every sentiment
  class (angry, disgusted, fearful, happy, neutral, sad, surprised). Each window takes the ensemble's
  label; X_E (``build.stages.condense.is_consistent``) keeps it or makes it "unknown"; the utterance's label
  is ``build.stages.condense.primary_label`` over the consistent counts (the largest count; ties to the
  class listed first). No consistent window: "unknown". α = 1 because acted utterances last a few
  seconds (one to three windows), so the build's α (up to 10 windows) would reject all of them; the
  threshold grid is what is being calibrated.

Scores (scikit-learn) against the normalised human labels: UWA = unweighted accuracy = the mean
recall over the classes present in the human labels (``balanced_accuracy_score``); accuracy; F1
weighted by class support. A prediction outside those classes ("unknown", "other") counts as a miss.
``uwa_all_classes`` is the mean recall over the human and the predicted classes together
(``recall_score(average="macro")`` without ``labels``): each predicted class that no human label
has adds a class of recall 0, so it is lower than UWA whenever such a class is predicted.

Best cell: the highest UWA, not ``uwa_all_classes``: UWA is the paper's measure, and "unknown" is
what the consistency check outputs by design, yet as soon as one utterance is "unknown",
``uwa_all_classes`` divides the same recalls by K + 1 classes instead of K, which would push the grid
towards lax thresholds; ties go to the higher accuracy, then the smaller x, then the smaller y.

Outputs in ``out_dir``: ``grid.csv`` (x, y, uwa, accuracy, weighted_f1, uwa_all_classes), ``ser.csv``
(model, as published: a local folder by its name only; accuracy, uwa, weighted_f1, uwa_all_classes),
``calibration.md`` (the definition of UWA, both tables and the best cell), ``heatmap.png`` (UWA over the
grid, the best cell framed); ``write_config`` writes ``{"condense": {"x": ..., "y": ...}}`` as YAML or
JSON for ``--config``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.config import Config
from ..core.schema import EMOTION_LABELS, SENTIMENT_CLASSES
from ..core.windows import explode_windows
from ..core.work import atomic_write, fingerprint
from ..models import dimension, emotion
from ..publishing.card import markdown_table, public_model_id
from ..sources import audio, ingest
from ..sources.corpora import normalise_labels
from ..stages import condense

LABEL_COLUMNS = ("emotion", "label")
PATH_COLUMNS = ("audio_path", "path", "audio", "file", "recording")
# α = 1 for every class that has a sentiment, in EMOTION_LABELS order (the primary rule's tie order).
CALIBRATION_ALPHA = {label: 1 for label in EMOTION_LABELS if any(label in members for members in SENTIMENT_CLASSES.values())}
ENSEMBLE = "ensemble"
GRID_SCORES = ("uwa", "accuracy", "weighted_f1", "uwa_all_classes")  # the columns of grid.csv after x, y
SER_SCORES = ("accuracy", "uwa", "weighted_f1", "uwa_all_classes")  # the columns of ser.csv after model
# the default grid of thresholds (start:stop:step, for ``parse_grid``)
X_GRID = "0.3:0.7:0.05"
Y_GRID = "0:0.5:0.05"


@dataclass(frozen=True)
class Utterances:
    columns: dict[str, list]  # utterance_id, recording_id, audio_path, start, end, label, corpus_label
    dropped: dict[str, int]  # corpus label -> utterances left out (no counterpart in the taxonomy)


@dataclass(frozen=True)
class Calibration:
    grid: list[dict]  # one row per (x, y): x, y, uwa, accuracy, weighted_f1, uwa_all_classes
    ser: list[dict]  # one row per model and the ensemble: model, accuracy, uwa, weighted_f1, uwa_all_classes
    best: dict  # the best grid row
    n_utterances: int
    dropped: dict[str, int]
    cache_hit: bool
    out_dir: Path


# ---------------------------------------------------------------- labelled utterances
def read_utterances(source: str | Path, corpus: str, labels_file: str | Path | None = None) -> Utterances:
    """The labelled utterances of ``source`` (see the module docstring), labels normalised."""
    text = str(source)
    listed = ingest.list_recordings(source)
    saved = Path(text).is_dir() and any((Path(text) / name).exists() for name in ("dataset_info.json", "dataset_dict.json"))
    if labels_file is None and (text.startswith("hf://") or saved):
        labels_path = Path(text)
        records = dataset_records(text, listed["recording_id"])
        rows = [(f"row {n}", record) for n, record in enumerate(records, 1)]
    elif labels_file is None and Path(text).suffix.lower() not in (".csv", ".jsonl"):
        raise ValueError(f"{source}: calibration needs human labels: give --labels FILE (CSV or JSONL with an emotion or label column)")
    else:
        labels_path = Path(labels_file if labels_file is not None else text)
        rows = _read_rows(labels_path)
    records = [record for _, record in rows]
    label_column = next((c for c in LABEL_COLUMNS if c in records[0]), None)
    if label_column is None:
        columns = ", ".join(map(str, records[0]))
        raise ValueError(f"{labels_path}: the labels need an emotion or label column; it has {columns}")
    by_id = dict(zip(listed["recording_id"], listed["audio_path"]))
    by_path = {_resolved(p): rid for rid, p in zip(listed["recording_id"], listed["audio_path"])}
    folder = None if text.startswith("hf://") or not Path(text).is_dir() else Path(text)
    normalised = normalise_labels(corpus, [str(r[label_column]) for r in records])

    columns: dict[str, list] = {k: [] for k in ("utterance_id", "recording_id", "audio_path", "start", "end", "label", "corpus_label")}
    counts: dict[str, int] = {}
    wheres = []
    for (where, record), label in zip(rows, normalised.labels):
        rid = _recording_of(record, by_id, by_path, labels_path, folder, where)
        if label is None:
            continue
        counts[rid] = counts.get(rid, 0) + 1
        wheres.append(where)
        columns["utterance_id"].append(f"{rid}-u{counts[rid] - 1:04d}")
        columns["recording_id"].append(rid)
        columns["audio_path"].append(by_id[rid])
        columns["start"].append(record.get("start"))  # as given; checked and made numbers by checked_spans
        columns["end"].append(record.get("end"))
        columns["label"].append(label)
        columns["corpus_label"].append(str(record[label_column]))
    if not columns["utterance_id"]:
        raise ValueError(f"{labels_path}: no utterance has a label with a counterpart in the taxonomy (dropped: {normalised.dropped})")
    columns = {**columns, **checked_spans(columns, wheres, labels_path)}
    return Utterances(columns, normalised.dropped)


def dataset_records(source: str, recording_ids: list[str]) -> list[dict]:
    """``recording_id`` and the label (and start/end) columns of a ``save_to_disk`` folder or ``hf://``
    dataset, row by row in the order ``build.sources.ingest`` lists its recordings."""
    wanted = (*LABEL_COLUMNS, "start", "end")
    if source.startswith("hf://"):
        repo, _, split = source[len("hf://") :].partition(":")
        columns: dict[str, list] = {}
        for url in ingest.hub_parquet_files(repo, split or "train"):
            with audio.reading():
                parquet, _ = audio.parquet_file(url)
                names = [c for c in wanted if c in parquet.schema_arrow.names]
                table = parquet.read(columns=names)
                info = json.loads((parquet.schema_arrow.metadata or {}).get(b"huggingface", b"{}"))
            features = info.get("info", {}).get("features", {})
            for name in names:
                values = table.column(name).to_pylist()
                class_names = features.get(name, {}).get("names") if features.get(name, {}).get("_type") == "ClassLabel" else None
                columns.setdefault(name, []).extend(class_names[v] if class_names and v is not None else v for v in values)
    else:
        from datasets import DatasetDict, load_from_disk

        data = load_from_disk(source)
        data = data[next(iter(data.keys()))] if isinstance(data, DatasetDict) else data
        columns = {}
        for name in (c for c in wanted if c in data.column_names):
            feature = data.features[name]
            values = data[name]
            columns[name] = [feature.int2str(v) for v in values] if hasattr(feature, "int2str") else values
    if not any(c in columns for c in LABEL_COLUMNS):
        raise ValueError(f"{source}: the dataset has no emotion or label column: give --labels FILE")
    rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
    if len(rows) != len(recording_ids):
        raise ValueError(f"{source}: {len(rows)} label rows for {len(recording_ids)} recordings")
    return [{"recording_id": rid, **row} for rid, row in zip(recording_ids, rows)]


def _read_rows(path: Path) -> list[tuple[str, dict]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such labels file")
    return ingest.read_rows(path, "labelled rows")


def _resolved(path: str) -> str:
    return str(Path(path).resolve()) if "://" not in path and not path.startswith(("arrow:", "parquet:")) else path


def _recording_of(record: dict, by_id: dict, by_path: dict, labels_path: Path, folder: Path | None,
                  where: str) -> str:
    if record.get("recording_id") is not None and str(record["recording_id"]) in by_id:
        return str(record["recording_id"])
    column = next((c for c in PATH_COLUMNS if record.get(c)), None)
    if column is not None:
        relative = Path(str(record[column]))
        for base in (labels_path.parent, folder):
            if base is not None or relative.is_absolute():
                candidate = _resolved(str(relative if relative.is_absolute() else base / relative))
                if candidate in by_path:
                    return by_path[candidate]
    named = record.get("recording_id") or (record.get(column) if column else None)
    raise ValueError(f"{labels_path}: {where} names {named!r}, which is not among the source's recordings")


def checked_spans(columns: dict[str, list], wheres: list[str], labels_path: Path) -> dict[str, list]:
    """``start`` and ``end`` in seconds, each utterance's span checked against its file's probed duration.

    A missing ``start`` is 0 and a missing ``end`` the file's end. Refused: a value that is not a
    finite number, ``start < 0``, ``end <= start`` (an empty span has no window), ``start`` at or after
    the file's end, ``end`` more than ``SPAN_TOLERANCE_S`` past it (an end within that margin is kept
    as given: label files round, and a compressed file's duration is the header's estimate). Every
    refused row is named (at most ``MAX_LISTED``, then how many more) in one error line, before any
    model runs; a file that cannot be probed is an error naming it."""
    durations = _durations(columns["audio_path"])
    start, end, bad = [], [], []
    spans = zip(wheres, columns["recording_id"], columns["audio_path"], columns["start"], columns["end"])
    for where, rid, path, raw_start, raw_end in spans:
        (s, e), problem = _span(raw_start, raw_end, durations[path])
        start.append(s)
        end.append(e)
        if problem is not None:
            bad.append(f"{where} ({rid}): {problem}")
    if bad:
        more = f"; and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        listed = "; ".join(bad[:MAX_LISTED])
        problem = f"{len(bad)} labelled row(s) with an impossible span, nothing was labelled"
        raise ValueError(f"{labels_path}: {problem}: {listed}{more}")
    return {"start": start, "end": end}


SPAN_TOLERANCE_S = 0.1  # rounding in label files, header durations
MAX_LISTED = 20


def _durations(paths: list[str]) -> dict[str, float]:
    distinct = sorted(set(paths))
    probed = ingest.probe_recordings({"audio_path": distinct})
    for error in probed["error"]:
        if error is not None:
            raise ValueError(error)
    return {path: float(duration) for path, duration in zip(distinct, probed["duration"])}


def _span(raw_start, raw_end, duration: float) -> tuple[tuple[float, float], str | None]:
    """``(start, end)`` and None, or the problem with the span (see ``checked_spans``)."""
    values = []
    for name, raw, default in (("start", raw_start, 0.0), ("end", raw_end, duration)):
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            values.append(default)
            continue
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return (0.0, 0.0), f"{name} {raw!r} is not a number"
        if not math.isfinite(value):
            return (0.0, 0.0), f"{name} {raw!r} is not a finite number"
        values.append(value)
    start, end = values
    problem = None
    if start < 0:
        problem = f"start {start:g} s is before the file's start"
    elif start >= duration:
        problem = f"start {start:g} s is at or after the file's end ({duration:g} s)"
    elif end <= start:
        problem = f"end {end:g} s is not after start {start:g} s"
    elif end > duration + SPAN_TOLERANCE_S:
        problem = f"end {end:g} s is past the file's end ({duration:g} s)"
    return (start, end), problem


# ---------------------------------------------------------------- window labels (cached)
WINDOW_SCHEMA = pa.schema(
    [
        ("utterance_id", pa.string()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("member_scores", pa.list_(pa.list_(pa.float64()))),  # one list of nine per emotion model, in config order
        ("valence", pa.float64()),
        ("error", pa.string()),
    ]
)


def window_cache_key(utterances: Utterances, config: Config) -> str:
    params = {
        "emotion_models": list(config.models.emotion),
        "dimension_model": config.models.dimension,
        "emotion_window": dataclasses.asdict(config.emotion_window),
        "precision": config.runtime.precision,
    }
    c = utterances.columns
    return fingerprint("calibrate", params, [list(row) for row in zip(c["utterance_id"], c["audio_path"], c["start"], c["end"])])


def label_windows(utterances: Utterances, config: Config, cache_dir: Path) -> tuple[pa.Table, bool]:
    """The window table (``WINDOW_SCHEMA``) and whether it came from the cache."""
    path = cache_dir / f"windows-{window_cache_key(utterances, config)}.parquet"
    if path.is_file():
        return pq.read_table(path), True
    c = utterances.columns
    segments = {"segment_id": c["utterance_id"], "recording_id": c["recording_id"], "audio_path": c["audio_path"], "start": c["start"], "end": c["end"]}
    spec = dataclasses.asdict(config.emotion_window)
    windows = explode_windows(segments, label_s=spec["label_s"], context_s=spec["context_s"], min_last_fraction=spec["min_last_fraction"])
    rt = config.runtime
    n = len(windows["segment_id"])
    members: list[list] = []
    errors: list[str | None] = [None] * n
    for model in config.models.emotion:
        out = _batched(windows, rt.batch_size, lambda b: emotion.label_categorical_emotion(b, model_ids=[model], device=rt.device, precision=rt.precision))
        members.append(out["emotion_scores"])
        errors = [e or f for e, f in zip(errors, out["emotion_error"])]
    dims = _batched(windows, rt.batch_size, lambda b: dimension.label_dimensions(b, model_id=config.models.dimension, device=rt.device, precision=rt.precision))
    errors = [e or f for e, f in zip(errors, dims["dimension_error"])]
    table = pa.table(
        {
            "utterance_id": windows["segment_id"],
            "start": windows["start"],
            "end": windows["end"],
            "member_scores": [None if errors[i] else [m[i] for m in members] for i in range(n)],
            "valence": [None if errors[i] else dims["valence"][i] for i in range(n)],
            "error": errors,
        },
        schema=WINDOW_SCHEMA,
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return table, False


def _batched(windows: dict[str, list], size: int, fn) -> dict[str, list]:
    out: dict[str, list] = {}
    n = len(windows["segment_id"])
    for lo in range(0, n, max(1, size)):
        for name, values in fn({k: v[lo : lo + size] for k, v in windows.items()}).items():
            out.setdefault(name, []).extend(values)
    return out


# ---------------------------------------------------------------- predictions and scores
def _by_utterance(windows: pa.Table) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in windows.to_pylist():
        if row["error"] is None:
            grouped.setdefault(row["utterance_id"], []).append(row)
    return grouped


def ensemble_scores(member_scores: list[list[float]]) -> list[float]:
    return emotion.average_posteriors(member_scores)


def ser_predictions(utterance_ids: list[str], grouped: dict[str, list[dict]], member: int | None) -> list[str]:
    """Per utterance: argmax of the mean window posterior of one member (index) or of the ensemble (None)."""
    out = []
    for uid in utterance_ids:
        rows = grouped.get(uid, [])
        if not rows:
            out.append("unknown")
            continue
        posteriors = [ensemble_scores(r["member_scores"]) if member is None else emotion.average_posteriors([r["member_scores"][member]]) for r in rows]
        out.append(EMOTION_LABELS[int(np.argmax(np.mean(posteriors, axis=0)))])
    return out


def condensed_predictions(utterance_ids: list[str], grouped: dict[str, list[dict]], x: float, y: float) -> list[str]:
    """Per utterance: the pipeline's primary label after X_E at (x, y), with α = 1 (module docstring)."""
    out = []
    for uid in utterance_ids:
        counts = {label: 0 for label in EMOTION_LABELS}
        for row in grouped.get(uid, []):
            label = EMOTION_LABELS[int(np.argmax(ensemble_scores(row["member_scores"])))]
            if condense.is_consistent(label, row["valence"], x, y):
                counts[label] += 1
        labels = condense.occurrence_labels(counts, CALIBRATION_ALPHA)
        out.append(condense.primary_label(labels, counts, CALIBRATION_ALPHA) or "unknown")
    return out


def scores(truth: list[str], predicted: list[str]) -> dict[str, float]:
    """In percent: ``uwa`` (macro recall over the classes of the human labels: what the paper and the
    best cell use, = scikit-learn's ``balanced_accuracy_score``), accuracy, weighted F1, and
    ``uwa_all_classes``: macro recall over the classes of the labels and the predictions together
    (scikit-learn's ``recall_score(average="macro")`` default), where each predicted class absent
    from the human labels ("unknown", "other") counts as a class of recall 0. Both are the same
    when every predicted class is a human class."""
    from sklearn.metrics import accuracy_score, f1_score, recall_score

    classes = sorted(set(truth))
    every = sorted(set(truth) | set(predicted))
    return {
        "uwa": round(100 * float(recall_score(truth, predicted, labels=classes, average="macro", zero_division=0)), 4),
        "accuracy": round(100 * float(accuracy_score(truth, predicted)), 4),
        "weighted_f1": round(100 * float(f1_score(truth, predicted, labels=classes, average="weighted", zero_division=0)), 4),
        "uwa_all_classes": round(
            100 * float(recall_score(truth, predicted, labels=every, average="macro", zero_division=0)), 4
        ),
    }


def parse_grid(spec: str) -> list[float]:
    """``"0.3:0.7:0.05"`` (start:stop:step, stop included) or ``"0.4,0.5"`` -> the values."""
    try:
        if ":" in spec:
            start, stop, step = (float(v) for v in spec.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = int(round((stop - start) / step)) + 1
            return [round(start + k * step, 6) for k in range(count)]
        return [float(v) for v in spec.split(",")]
    except ValueError:
        raise ValueError(f"grid {spec!r}: expected start:stop:step with step > 0, or comma-separated values") from None


def best_cell(grid: list[dict]) -> dict:
    return max(grid, key=lambda r: (r["uwa"], r["accuracy"], -r["x"], -r["y"]))


# ---------------------------------------------------------------- the command
def calibrate(
    source: str | Path,
    *,
    corpus: str,
    config: Config,
    out_dir: str | Path,
    labels_file: str | Path | None = None,
    xs: list[float] | None = None,
    ys: list[float] | None = None,
) -> Calibration:
    out_dir = Path(out_dir)
    xs = xs if xs is not None else parse_grid(X_GRID)
    ys = ys if ys is not None else parse_grid(Y_GRID)
    utterances = read_utterances(source, corpus, labels_file)
    windows, hit = label_windows(utterances, config, out_dir / "cache")
    grouped = _by_utterance(windows)
    ids, truth = utterances.columns["utterance_id"], utterances.columns["label"]

    grid = [{"x": x, "y": y, **scores(truth, condensed_predictions(ids, grouped, x, y))} for x in xs for y in ys]
    names = [*(public_model_id(m) for m in config.models.emotion), ENSEMBLE]  # local folders by name only
    ser = [{"model": name, **scores(truth, ser_predictions(ids, grouped, None if name == ENSEMBLE else k))} for k, name in enumerate(names)]
    result = Calibration(grid, ser, best_cell(grid), len(ids), utterances.dropped, hit, out_dir)
    write_outputs(result, corpus, xs, ys)
    return result


def write_outputs(result: Calibration, corpus: str, xs: list[float], ys: list[float]) -> None:
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "grid.csv", ("x", "y", *GRID_SCORES), result.grid)
    _write_csv(out / "ser.csv", ("model", *SER_SCORES), result.ser)
    (out / "calibration.md").write_text(markdown_report(result, corpus))
    figure = draw_heatmap(result.grid, xs, ys, result.best)
    figure.savefig(out / "heatmap.png", dpi=120, bbox_inches="tight")


def _write_csv(path: Path, fields: tuple[str, ...], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


UWA_DEFINITION = (
    "UWA (unweighted accuracy) is the mean recall over the emotion classes present in the human labels"
    " (as in the paper; scikit-learn's balanced_accuracy_score): a prediction outside them (unknown, other)"
    " is a miss. 'UWA all classes' averages over the human and the predicted classes together"
    " (scikit-learn's recall_score(average='macro') default): each predicted class absent from the labels"
    " adds a recall of 0. The best cell is chosen on UWA."
)


def markdown_report(result: Calibration, corpus: str) -> str:
    b = result.best
    dropped = ", ".join(f"{label} {n}" for label, n in result.dropped.items()) or "none"
    lines = [
        f"# Calibration on {corpus}: {result.n_utterances} utterances (left out, no counterpart: {dropped})",
        "",
        f"Best cell: x = {b['x']:g}, y = {b['y']:g}: UWA {b['uwa']:.2f} %, accuracy {b['accuracy']:.2f} %, weighted F1 {b['weighted_f1']:.2f} %"
        " (paper, on its labelled set: x = 0.5, y = 0.4, UWA 33.65 %).",
        "",
        UWA_DEFINITION,
        "",
        "## SER per model (§3.1)",
        "",
        markdown_table(
            ("model", "accuracy %", "UWA %", "weighted F1 %", "UWA all classes %"),
            [(r["model"], *_percents(r, SER_SCORES)) for r in result.ser],
        ),
        "",
        "## UWA of the condensed labels over x and y (Figure 3)",
        "",
        markdown_table(
            ("x", "y", "UWA %", "accuracy %", "weighted F1 %", "UWA all classes %"),
            [(f"{r['x']:g}", f"{r['y']:g}", *_percents(r, GRID_SCORES)) for r in result.grid],
        ),
        "",
    ]
    return "\n".join(lines)


def _percents(row: dict, keys: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(f"{row[k]:.2f}" for k in keys)


def draw_heatmap(grid: list[dict], xs: list[float], ys: list[float], best: dict):
    """UWA as an image (rows y, columns x) with the best cell framed; returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    values = np.full((len(ys), len(xs)), np.nan)
    for row in grid:
        values[ys.index(row["y"]), xs.index(row["x"])] = row["uwa"]
    figure = Figure(figsize=(1.0 + 0.6 * len(xs), 1.0 + 0.45 * len(ys)))
    axes = figure.add_subplot()
    image = axes.imshow(values, origin="lower", cmap="viridis", aspect="auto")
    figure.colorbar(image, ax=axes, label="UWA (%)")
    axes.set_xticks(range(len(xs)), [f"{x:g}" for x in xs])
    axes.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
    axes.set_xlabel("x (v_pos_min = x, v_neg_max = 1 - x)")
    axes.set_ylabel("y (y <= v_neu <= 1 - y)")
    for i in range(len(ys)):
        for j in range(len(xs)):
            axes.text(j, i, f"{values[i, j]:.1f}", ha="center", va="center", fontsize=7, color="white")
    column, row = xs.index(best["x"]), ys.index(best["y"])
    axes.add_patch(Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5))
    axes.set_title(f"best: x = {best['x']:g}, y = {best['y']:g}, UWA {best['uwa']:.2f} %")
    return figure


def write_config(path: str | Path, best: dict) -> Path:
    """``{"condense": {"x": ..., "y": ...}}`` as YAML (.yaml/.yml) or JSON, for ``--config``."""
    path = Path(path)
    fragment = {"condense": {"x": best["x"], "y": best["y"]}}
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(fragment, sort_keys=False))
    else:
        path.write_text(json.dumps(fragment, indent=2) + "\n")
    return path
