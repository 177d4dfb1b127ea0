"""Publication modes, per-source licences, and ``rehydrate`` (the audio rebuilt from the user's own copy).

Modes (``export.publish``):
- ``full``: the clip's audio is embedded (``context``), as before;
- ``gated``: the same, and the card's YAML carries the Hub's gating fields (``extra_gated_prompt``,
  ``extra_gated_fields``) with the terms, so the Hub asks each user to accept them before download;
- ``metadata-only``: no audio column; each row keeps what locates its audio: ``source_file`` (the
  file name, or the reference of a Hub/Arrow cell), ``source_sha256`` (content hash of the source),
  ``clip_start``/``clip_end`` (recording time), besides its labels, words and QA.

Columns this module adds to the published rows: ``source_sha256`` (sha256 of the source file's bytes;
for an ``arrow:``/``parquet:`` reference, of the referenced cell's audio bytes) and ``license`` (the
source's licence). The card states the most restrictive licence (``most_restrictive``).

``rehydrate(out_dir, audio_root, into)`` finds each source by file name under ``audio_root``, checks its
sha256, and writes a copy of the build into ``into`` (default: ``<out_dir>-rehydrated`` beside it) with
the audio column put back into every Parquet shard (``context``, ``audio`` for ``empathy``) and the
card's ``dataset_info`` updated. ``out_dir`` is never written to: it may be the only copy of the
metadata. Every row is written; a row whose source is missing or whose content changed since the
build gets a null audio cell and is reported (never decoded from a changed file). Run again into the
same ``into`` (recognised by its ``rehydrated.json``) with another root: rows that already have their
audio keep it, and only the others are looked up.

``push_build(out_dir, repo_id, public=..., dry_run=...)`` is ``cpqa.py push``: the token check (not for
a dry run), then what goes up (``files_to_upload``) told line by line before the upload
(``push``), then the URL.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Audio, Dataset

from ..core.errors import PreflightError, first_line
from ..sources import audio
from . import card, export
from .card import card_header, written_splits
from .licences import source_sha256


@dataclass
class RehydrateReport:
    into: Path | None = None  # the folder written
    rows: int = 0  # rows written with their audio
    total: int = 0  # rows written (every row of the build)
    missing: dict[str, int] = field(default_factory=dict)  # source file -> rows without audio
    changed: dict[str, int] = field(default_factory=dict)  # source with another sha256 -> rows without audio

    def lines(self) -> list[str]:
        out = [f"rehydrated {self.rows} of {self.total} rows into {self.into}"]
        out += [f"  missing: {name} ({n} rows without audio)" for name, n in sorted(self.missing.items())]
        changed = "changed since the build (sha256 differs)"
        out += [f"  {changed}: {name} ({n} rows without audio)" for name, n in sorted(self.changed.items())]
        if self.missing or self.changed:
            again = f"run rehydrate again into {self.into} with a root holding these files to fill them"
            out.append(f"  every row is kept; {again}")
        return out


MARKER = "rehydrated.json"  # in a rehydrated copy: the build it was made from
_COPIED = ("README.md", "stats", "report.json", "recordings.jsonl")  # besides data/, from the build


def _index(audio_root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in audio_root.rglob("*"):
        if path.is_file():
            found.setdefault(path.name, []).append(path)
    return found


def _metadata_shards(out_dir: Path) -> list[Path]:
    """The Parquet shards of a metadata-only build; a shard with audio or without provenance is refused."""
    shards = sorted((out_dir / "data").rglob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{out_dir}: no built dataset here (data/*/*.parquet expected)")
    for shard in shards:
        names = pq.read_schema(shard).names
        audio_name = _audio_name(shard)
        if audio_name in names:
            raise ValueError(f"{shard}: already has audio ({audio_name}): rehydrate reads metadata-only builds")
        for column in ("source_file", "source_sha256", "clip_start", "clip_end", "segment_id"):
            if column not in names:
                raise ValueError(f"{shard}: no {column} column: not a cpqa metadata-only build")
    return shards


def _audio_name(shard: Path) -> str:
    return "audio" if shard.parent.name.startswith("empathy") else "context"  # empathy, empathy_reviewed


def _check_into(out_dir: Path, into: Path, build_id: str | None) -> None:
    """``into`` must be another folder than the build, not one holding it, and either new or a
    rehydrated copy of this same build (``MARKER``)."""
    source, target = out_dir.resolve(), into.resolve()
    if target == source or source.is_relative_to(target) or target.is_relative_to(source / "data"):
        never = "rehydrate writes a copy beside it, never over it"
        raise ValueError(f"--into {into}: is or holds the build {out_dir} or its data; {never}")
    if not target.exists():
        return
    try:
        marker = json.loads((target / MARKER).read_text())
    except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
        marker = None
    if marker is None or marker.get("build_id") != build_id:
        what = "is not a rehydrated copy of this build: remove it or pick another folder"
        raise ValueError(f"--into {into}: exists and {what}")


def default_into(out_dir: str | Path) -> Path:
    """``<out_dir>-rehydrated``, beside the build."""
    source = Path(out_dir).resolve()
    return source.with_name(f"{source.name}-rehydrated")


def _locator(index: dict[str, list[Path]]) -> Callable[[str, str], Path | str]:
    """(file name, sha256) -> the file under the root with that name and content, else ``missing`` (no file
    of that name) or ``changed`` (none with that content); each pair is hashed once."""
    verdict: dict[tuple[str, str], Path | str] = {}

    def locate(name: str, sha: str) -> Path | str:
        if (name, sha) not in verdict:
            candidates = index.get(name, [])
            match = next((p for p in candidates if source_sha256(str(p)) == sha), None)
            verdict[(name, sha)] = match if match is not None else ("changed" if candidates else "missing")
        return verdict[(name, sha)]

    return locate


def _earlier_audio(path: Path, audio_name: str, segment_ids: list[str]) -> list[dict | None]:
    """The audio cells of the same shard in an earlier rehydrated copy when it holds the same rows, else
    a null per row."""
    if path.exists():
        table = pq.read_table(path)
        if audio_name in table.column_names and table.column("segment_id").to_pylist() == segment_ids:
            cells = table.column(audio_name).to_pylist()
            return [cell if cell and cell.get("bytes") is not None else None for cell in cells]
    return [None] * len(segment_ids)


_LOCATING = ("id", "segment_id", "source_file", "source_sha256", "clip_start", "clip_end")


def _with_audio(shard: Path, earlier: Path, locate: Callable, report: RehydrateReport) -> Dataset:
    """The rows of ``shard`` with their audio column: kept from ``earlier`` where it has the cell, else
    cut from the verified source, else null (counted in ``report``). Every row and column is kept."""
    audio_name = _audio_name(shard)
    table = pq.read_table(shard)
    rows = table.select([c for c in _LOCATING if c in table.column_names]).to_pydict()
    cells = _earlier_audio(earlier, audio_name, rows["segment_id"])
    found = {}
    for i, (name, sha) in enumerate(zip(rows["source_file"], rows["source_sha256"])):
        if cells[i] is None:
            where = locate(name, sha)
            if isinstance(where, Path):
                found[i] = str(where)
            else:
                bucket = report.missing if where == "missing" else report.changed
                bucket[name] = bucket.get(name, 0) + 1
    names = rows["id"] if audio_name == "audio" else rows["segment_id"]  # the cell's name in a full build
    pick = list(found)
    batch = {"segment_id": [names[i] for i in pick], "audio_path": list(found.values())}
    batch.update(start=[rows["clip_start"][i] for i in pick], end=[rows["clip_end"][i] for i in pick])
    for i, cell in zip(pick, export.embed_segment_audio(batch)["context"]):
        cells[i] = cell
    report.rows += sum(cell is not None for cell in cells)
    report.total += len(cells)
    data = Dataset(table).add_column(audio_name, cells, feature=Audio(sampling_rate=audio.SAMPLE_RATE))
    order = list(table.column_names)
    order.insert(order.index("id") + 1 if audio_name == "audio" else 0, audio_name)  # a full build's order
    return data.select_columns(order)


def rehydrate(out_dir: str | Path, audio_root: str | Path, into: str | Path | None = None) -> RehydrateReport:
    """A copy of a metadata-only build in ``into`` (default ``default_into``) with the audio written back
    from the sources under ``audio_root``: ``context`` (the clip) in ``qa`` and ``segments``, ``audio``
    (clip start to the target's end) in ``empathy``. ``out_dir`` is only read; the copy is written in a
    staging folder and then replaces ``into`` whole."""
    out_dir, audio_root = Path(out_dir), Path(audio_root)
    into = Path(into) if into is not None else default_into(out_dir)
    shards = _metadata_shards(out_dir)
    if not audio_root.is_dir():
        raise FileNotFoundError(f"{audio_root}: no such folder (--audio-root names your copy of the sources)")
    build_id = card.card_header(out_dir).get("cpqa_build_id")
    _check_into(out_dir, into, build_id)
    locate = _locator(_index(audio_root))
    staging = into.with_name(f".{into.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    report = RehydrateReport(into=into)
    try:
        _copy_build_files(out_dir, staging)
        for shard in shards:
            target = staging / shard.relative_to(out_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            _with_audio(shard, into / shard.relative_to(out_dir), locate, report).to_parquet(str(target))
        card_file = staging / "README.md"
        if card_file.exists():
            card_file.write_text(replace_dataset_info(card_file.read_text(), card.dataset_info_yaml(staging)))
        marker = {"from": str(out_dir.resolve()), "build_id": build_id, "rows": report.rows}
        marker["total"] = report.total
        marker.update(missing=report.missing, changed=report.changed)
        (staging / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        _replace(staging, into)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _copy_build_files(out_dir: Path, staging: Path) -> None:
    staging.mkdir(parents=True)
    for name in _COPIED:
        path = out_dir / name
        if path.is_dir():
            shutil.copytree(path, staging / name)
        elif path.is_file():
            shutil.copy2(path, staging / name)


def _replace(staging: Path, into: Path) -> None:
    """``staging`` becomes ``into``; an earlier ``into`` is moved aside first and removed last."""
    old = into.with_name(f".{into.name}.old-{os.getpid()}")
    if into.exists():
        os.replace(into, old)
    os.replace(staging, into)
    shutil.rmtree(old, ignore_errors=True)


def replace_dataset_info(card: str, info_yaml: str) -> str:
    """The card with its YAML header's ``dataset_info`` block replaced by ``info_yaml``."""
    lines = card.split("\n")
    start = lines.index("dataset_info:")
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "-")))
    return "\n".join(lines[:start] + info_yaml.split("\n") + lines[end:])


def push_build(out_dir: str | Path, repo_id: str, *, public: bool, dry_run: bool, say: Callable[[str], None] = print) -> str:
    """Upload a built folder to the Hub as ``cpqa.py push`` does; returns the dataset's URL.

    Says ``would upload (MODE, private):`` (``uploading`` for a real push), one indented line per file,
    before anything is sent, then ``would create URL`` / ``done: URL`` (`` (gated: access requests on)``
    for a gated build). A real push first checks for a Hub token (``check_push``); a dry run
    contacts nothing."""
    check_current(out_dir)
    if not dry_run:
        check_push()
    mode = publication_mode(out_dir)
    say(f"{'would upload' if dry_run else 'uploading'} ({mode}, {'public' if public else 'private'}):")
    for name in files_to_upload(out_dir):
        say(f"  {name}")
    url = push(out_dir, repo_id, private=not public, dry_run=dry_run)
    say(f"{'would create' if dry_run else 'done:'} {url}" + (" (gated: access requests on)" if mode == "gated" else ""))
    return url


def files_to_upload(out_dir: str | Path) -> list[str]:
    """The card, its plots and the Parquet shards, relative to ``out_dir``; work files and reports stay local.

    A metadata-only build (the card's ``cpqa_publication``) whose shards hold audio (rehydrated from a
    local copy) is refused: that audio is the user's own copy, not for upload."""
    import pyarrow.parquet as pq

    root = Path(out_dir)
    files = ["README.md"] if (root / "README.md").exists() else []
    shards = sorted((root / "data").rglob("*.parquet"))
    if publication_mode(root) == "metadata-only":
        for shard in shards:
            if {"context", "audio"} & set(pq.read_schema(shard).names):
                raise ValueError(f"{shard}: holds audio (rehydrated?) but {root} was built metadata-only: refusing to upload audio")
    files += [str(p.relative_to(root)) for p in shards]
    return files + sorted(str(p.relative_to(root)) for p in (root / "stats").glob("*.png"))  # the card's plots


def publication_mode(out_dir: str | Path) -> str:
    """``full``, ``gated`` or ``metadata-only``, as the card records it (``full`` for older builds)."""
    return card_header(out_dir).get("cpqa_publication", "full")


def last_build_id(out_dir: str | Path) -> str | None:
    """The ``build_id`` of ``out_dir/report.json`` (the folder's last build), None without one."""
    report = Path(out_dir) / "report.json"
    try:
        return json.loads(report.read_text()).get("build_id")
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{report}: not JSON ({exc.msg}, line {exc.lineno})") from exc


def check_current(out_dir: str | Path) -> str:
    """The build id of ``out_dir``'s export when it is the export of the folder's last build; else a
    ``FileNotFoundError`` (no export) or ``ValueError`` (another build's, or no build id) in one line."""
    root = Path(out_dir)
    last = last_build_id(root)
    if not (root / "README.md").exists() or not written_splits(root):
        done = f" (its last build, {last}, exported nothing: see report.json)" if last else ""
        expected = "README.md and data/*/*.parquet expected"
        raise FileNotFoundError(f"{root}: no exported dataset here{done}: {expected}")
    exported = card_header(root).get("cpqa_build_id")
    if last is None or exported != last:
        raise ValueError(
            f"{root}: the export (build {exported or 'without id'}) is not that of the folder's last build "
            f"({last or 'no build_id in report.json'}): rebuild with the same command, then push"
        )
    return last


def push(out_dir: str | Path, repo_id: str, private: bool = True, token_env: str = "HF_TOKEN", dry_run: bool = False) -> str:
    """Create the dataset repo (private by default), upload exactly ``files_to_upload``, and turn the Hub's
    access requests on for a gated build; returns its URL. ``dry_run`` contacts nothing."""
    import os

    from huggingface_hub import HfApi

    check_current(out_dir)
    files = files_to_upload(out_dir)
    url = f"https://huggingface.co/datasets/{repo_id}"
    if dry_run:
        return url
    api = HfApi(token=os.environ.get(token_env))  # None lets huggingface_hub use its own login
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset", allow_patterns=files, commit_message="Upload cpqa build")
        if publication_mode(out_dir) == "gated":
            api.update_repo_settings(repo_id, gated="manual", repo_type="dataset")
    except Exception as exc:
        raise RuntimeError(_push_error(exc, repo_id, token_env)) from exc
    return url


def _push_error(exc: Exception, repo_id: str, token_env: str) -> str:
    """One line for a failed upload: no network, a refused token, or the Hub's own words."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(exc, OfflineModeIsEnabled):
        return "cannot push: HF_HUB_OFFLINE is set; unset it where the Hub is reachable, then run push again"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return f"the Hub refused the token (HTTP {status}) for {repo_id}: set ${token_env} to a token with write access to that namespace"
    if _network_error(exc):
        return f"cannot reach the Hugging Face Hub ({first_line(exc, with_type=False)}): check the network connection, then run push again"
    return f"push to {repo_id} failed: {first_line(exc)}"


def _network_error(exc: BaseException | None) -> bool:
    """A transport failure: an OSError (requests' errors are), or httpx's TransportError, anywhere in the chain."""
    while exc is not None:
        if isinstance(exc, OSError) or any(c.__name__ == "TransportError" for c in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


# ---------------------------------------------------------------- push
def check_push(token_env: str = "HF_TOKEN") -> None:
    """A Hub token before uploading: ``$<token_env>`` or huggingface_hub's saved login."""
    from huggingface_hub import get_token

    if not os.environ.get(token_env) and not get_token():
        raise PreflightError([f"no Hugging Face token: set ${token_env} to a write token (https://huggingface.co/settings/tokens) or run `huggingface-cli login`"])
