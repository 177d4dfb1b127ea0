"""Stage 0, ingest: audio files, a folder, a manifest or a datasets source -> one row per recording.

Sources accepted by ``list_recordings``:
- an audio file or a folder searched recursively for ``AUDIO_EXTENSIONS``;
- a ``.csv`` or ``.jsonl`` manifest with an ``audio_path`` (or ``path``/``audio``/``file``) column and
  an optional ``recording_id`` column; relative paths are resolved against the manifest's folder;
- a folder written by ``Dataset.save_to_disk`` (or ``DatasetDict.save_to_disk``: its first split)
  with an Audio column: each row becomes ``arrow:<arrow file>#<column>[<row>]``;
- a Hub dataset ``hf://owner/name[:split]`` (split ``train`` by default) whose data are Parquet
  files, or that the Hub has converted to Parquet (``hub_parquet_files`` says which files): each row
  becomes ``parquet:hf://datasets/owner/name/<file>#<column>[<row>]``. Listing reads the Parquet
  footers and the ``recording_id`` column only, never the audio.

References are decoded on demand by ``build.audio`` (its docstring defines the form); nothing is
downloaded or copied, and ``cache_dir`` is no longer written (the argument stays for callers).
Recording ids: the ``recording_id`` column when the dataset has one, else ``<label>-<row:08d>``
with the row counted over the whole split (label: the folder name, or ``owner__name``).

Output columns (``schema.RECORDING``): ``recording_id``, ``audio_path``, then ``probe_recordings``
adds ``duration`` and ``error``. A file that is missing, empty or not audio keeps its row with the
error (one line: the file or reference, then the problem), so it is accounted for at the end of the
build.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from datasets import Dataset, Features

from . import audio
from .audio import AudioError, probe_duration
from .errors import first_line
from .schema import RECORDING

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
_PATH_COLUMNS = ("audio_path", "path", "audio", "file")


def list_recordings(source: str | Path, cache_dir: str | Path | None = None) -> Dataset:
    """Rows ``recording_id``, ``audio_path`` for every recording named by ``source`` (``cache_dir`` is unused)."""
    text = str(source)
    if text.startswith("hf://"):
        return _from_hub(text[len("hf://") :])
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return _from_saved(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
        if not files:
            raise ValueError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) in this folder")
        return _table([(_id_from_path(p.relative_to(path)), str(p.resolve())) for p in files])
    if path.suffix.lower() in (".csv", ".jsonl"):
        return _table(_read_manifest(path))
    return _table([(_id_from_path(Path(path.name)), str(path.resolve()))])


def probe_recordings(batch: dict[str, list]) -> dict[str, list]:
    """Batched map: ``audio_path`` -> ``duration``, ``error`` (the file opened, or why not)."""
    durations, errors = [], []
    for path in batch["audio_path"]:
        try:
            if not audio.is_reference(path) and not Path(path).exists():
                raise AudioError(f"{path}: file not found")
            durations.append(probe_duration(path))
            errors.append(None)
        except AudioError as exc:
            durations.append(None)
            errors.append(str(exc))
    return {"duration": durations, "error": errors}


def _table(rows: list[tuple[str, str]]) -> Dataset:
    ids = _unique_ids([r[0] for r in rows])
    columns = {"recording_id": ids, "audio_path": [r[1] for r in rows]}
    return Dataset.from_dict(columns, features=Features({c: RECORDING[c] for c in columns}))


def _id_from_path(relative: Path) -> str:
    stem = str(relative.with_suffix("")).replace("/", "__")
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem)


def _unique_ids(ids: list[str]) -> list[str]:
    # Two files can share a stem (a.wav and a.mp3): suffix the later ones, deterministically.
    seen: dict[str, int] = {}
    out = []
    for rid in ids:
        seen[rid] = seen.get(rid, 0) + 1
        out.append(rid if seen[rid] == 1 else f"{rid}_{seen[rid]}")
    return out


def _read_manifest(path: Path) -> list[tuple[str, str]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            records = list(csv.DictReader(f))
    else:
        records = []
        for n, line in enumerate(open(path), 1):
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not a JSON object ({exc.msg})") from exc
    if not records:
        raise ValueError(f"{path}: the manifest lists no recordings")
    column = next((c for c in _PATH_COLUMNS if c in records[0]), None)
    if column is None:
        raise ValueError(f"{path}: the manifest needs one of the columns {', '.join(_PATH_COLUMNS)}; it has {', '.join(records[0])}")
    rows = []
    for record in records:
        audio = Path(str(record[column]))
        audio = audio if audio.is_absolute() else path.parent / audio
        rid = record.get("recording_id") or _id_from_path(Path(audio.name))
        rows.append((str(rid), str(audio.resolve())))
    return rows


def _audio_column(features: dict, names: list[str], where: str) -> str:
    """The first Audio column of a datasets table (from its features, else a ``{bytes, path}`` struct)."""
    for name, feature in features.items():
        if isinstance(feature, dict) and feature.get("_type") == "Audio":
            return name
    for name, feature in features.items():
        if getattr(feature, "_type", None) == "Audio":
            return name
    raise ValueError(f"{where}: the dataset has no Audio column (columns: {', '.join(names)})")


def _from_saved(folder: Path) -> Dataset:
    """A ``save_to_disk`` folder: one ``arrow:`` reference per row (the files are memory-mapped, not copied)."""
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(str(folder))
    if isinstance(data, DatasetDict):  # take its first split
        data = data[next(iter(data.keys()))]
    column = _audio_column(data.features, data.column_names, str(folder))
    files = [str(Path(entry["filename"]).resolve()) for entry in data.cache_files]
    refs = []
    for file in files:
        with audio.reading():
            rows = audio.arrow_table(file).num_rows
        refs.extend(audio.make_reference("arrow", file, column, row) for row in range(rows))
    if len(refs) != len(data):
        raise ValueError(f"{folder}: its Arrow files hold {len(refs)} rows, the dataset {len(data)} (an indices mapping?)")
    label = folder.name
    ids = [str(r) for r in data["recording_id"]] if "recording_id" in data.column_names else [f"{label}-{i:08d}" for i in range(len(refs))]
    return _table(list(zip(ids, refs)))


_SPLIT_WORDS = ("train", "training", "validation", "valid", "val", "dev", "test", "testing", "eval", "evaluation")
_PARQUET_BRANCH = "@refs%2Fconvert%2Fparquet"


def _names_split(relative: str, split: str) -> bool:
    # datasets' own convention: the split is a folder, or a word of the file name delimited by -._ or digits
    parts = relative.split("/")
    if split in parts[:-1]:
        return True
    return re.search(rf"(^|[-._ 0-9]){re.escape(split)}($|[-._ 0-9])", parts[-1]) is not None


def hub_parquet_files(repo: str, split: str) -> list[str]:
    """``hf://`` URLs of the Parquet data files of ``split`` in a Hub dataset, sorted, without reading them.

    The repository's own Parquet files (main branch) whose folder or file name names the split (all of
    them for ``train`` when none names any split); when the repository has none, the Hub's Parquet
    conversion (``refs/convert/parquet``), config ``default`` or else the first config.
    """
    fs = audio.hub_filesystem()
    root = f"datasets/{repo}"
    if not fs.exists(root):
        raise FileNotFoundError(root)
    files = sorted(p for p in fs.find(root) if p.endswith(".parquet"))
    if not files:
        converted = f"{root}{_PARQUET_BRANCH}"
        try:
            files = sorted(p for p in fs.find(converted) if p.endswith(".parquet"))
        except FileNotFoundError:
            files = []
        configs = sorted({p[len(converted) + 1 :].split("/")[0] for p in files})
        if configs:
            config = "default" if "default" in configs else configs[0]
            files = [p for p in files if p.startswith(f"{converted}/{config}/")]
            root = f"{converted}/{config}"
    relative = {p: p[len(root) + 1 :] for p in files}
    chosen = [p for p in files if _names_split(relative[p], split)]
    if not chosen and split == "train" and not any(_names_split(r, w) for r in relative.values() for w in _SPLIT_WORDS):
        chosen = files
    return [f"hf://{p}" for p in chosen]


def _from_hub(name: str) -> Dataset:
    """``owner/name[:split]`` on the Hub: one ``parquet:`` reference per row; only the ids are read."""
    repo, _, split = name.partition(":")
    split = split or "train"
    where = f"hf://{name}"
    try:
        files = hub_parquet_files(repo, split)
    except FileNotFoundError as exc:
        raise ValueError(f"{where}: no such dataset on the Hub, or no access to it") from exc
    except Exception as exc:
        raise ValueError(f"{where}: cannot list the dataset's files ({first_line(exc)})") from exc
    if not files:
        raise ValueError(f"{where}: no Parquet data files for split {split!r} (main branch or refs/convert/parquet)")
    label = repo.replace("/", "__")
    rows: list[tuple[str, str]] = []
    for url in files:
        try:
            with audio.reading():
                parquet, _ = audio.parquet_file(url)
                schema = parquet.schema_arrow
                count = parquet.metadata.num_rows
                ids = parquet.read(columns=["recording_id"]).column(0).to_pylist() if "recording_id" in schema.names else None
            info = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))
        except Exception as exc:  # pyarrow, fsspec or the Hub: one line with the cause
            raise ValueError(f"{url}: cannot read the Parquet file ({first_line(exc)})") from exc
        features = info.get("info", {}).get("features", {})
        column = _audio_column(features, schema.names, url) if features else _struct_audio_column(schema, url)
        for row in range(count):
            rid = str(ids[row]) if ids else f"{label}-{len(rows):08d}"
            rows.append((rid, audio.make_reference("parquet", url, column, row)))
    return _table(rows)


def _struct_audio_column(schema, where: str) -> str:
    import pyarrow as pa

    for field in schema:
        if pa.types.is_struct(field.type) and {f.name for f in field.type} >= {"bytes", "path"}:
            return field.name
    raise ValueError(f"{where}: the dataset has no Audio column (columns: {', '.join(schema.names)})")
