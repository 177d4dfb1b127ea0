"""Stage 12, export: Parquet shards with the audio embedded, a dataset card, and the Hub upload.

``embed_segment_audio`` (batched map over segment rows): ``audio_path``, ``start``, ``end`` -> ``context``
(the span as 16 kHz FLAC bytes; an Audio column once cast).

``empathy_table``: one row per empathy sample (``schema.EMPATHY_SAMPLE``) -> ``id``, ``audio`` (the span
``clip_start``-``clip_end`` as FLAC bytes), ``text_context``, ``target_utterance``, ``desired_response``,
then provenance; every time in a row is relative to its ``audio``.

``write_config`` writes one config (``qa``, ``segments`` or ``empathy``) as ``data/<config>/test-XXXXX-of-YYYYY.parquet``;
``render_card`` fills ``dataset_card.md`` into the output's ``README.md`` with YAML ``configs`` so
that ``load_dataset(out_dir)`` gives the ``qa`` config and ``load_dataset(out_dir, "segments")`` the
segments. A part of the template between ``<!-- cpqa:NAME -->`` and ``<!-- /cpqa:NAME -->`` lines is
kept only when config NAME was written (``card_sections``), so the card names no config it lacks.

The export of a build (``EXPORT_ENTRIES``: the card, ``data/``, ``stats/``) is written into a staging
folder and swapped in by ``install_export`` (the old card removed first, the new one moved in last);
``remove_export`` takes away an earlier build's export when a build exports nothing. The card's YAML
carries the build's id (``cpqa_build_id``), as does ``report.json`` (``build_id``); ``check_current``
refuses a folder whose export is missing or belongs to another build than the last one, and ``push``
uploads exactly ``files_to_upload(out_dir)`` of a current export with the token from the environment.
"""

from __future__ import annotations

import io
import math
import os
import shutil
from collections import Counter
from pathlib import Path

from datasets import Audio, Dataset

from ..sources.audio import SAMPLE_RATE, decode_span
from . import splits
from .card import (
    card_sections,
    card_values,
    empathy_card_values,
    publication_values,
    render_card,
    written_configs,
)
from .licences import most_restrictive, source_columns
from .stats import card_section

SPLIT = "test"
MAX_SHARD_BYTES = 500 * 1024 * 1024
# What a build's export consists of in its output folder; the card goes first and comes back last.
EXPORT_ENTRIES = ("README.md", "data", "stats")


def flac_bytes(audio) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _embedded(names: list[str], paths: list[str], starts: list[float], ends: list[float]) -> list[dict]:
    return [{"bytes": flac_bytes(decode_span(path, start, end)), "path": f"{name}.flac"} for name, path, start, end in zip(names, paths, starts, ends)]


def embed_segment_audio(batch: dict[str, list]) -> dict[str, list]:
    return {"context": _embedded(batch["segment_id"], batch["audio_path"], batch["start"], batch["end"])}


def with_audio(data: Dataset) -> Dataset:
    """Add the ``context`` Audio column (bytes embedded) to rows that carry a segment span."""
    data = data.map(embed_segment_audio, batched=True, batch_size=16, desc="embed audio")
    return data.cast_column("context", Audio(sampling_rate=SAMPLE_RATE))


def write_config(data: Dataset, out_dir: str | Path, config_name: str, splits: list[str] | None = None) -> list[Path]:
    """Write ``data`` as Parquet shards ``data/<config_name>/<split>-XXXXX-of-YYYYY.parquet``.

    ``splits`` names each row's split (all ``test`` when None); splits are written in order of first appearance."""
    folder = Path(out_dir) / "data" / config_name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    splits = splits if splits is not None else [SPLIT] * len(data)
    paths = []
    for split in dict.fromkeys(splits):
        part = data.select([i for i, s in enumerate(splits) if s == split])
        n_shards = max(1, math.ceil((part.data.nbytes or 1) / MAX_SHARD_BYTES))
        for index in range(n_shards):
            path = folder / f"{split}-{index:05d}-of-{n_shards:05d}.parquet"
            part.shard(n_shards, index, contiguous=True).to_parquet(str(path))
            paths.append(path)
    return paths


def remove_export(out_dir: str | Path) -> list[str]:
    """Remove an export (``EXPORT_ENTRIES``) from ``out_dir``, the card first; returns what was there
    (folders with a trailing ``/``)."""
    removed = []
    for name in EXPORT_ENTRIES:
        path = Path(out_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(f"{name}/")
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed


def install_export(staging: str | Path, out_dir: str | Path) -> None:
    """Replace the export in ``out_dir`` by the one written in ``staging`` (then removed): the old card
    goes first and the new card comes last, so a card never stands over another build's data."""
    staging = Path(staging)
    remove_export(out_dir)
    for name in (*EXPORT_ENTRIES[1:], EXPORT_ENTRIES[0]):
        if (staging / name).exists():
            os.replace(staging / name, Path(out_dir) / name)
    shutil.rmtree(staging)


# Columns of the published tables that come from the segment, in order (see dataset_card.md).
_SEGMENT_COLUMNS = ("segment_id", "recording_id", "source_file", "source_sha256", "license", "clip_start", "clip_end", "duration", "primary_emotion", "emotions", "gender", "transcript", "words")


# Published list columns whose items carry ``start``/``end`` seconds (relative to the clip once exported).
TIMED_LISTS = ("words", "emotion_windows", "gender_windows")


def _clip_seconds(t: float | None, clip_start: float) -> float | None:
    return None if t is None else round(t - clip_start, 6)  # 1 µs: float noise of the subtraction only


def to_clip_time(batch: dict[str, list]) -> dict[str, list]:
    """Batched map: recording-time ``start``/``end`` and ``TIMED_LISTS`` -> ``clip_start``/``clip_end``
    (recording time, provenance) and every listed item's ``start``/``end`` in seconds from the clip's
    first sample (lhotse's convention for a materialised cut). Untimed words (null) stay null."""
    out: dict[str, list] = {"clip_start": list(batch["start"]), "clip_end": list(batch["end"])}
    for name in TIMED_LISTS:
        if name in batch:
            out[name] = [
                None if items is None else [{**item, "start": _clip_seconds(item["start"], s), "end": _clip_seconds(item["end"], s)} for item in items]
                for items, s in zip(batch[name], batch["start"])
            ]
    return out


def segment_table(
    segments: Dataset, models: dict[str, object], pair_counts: dict[str, int], *, licences: list[str] | None = None, audio: bool = True, source_hashes: dict[str, str] | None = None
) -> Dataset:
    """One row per clip: audio (unless ``audio`` is False: metadata-only), provenance with the source's
    sha256 and licence (``licences``, one per row; ``other`` when None), labels, words and windows
    (clip time), ``n_pairs`` (pairs kept), model ids."""
    data = with_audio(segments) if audio else segments
    provenance = source_columns(segments["audio_path"], licences if licences is not None else ["other"] * len(segments), source_hashes)
    data = data.map(
        lambda b, idx: {
            "source_file": [Path(p).name for p in b["audio_path"]],
            "source_sha256": [provenance["source_sha256"][i] for i in idx],
            "license": [provenance["license"][i] for i in idx],
            "duration": [round(e - s, 3) for s, e in zip(b["start"], b["end"])],
            "words": b["tagged_words"],
            "n_pairs": [pair_counts.get(sid, 0) for sid in b["segment_id"]],
        },
        batched=True,
        with_indices=True,
        remove_columns=["tagged_words"],
    )
    data = data.map(to_clip_time, batched=True, remove_columns=["start", "end"])
    for name, value in models.items():
        data = data.add_column(name, [value] * len(data))
    keep = ["context"] if audio else []
    keep += [*_SEGMENT_COLUMNS, "emotion_counts", "emotion_windows", "gender_windows", "n_pairs", "language", "aligner", "llm_model", "prompt_version", *models]
    keep += [name for name in ("n_speakers",) if name in data.column_names]  # null without asr.diarize
    return data.select_columns(keep)


def qa_table(pairs: Dataset, segment_rows: Dataset) -> Dataset:
    """One row per kept pair: AudioBench's ``context``/``instruction``/``answer`` first, then the rest."""
    from datasets import concatenate_datasets

    index = {sid: i for i, sid in enumerate(segment_rows["segment_id"])}
    aligned = segment_rows.select([index[sid] for sid in pairs["segment_id"]]).remove_columns(["emotion_counts", "emotion_windows", "gender_windows", "n_pairs"])
    own = pairs.map(
        lambda b: {
            "question_id": [f"{sid}-q{i:02d}" for sid, i in zip(b["segment_id"], b["pair_index"])],
            "instruction": b["question"],
        },
        batched=True,
        remove_columns=[c for c in pairs.column_names if c not in ("answer", "category")],
    )
    joined = concatenate_datasets([aligned, own], axis=1)
    first = [c for c in ("context", "instruction", "answer", "category", "question_id") if c in joined.column_names]
    return joined.select_columns(first + [c for c in joined.column_names if c not in first])


_EMPATHY_FIRST = ("id", "audio", "text_context", "target_utterance", "desired_response")


def empathy_table(samples: Dataset, audio: bool = True, licence_of: dict[str, str] | None = None, source_hashes: dict[str, str] | None = None) -> Dataset:
    """One row per empathy sample: the sample's columns first, then provenance (source file, its sha256
    and licence (``licence_of`` by source path, ``other`` when absent), clip span in the recording).
    ``audio=False`` (metadata-only publication) leaves the audio out; ``cpqa.py rehydrate`` puts it back."""
    licence_of = licence_of or {}
    provenance = source_columns(samples["audio_path"], [licence_of.get(p, "other") for p in samples["audio_path"]], source_hashes)

    def own(batch: dict[str, list], idx: list[int]) -> dict[str, list]:
        ids = [f"{sid}-empathy" for sid in batch["segment_id"]]
        columns = {
            "id": ids, "source_file": [Path(p).name for p in batch["audio_path"]],
            "source_sha256": [provenance["source_sha256"][i] for i in idx], "license": [provenance["license"][i] for i in idx],
        }  # fmt: skip
        if audio:
            columns["audio"] = _embedded(ids, batch["audio_path"], batch["clip_start"], batch["clip_end"])
        return columns

    data = samples.map(own, batched=True, batch_size=16, with_indices=True, desc="embed audio")
    if audio:
        data = data.cast_column("audio", Audio(sampling_rate=SAMPLE_RATE))
    rest = ("segment_id", "recording_id", "source_file", "source_sha256", "license", "clip_start", "clip_end", "prompt_version", "llm_model")
    return data.select_columns([c for c in _EMPATHY_FIRST if audio or c != "audio"] + list(rest))


def write_empathy(
    samples: Dataset | None, out_dir: str | Path, split_of_segment: dict[str, str], split_of_recording: dict[str, str], export_config, licence_of: dict[str, str] | None = None,
    source_hashes: dict[str, str] | None = None,
) -> None:
    """The ``empathy`` config, or none (an earlier build's removed) when there is no sample.

    A sample goes to the split of its clip in the ``segments`` config, else to that of its recording
    there; recordings found only here are split among themselves by recording."""
    folder = Path(out_dir) / "data" / "empathy"
    if samples is None or len(samples) == 0:
        shutil.rmtree(folder, ignore_errors=True)
        return
    rows = empathy_table(samples, audio=export_config.publish != "metadata-only", licence_of=licence_of, source_hashes=source_hashes)
    others = sorted({rid for rid in rows["recording_id"] if rid not in split_of_recording})
    assigned = splits.assign_splits(splits.split_keys(others), export_config.splits, export_config.seed)
    split_of = {**split_of_recording, **dict(zip(others, assigned))}
    names = [split_of_segment.get(sid) or split_of[rid] for sid, rid in zip(rows["segment_id"], rows["recording_id"])]
    write_config(rows, out_dir, "empathy", names)


def write_dataset(
    segments: Dataset, pairs: Dataset, config, out_dir: str | Path, *, models: dict[str, object], report: dict,
    card_template: str, license: str, sources: str, build_id: str, licences: list[str] | None = None,
    empathy: Dataset | None = None, source_hashes: dict[str, str] | None = None, load_path: str | None = None,
) -> tuple[Dataset, Dataset]:
    """The ``qa`` and ``segments`` configs (and ``empathy`` when it has a sample) in the publication mode and
    splits of ``config.export``, and the card, which names only the configs written and carries ``build_id``.

    ``licences`` gives each segment's source licence (default: ``license`` for all); the card states the
    most restrictive. ``source_hashes`` (path -> sha256, the ingest plan's) spares hashing each source
    again; its statistics (``build.publishing.stats``) are computed from the written tables. ``load_path``: the folder
    the card tells users to load (default ``out_dir``; the build's folder when ``out_dir`` is a staging one).
    Returns the (qa, segments) tables as written (before the split into files)."""
    e = config.export
    licences = licences if licences is not None else [license] * len(segments)
    segment_rows = segment_table(segments, models, Counter(pairs["segment_id"]), licences=licences, audio=e.publish != "metadata-only", source_hashes=source_hashes)
    qa_rows = qa_table(pairs, segment_rows)
    segment_splits = splits.assign_splits(splits.split_keys(segment_rows["recording_id"]), e.splits, e.seed)
    split_of = dict(zip(segment_rows["segment_id"], segment_splits))
    qa_splits = [split_of[sid] for sid in qa_rows["segment_id"]]
    write_config(qa_rows, out_dir, "qa", qa_splits)
    write_config(segment_rows, out_dir, "segments", segment_splits)
    write_empathy(empathy, out_dir, split_of, dict(zip(segment_rows["recording_id"], segment_splits)), e, dict(zip(segments["audio_path"], licences)), source_hashes)
    licence = most_restrictive(licences)
    values = card_values(
        config, qa_rows, segment_rows, report, models, license=licence, sources=sources,
        load_path=load_path or str(out_dir),
    )  # fmt: skip
    values.update(empathy_card_values(empathy))
    values.update(publication_values(out_dir, e.publish, licence, segment_splits, qa_splits, e))
    values["stats_section"] = card_section(out_dir)
    values["build_id"] = build_id
    template = card_sections(card_template, written_configs(out_dir))
    (Path(out_dir) / "README.md").write_text(render_card(template, values))
    return qa_rows, segment_rows
