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

``rehydrate(out_dir, audio_root)`` finds each source by file name under ``audio_root``, checks its
sha256, and writes the ``context`` column back into every Parquet shard of ``out_dir``: rows whose
source is missing or whose content changed since the build are left out and reported (never decoded
from a changed file). The card's ``dataset_info`` is updated to the rewritten shards.

``push_build(out_dir, repo_id, public=..., dry_run=...)`` is ``cpqa.py push``: the token check (not for
a dry run), then what goes up (``export.files_to_upload``) told line by line before the upload
(``export.push``), then the URL.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
from datasets import Audio, Dataset, Features, concatenate_datasets

from . import audio

MODES = ("full", "gated", "metadata-only")

# Licences from least to most restrictive; anything not listed ranks as "other" (most restrictive:
# its terms are unknown to cpqa).
LICENCE_ORDER = (
    "cc0-1.0",
    "pddl",
    "public-domain",
    "cc-by-4.0",
    "cc-by-3.0",
    "cc-by-sa-4.0",
    "cc-by-sa-3.0",
    "cc-by-nc-4.0",
    "cc-by-nc-3.0",
    "cc-by-nc-sa-4.0",
    "cc-by-nc-sa-3.0",
    "cc-by-nd-4.0",
    "cc-by-nc-nd-4.0",
    "cc-by-nc-nd-3.0",
    "other",
)

GATED_PROMPT = (
    "The audio in this dataset comes from sources whose licences restrict redistribution and use. "
    "Access is granted for research on speech and paralinguistics only. By requesting access you agree "
    "not to redistribute the audio, not to try to identify the people speaking, and to follow the "
    "licence of each source recording (the `license` column)."
)


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"export.publish {mode!r}: expected one of {', '.join(MODES)}")
    return mode


def most_restrictive(licences: list[str]) -> str:
    """The licence that restricts most (``LICENCE_ORDER``; an unlisted one counts as ``other``)."""
    rank = {name: i for i, name in enumerate(LICENCE_ORDER)}
    worst = max(licences, key=lambda name: rank.get(name.lower(), len(LICENCE_ORDER) - 1), default="other")
    return worst if worst.lower() in rank else "other"


def source_sha256(path: str) -> str:
    """sha256 of a source file's bytes (``build.ingest.content_hash``), or of the referenced cell's audio
    bytes for a ``build.audio`` reference (whose file is a whole table, not this recording)."""
    from .ingest import content_hash

    if audio.is_reference(path):
        cell = audio._cell(audio.parse_reference(path))
        if cell.get("bytes") is None:
            return content_hash(cell["path"])
        return hashlib.sha256(cell["bytes"]).hexdigest()
    return content_hash(path)


def row_licences(source: str | Path, audio_paths: list[str], default: str, allow_outside_root: bool = False) -> list[str]:
    """Each row's source licence: a ``.csv``/``.jsonl`` manifest's ``license`` column where it has a
    value for the row's file, else ``default`` (``--license``)."""
    from .ingest import read_manifest, read_records

    path = Path(str(source))
    if path.suffix.lower() not in (".csv", ".jsonl") or not path.is_file():
        return [default] * len(audio_paths)
    records = read_records(path)
    listed = read_manifest(path, allow_outside_root)  # one row per record, in order: the same paths as the plan
    by_path = {row[1]: str(record["license"]).strip() for row, record in zip(listed, records) if str(record.get("license") or "").strip()}
    return [by_path.get(p, default) for p in audio_paths]


def source_columns(paths: list[str], licences: list[str], known: dict[str, str] | None = None) -> dict[str, list]:
    """``source_sha256`` and ``license`` per row; each distinct source is hashed once, unless ``known``
    (the ingest plan's ``sha256`` by path) already holds its hash."""
    known = known or {}
    hashes = {p: known.get(p) or source_sha256(p) for p in sorted(set(paths))}
    return {"source_sha256": [hashes[p] for p in paths], "license": list(licences)}


def gating_yaml(mode: str) -> str:
    """The card header's gating fields (empty unless ``gated``)."""
    if mode != "gated":
        return ""
    import yaml

    fields = {"extra_gated_prompt": GATED_PROMPT, "extra_gated_fields": {"Name": "text", "Affiliation": "text", "Intended use": "text", "I agree to use this dataset for non-commercial research only": "checkbox"}}
    return yaml.safe_dump(fields, sort_keys=False, width=10_000).rstrip("\n")


def publication_text(mode: str, licence: str) -> str:
    """The card's paragraph on what is published and how to get the audio."""
    if mode == "metadata-only":
        return (
            "**Metadata only.** The audio is not redistributed here (its licence does not allow it). Each row "
            "names its source (`source_file`), the sha256 of the source's content (`source_sha256`) and the "
            "clip's span in it (`clip_start`, `clip_end`). With your own copy of the sources, rebuild the "
            "`context` audio column with\n\n```bash\npython cpqa.py rehydrate <this folder> --audio-root <your copy>\n```\n\n"
            "which checks every source by its hash and reports any that is missing or differs from the one used here."
        )
    if mode == "gated":
        return f"**Gated.** The audio is embedded; the Hub grants access to those who accept these terms: {GATED_PROMPT}"
    return f"The audio is embedded. Most restrictive source licence: {licence}."


@dataclass
class RehydrateReport:
    rows: int = 0  # rows written with their audio
    missing: dict[str, int] = field(default_factory=dict)  # source file -> rows left out
    changed: dict[str, int] = field(default_factory=dict)  # source file whose content hash differs -> rows left out

    def lines(self) -> list[str]:
        out = [f"rehydrated {self.rows} rows"]
        out += [f"  missing: {name} ({n} rows left out)" for name, n in sorted(self.missing.items())]
        out += [f"  changed since the build (sha256 differs): {name} ({n} rows left out)" for name, n in sorted(self.changed.items())]
        return out


def _index(audio_root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for path in audio_root.rglob("*"):
        if path.is_file():
            found.setdefault(path.name, []).append(path)
    return found


def rehydrate(out_dir: str | Path, audio_root: str | Path) -> RehydrateReport:
    """Write the audio back into every shard of a metadata-only build from the sources under ``audio_root``:
    ``context`` (the clip) in ``qa`` and ``segments``, ``audio`` (clip start to the target's end) in ``empathy``."""
    from .export import dataset_info_yaml, embed_segment_audio

    out_dir, audio_root = Path(out_dir), Path(audio_root)
    shards = sorted((out_dir / "data").rglob("*.parquet"))
    if not shards:
        raise FileNotFoundError(f"{out_dir}: no built dataset here (data/*/*.parquet expected)")
    if not audio_root.is_dir():
        raise FileNotFoundError(f"{audio_root}: no such folder (--audio-root names your copy of the source audio)")
    index = _index(audio_root)
    verdict: dict[tuple[str, str], Path | str] = {}  # (name, sha256) -> the verified file, or "missing"/"changed"
    report = RehydrateReport()
    for shard in shards:
        table = pq.read_table(shard)
        audio_name = "audio" if shard.parent.name.startswith("empathy") else "context"  # empathy, empathy_reviewed
        if audio_name in table.column_names:
            raise ValueError(f"{shard}: already has audio ({audio_name}): rehydrate reads metadata-only builds")
        for column in ("source_file", "source_sha256", "clip_start", "clip_end", "segment_id"):
            if column not in table.column_names:
                raise ValueError(f"{shard}: no {column} column: not a cpqa metadata-only build")
        data = Dataset(table)
        located = []
        for name, sha in zip(data["source_file"], data["source_sha256"]):
            key = (name, sha)
            if key not in verdict:
                candidates = index.get(name, [])
                match = next((p for p in candidates if source_sha256(str(p)) == sha), None)
                verdict[key] = match if match is not None else ("changed" if candidates else "missing")
            located.append(verdict[key])
        keep = [i for i, v in enumerate(located) if isinstance(v, Path)]
        for name, v in zip(data["source_file"], located):
            if not isinstance(v, Path):
                bucket = report.missing if v == "missing" else report.changed
                bucket[name] = bucket.get(name, 0) + 1
        data = data.select(keep)
        paths = [str(located[i]) for i in keep]
        contexts = embed_segment_audio({"segment_id": data["segment_id"], "audio_path": paths, "start": data["clip_start"], "end": data["clip_end"]})["context"]
        audio_column = Dataset.from_dict({audio_name: contexts}, features=Features({audio_name: Audio(sampling_rate=audio.SAMPLE_RATE)}))
        data = concatenate_datasets([audio_column, data.flatten_indices()], axis=1)
        tmp = shard.with_name(shard.name + ".tmp")
        data.to_parquet(str(tmp))
        os.replace(tmp, shard)
        report.rows += len(data)
    card = out_dir / "README.md"
    if card.exists():
        card.write_text(replace_dataset_info(card.read_text(), dataset_info_yaml(out_dir)))
    return report


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
    for a gated build). A real push first checks for a Hub token (``preflight.check_push``); a dry run
    contacts nothing."""
    from .export import files_to_upload, publication_mode, push
    from .preflight import check_push

    if not dry_run:
        check_push()
    mode = publication_mode(out_dir)
    say(f"{'would upload' if dry_run else 'uploading'} ({mode}, {'public' if public else 'private'}):")
    for name in files_to_upload(out_dir):
        say(f"  {name}")
    url = push(out_dir, repo_id, private=not public, dry_run=dry_run)
    say(f"{'would create' if dry_run else 'done:'} {url}" + (" (gated: access requests on)" if mode == "gated" else ""))
    return url
