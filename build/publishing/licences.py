"""Publication modes and licences: which mode a build is published in, the licence of each row and
the most restrictive one for the card, the gating text, and each source's sha256.

Modes: ``full`` (the clips' audio embedded), ``gated`` (the same behind the Hub's access form),
``metadata-only`` (no audio; ``cpqa.py rehydrate`` rebuilds it from the user's own copy).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..sources import audio
from ..sources.ingest import content_hash, read_manifest, read_records

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
    """sha256 of a source file's bytes (``build.sources.ingest.content_hash``), or of the referenced cell's audio
    bytes for a ``build.sources.audio`` reference (whose file is a whole table, not this recording)."""
    if audio.is_reference(path):
        cell = audio._cell(audio.parse_reference(path))
        if cell.get("bytes") is None:
            return content_hash(cell["path"])
        return hashlib.sha256(cell["bytes"]).hexdigest()
    return content_hash(path)


def row_licences(source: str | Path, audio_paths: list[str], default: str, allow_outside_root: bool = False) -> list[str]:
    """Each row's source licence: a ``.csv``/``.jsonl`` manifest's ``license`` column where it has a
    value for the row's file, else ``default`` (``--license``)."""
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
            "which writes a copy of this folder with the audio (`<this folder>-rehydrated`), checks every "
            "source by its hash and reports any that is missing or differs from the one used here."
        )
    if mode == "gated":
        return f"**Gated.** The audio is embedded; the Hub grants access to those who accept these terms: {GATED_PROMPT}"
    return f"The audio is embedded. Most restrictive source licence: {licence}."
