"""Stage 0, ingest: audio files, a folder, a manifest or a datasets source -> one row per recording.

Sources accepted by ``list_recordings``:
- an audio file or a folder searched recursively for ``AUDIO_EXTENSIONS``;
- a ``.csv`` or ``.jsonl`` manifest with an ``audio_path`` (or ``path``/``audio``/``file``) column and
  an optional ``recording_id`` column; relative paths are resolved against the manifest's folder;
- a folder written by ``Dataset.save_to_disk`` or a Hub dataset id (``hf://owner/name[:split]``) with
  an ``Audio`` column: embedded bytes are written once to ``cache_dir`` so later stages can decode spans
  by path.

Output columns (``schema.RECORDING``): ``recording_id``, ``audio_path``, then ``probe_recordings``
adds ``duration`` and ``error``. A file that is missing, empty or not audio keeps its row with the
error, so it is accounted for at the end of the build.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from datasets import Dataset, Features

from .audio import AudioError, probe_duration
from .schema import RECORDING

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
_PATH_COLUMNS = ("audio_path", "path", "audio", "file")


def list_recordings(source: str | Path, cache_dir: str | Path | None = None) -> Dataset:
    """Rows ``recording_id``, ``audio_path`` for every recording named by ``source``."""
    text = str(source)
    if text.startswith("hf://"):
        return _from_datasets(text[len("hf://") :], cache_dir)
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir() and (path / "dataset_info.json").exists():
        return _from_datasets(str(path), cache_dir)
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
            if not Path(path).exists():
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


def _from_datasets(name: str, cache_dir: str | Path | None) -> Dataset:
    from datasets import Audio, load_dataset, load_from_disk

    if Path(name).is_dir():
        data = load_from_disk(name)
        label = Path(name).name
    else:
        repo, _, split = name.partition(":")
        data = load_dataset(repo, split=split or "train")
        label = repo.replace("/", "__")
    if hasattr(data, "keys"):  # a DatasetDict: take its first split
        data = data[next(iter(data.keys()))]
    audio_column = next((c for c, f in data.features.items() if isinstance(f, Audio)), None)
    if audio_column is None:
        raise ValueError(f"{name}: the dataset has no Audio column (columns: {', '.join(data.column_names)})")
    if cache_dir is None:
        raise ValueError(f"{name}: a cache_dir is needed to hold the dataset's embedded audio")
    target = Path(cache_dir) / "ingest" / label
    target.mkdir(parents=True, exist_ok=True)
    data = data.cast_column(audio_column, Audio(decode=False))
    given_ids = data["recording_id"] if "recording_id" in data.column_names else None
    rows = []
    for index, item in enumerate(data[audio_column]):
        source = Path(item.get("path") or f"{index:08d}.wav")
        if item.get("bytes"):
            out = target / f"{index:08d}{source.suffix or '.wav'}"
            if not out.exists():
                out.write_bytes(item["bytes"])
        else:
            out = source
        rid = given_ids[index] if given_ids else f"{label}-{index:08d}"
        rows.append((str(rid), str(Path(out).resolve())))
    return _table(rows)
