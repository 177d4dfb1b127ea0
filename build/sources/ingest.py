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

Recording ids of files (a folder, a single file, a manifest row without ``recording_id``): ``slug``
of the path below the folder without its extension (``sub/Café 1.wav`` -> ``sub__Café_1``; letters
and digits of any script kept, NFC). Ids are unique: a given id (a manifest's ``recording_id``) is
kept and may not repeat (an error naming the rows); a derived id, or a repeated id of a dataset's
own column, that is already taken gets ``_`` + 6 hex digits of the sha1 of its key: the path below
the folder, the manifest's path cell as written, or the dataset row's reference (``a.mp3`` beside
``a.flac`` -> ``a_931e6b``), see ``unique_ids``. A null or empty ``recording_id``
cell of a dataset is an error naming the row's reference.

Manifests (and calibration label files, through ``read_rows``) are UTF-8, with or without a
byte-order mark; a row without an audio path, or text that is not UTF-8, is an error naming the
file and the row (CSV: ``row N``, data rows from 1) or line (JSONL: ``line N``).

References are decoded on demand by ``build.sources.audio`` (its docstring defines the form); nothing is
downloaded or copied, and ``cache_dir`` is no longer written (the argument stays for callers).
Recording ids: the ``recording_id`` column when the dataset has one, else ``<label>-<row:08d>``
with the row counted over the whole split (label: the folder name, or ``owner__name``).

Output columns (``schema.RECORDING``): ``recording_id``, ``audio_path``, ``error`` (set only for a
manifest row that is refused, see below), then ``probe_recordings`` adds ``duration``, ``error``,
``sha256`` and ``drop_reason``. A file that is missing, empty, truncated or not audio keeps its row
with the error (one line: the file or reference, then the problem) and the reason constant, so it
is accounted for at the end of the build; one bad file never stops it.

Edge rules
- A manifest row whose path leaves the manifest's folder (``../``, an absolute path elsewhere, a
  symlink resolving elsewhere) is refused (``OUTSIDE_ROOT``) without being opened, unless
  ``allow_outside_root=True`` (``cpqa.py build --allow-outside-root``).
- A RIFF/WAVE file holding less data than its header promises is refused as truncated
  (``TRUNCATED``), with both lengths in the message; a zero-byte file is ``EMPTY``.
- ``sha256`` is the hash of the file's bytes (streamed; null for table references, whose bytes live
  inside a Parquet/Arrow file). ``mark_duplicates``: of recordings with the same hash, the first by
  id is processed and each later one is recorded as ``DUPLICATE`` of it, never processed twice.
- An empty folder, or a folder with no audio file, is an error (there is nothing to build).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import unicodedata
from pathlib import Path
from typing import NamedTuple

from datasets import Dataset, Features

from ..core.errors import first_line, json_object
from ..core.schema import RECORDING
from . import audio
from .audio import AudioError, probe_duration

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a")
_PATH_COLUMNS = ("audio_path", "path", "audio", "file")

# drop reasons decided here (the ``error`` column says which file and what exactly)
FILE_NOT_FOUND = "file not found"
EMPTY = "empty file"
TRUNCATED = "truncated file"
UNREADABLE = "unreadable audio"
OUTSIDE_ROOT = "outside the manifest's folder"
DUPLICATE = "duplicate of another recording"
REASONS = (FILE_NOT_FOUND, EMPTY, TRUNCATED, UNREADABLE, OUTSIDE_ROOT, DUPLICATE)


def list_recordings(source: str | Path, cache_dir: str | Path | None = None, *, allow_outside_root: bool = False) -> Dataset:
    """Rows ``recording_id``, ``audio_path``, ``error`` for every recording named by ``source`` (``cache_dir`` is unused).

    ``allow_outside_root``: read manifest rows whose file lies outside the manifest's folder."""
    text = str(source)
    if text.startswith("hf://"):
        return _from_hub(text[len("hf://") :])
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        return _from_saved(path)
    if path.is_dir():
        everything = [p for p in path.rglob("*") if p.is_file()]
        if not everything:
            raise ValueError(f"{path}: the folder is empty")
        files = sorted(p for p in everything if p.suffix.lower() in AUDIO_EXTENSIONS)
        if not files:
            raise ValueError(f"{path}: no audio files ({', '.join(AUDIO_EXTENSIONS)}) among its {len(everything)} file(s)")
        relative = [p.relative_to(path) for p in files]
        return _table([Listed(_id_from_path(r), str(p.resolve()), key=r.as_posix())
                       for r, p in zip(relative, files)])
    if path.suffix.lower() in (".csv", ".jsonl"):
        return _table(read_manifest(path, allow_outside_root))
    return _table([Listed(_id_from_path(Path(path.name)), str(path.resolve()), key=path.name)])


def probe_recordings(batch: dict[str, list]) -> dict[str, list]:
    """Batched map: ``audio_path`` (and ``error`` when listed) -> ``duration``, ``error``, ``sha256``, ``drop_reason``.

    The header only, plus one streamed read for the hash: samples are checked where they are decoded
    anyway (VAD). A row already refused by the listing keeps its error and is not opened."""
    out: dict[str, list] = {"duration": [], "error": [], "sha256": [], "drop_reason": []}
    for path, listed in zip(batch["audio_path"], batch.get("error") or [None] * len(batch["audio_path"])):
        duration, digest, reason, error = None, None, None, listed
        if listed is not None:
            reason = OUTSIDE_ROOT
        else:
            try:
                duration, digest = _probe_one(path)
            except _Refused as exc:
                reason, error = exc.reason, str(exc)
            except AudioError as exc:
                reason, error = UNREADABLE, str(exc)
            except OSError as exc:  # a file that cannot be read while hashing (permissions, I/O error)
                reason, error = UNREADABLE, f"{path}: cannot read the file ({first_line(exc, with_type=False)})"
        out["duration"].append(duration)
        out["error"].append(error)
        out["sha256"].append(digest)
        out["drop_reason"].append(reason)
    return out


class _Refused(AudioError):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _probe_one(path: str) -> tuple[float, str | None]:
    if audio.is_reference(path):
        return probe_duration(path), None
    file = Path(path)
    if not file.is_file():
        raise _Refused(FILE_NOT_FOUND, f"{path}: file not found")
    if file.stat().st_size == 0:
        raise _Refused(EMPTY, f"{path}: empty file (0 bytes)")
    duration = probe_duration(path)
    lengths = audio.riff_data_seconds(path)
    if lengths is not None and lengths[1] < lengths[0] - 1e-3:
        raise _Refused(TRUNCATED, f"{path}: truncated: header says {lengths[0]:.1f} s, {lengths[1]:.2f} s of data")
    return duration, content_hash(path)


def content_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def mark_duplicates(ids: list[str], paths: list[str], hashes: list[str | None]) -> list[str | None]:
    """Per row, None or the error of a duplicate: the same bytes as an earlier row (rows in id order)."""
    first: dict[str, int] = {}
    out: list[str | None] = []
    for i, digest in enumerate(hashes):
        if digest is None or digest not in first:
            if digest is not None:
                first[digest] = i
            out.append(None)
            continue
        j = first[digest]
        out.append(f"{paths[i]}: same content (sha256 {digest[:12]}) as {ids[j]} ({paths[j]}); processed once, as {ids[j]}")
    return out


class Listed(NamedTuple):
    """One listed recording before its id is made unique (see ``unique_ids``)."""

    recording_id: str
    audio_path: str
    error: str | None = None  # set only for a manifest row that is refused
    key: str = ""  # what the hash suffix of a taken id is made from (module docstring)
    explicit: bool = False  # the id was given (a manifest's recording_id column), not derived from the path


def _table(rows: list[Listed]) -> Dataset:
    """The listing (``error``: null unless the row is refused), ids made unique by ``unique_ids``."""
    ids = unique_ids(rows)
    columns = {"recording_id": ids, "audio_path": [r.audio_path for r in rows],
               "error": [r.error for r in rows]}
    return Dataset.from_dict(columns, features=Features({c: RECORDING[c] for c in columns}))


def slug(relative: str | Path) -> str:
    """A recording id from a file's path (relative to the listed folder, its extension dropped).

    NFC first; letters, digits and combining marks of any script are kept, and ``_ . -``; every other run
    of characters (spaces, punctuation, symbols, ``/``) becomes one ``_`` (folders: ``/`` -> ``__``
    first). For ASCII names this is the former rule ``[^A-Za-z0-9_.-]+ -> _``. A slug of dots only
    (``..``) becomes ``_``. The result is a safe file name and never holds ``/``."""
    text = unicodedata.normalize("NFC", str(relative)).replace("/", "__")
    marked = "".join(c if c in "_.-" or unicodedata.category(c)[0] in "LNM" else "\0" for c in text)
    out = re.sub("\0+", "_", marked)  # NUL marks a character to replace: no file name holds one
    return "_" if set(out) <= {"."} else out


def _id_from_path(relative: Path) -> str:
    return slug(relative.with_suffix(""))


def unique_ids(rows: list[Listed]) -> list[str]:
    """One id per row, all distinct; an id that is unique stays as it is.

    Given ids (``explicit``) are claimed first (a manifest refuses repeated ones before this, see
    ``read_manifest``); then, in listing order, a derived id, or a repeated id of a dataset's column,
    that is already taken gets ``_`` + the first 6 hex digits of sha1(``key``), then ``_2``, ``_3``, ...
    after that while taken. No suffixed id can take an id that another row has as its own."""
    taken = {r.recording_id for r in rows}
    out: list[str | None] = [r.recording_id if r.explicit else None for r in rows]
    claimed = {r.recording_id for r in rows if r.explicit}
    for i, row in enumerate(rows):
        if row.explicit:
            continue
        if row.recording_id not in claimed:
            claimed.add(row.recording_id)
            out[i] = row.recording_id
            continue
        base = f"{row.recording_id}_{hashlib.sha1(row.key.encode()).hexdigest()[:6]}"
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate)
        out[i] = candidate
    return out


def read_rows(path: Path, what: str = "recordings") -> list[tuple[str, dict]]:
    """``(where, record)`` for each row of a ``.csv`` (header row) or ``.jsonl`` file, read as UTF-8 with
    or without a byte-order mark. ``where`` names the row in messages: ``row N`` for a CSV (data rows
    from 1, the header not counted), ``line N`` for a JSONL file (its line number; blank lines are
    skipped). Text that is not UTF-8, a JSONL line that is not a JSON object, or no row at all (naming
    ``what``) is a ``ValueError`` naming the file (and line)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        byte = data[exc.start]
        problem = f"not UTF-8 text (byte 0x{byte:02x}); save it as UTF-8"
        raise ValueError(f"{path}: line {line}: {problem}") from None
    if path.suffix.lower() == ".csv":
        rows = _csv_rows(path, text)
    elif path.suffix.lower() == ".jsonl":
        rows = []
        for n, line in enumerate(text.split("\n"), 1):
            if line.strip():
                rows.append((f"line {n}", json_object(line, f"{path}:{n}")))
    else:
        raise ValueError(f"{path}: expected a .csv or .jsonl file")
    if not rows:
        raise ValueError(f"{path}: lists no {what}")
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        return [(f"row {n}", record) for n, record in enumerate(reader, 1)]
    except csv.Error as exc:
        line = reader.line_num + 1  # the line being read
        raise ValueError(f"{path}: line {line}: not CSV ({exc})") from None


def read_records(path: Path, what: str = "recordings") -> list[dict]:
    """The rows of a ``.csv`` or ``.jsonl`` file as dicts (``read_rows`` without the row names)."""
    return [record for _, record in read_rows(path, what)]


def read_manifest(path: Path, allow_outside_root: bool = False) -> list[Listed]:
    """One ``Listed`` per manifest row, in order (the ids not yet made unique).

    A row without an audio path (an empty cell, ``,,``, a JSONL line without the key) is an error
    naming the file and row. ``recording_id``: given ids are kept as they are and must be distinct
    (a repeat is an error naming every row that has it); an empty or null one is derived from the
    file name (``slug``) and suffixed where it collides (``unique_ids``)."""
    rows = read_rows(path)
    column = next((c for c in _PATH_COLUMNS if c in rows[0][1]), None)
    if column is None:
        found = ", ".join(map(str, rows[0][1]))
        wanted = ", ".join(_PATH_COLUMNS)
        raise ValueError(f"{path}: the manifest needs one of the columns {wanted}; it has {found}")
    _refuse_repeated_ids(path, rows)
    root = path.parent.resolve()
    out = []
    for where, record in rows:
        if record.get(column) is None or not str(record[column]).strip():
            raise ValueError(f"{path}: {where}: no audio path ({column!r} is missing or empty)")
        listed = str(record[column])
        audio = Path(listed)
        audio = (audio if audio.is_absolute() else path.parent / audio).resolve()  # symlinks followed
        given = _given_id(record)
        refused = None
        if not allow_outside_root and not audio.is_relative_to(root):
            refused = f"{path}: {listed!r} resolves to {audio}, outside the manifest's folder {root}: refused (--allow-outside-root reads it)"
        rid = given if given is not None else _id_from_path(Path(audio.name))
        out.append(Listed(rid, str(audio), refused, key=listed, explicit=given is not None))
    return out


def _given_id(record: dict) -> str | None:
    value = record.get("recording_id")
    return None if value is None or not str(value).strip() else str(value)


def _refuse_repeated_ids(path: Path, rows: list[tuple[str, dict]]) -> None:
    where: dict[str, list[str]] = {}
    for name, record in rows:
        given = _given_id(record)
        if given is not None:
            where.setdefault(given, []).append(name)
    repeated = [f"{rid!r} ({', '.join(names)})" for rid, names in where.items() if len(names) > 1]
    if repeated:
        listed = "; ".join(repeated)
        problem = f"a recording_id is given to more than one row: {listed}; give each its own id, or none"
        raise ValueError(f"{path}: {problem}")


def dataset_id(value, reference: str) -> str:
    """A dataset's own ``recording_id`` cell as an id; a null or empty one is an error naming the row."""
    if value is None or not str(value).strip():
        what = "null" if value is None else "empty"
        raise ValueError(f"{reference}: recording_id is {what}; every row of the column needs an id")
    return str(value)


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
    if "recording_id" in data.column_names:
        ids = [dataset_id(rid, ref) for rid, ref in zip(data["recording_id"], refs)]
    else:
        ids = [f"{label}-{i:08d}" for i in range(len(refs))]
    return _table([Listed(rid, ref, key=ref) for rid, ref in zip(ids, refs)])


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
    rows: list[Listed] = []
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
            ref = audio.make_reference("parquet", url, column, row)
            rid = dataset_id(ids[row], ref) if ids else f"{label}-{len(rows):08d}"
            rows.append(Listed(rid, ref, key=ref))
    return _table(rows)


def _struct_audio_column(schema, where: str) -> str:
    import pyarrow as pa

    for field in schema:
        if pa.types.is_struct(field.type) and {f.name for f in field.type} >= {"bytes", "path"}:
            return field.name
    raise ValueError(f"{where}: the dataset has no Audio column (columns: {', '.join(schema.names)})")
