"""A built folder as the reviewers see it: its clips, LLM pairs and empathy samples, and each clip's audio.

``open_build(out_dir, audio_root=None)`` reads ``data/segments``, ``data/qa`` and ``data/empathy`` (when
built) without their audio and checks, each failure one line: the folder exists, is a cpqa build (its
card carries ``cpqa_publication``), has a ``qa`` and a ``segments`` config; a metadata-only build needs
``audio_root`` (its sources are found by file name and checked by sha256 as ``cpqa.py rehydrate`` does;
clips whose source is missing or changed are left out and counted in ``Build.left_out``).

Clip audio is written once to ``OUT/review/audio/<hash>.flac`` (a hash of the clip's id, source hash
and span; names never come from the data): from the ``context`` column of ``segments``, or decoded
from the verified source.
Clips keep the order of the ``segments`` shards (split by split, as written).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import pyarrow.parquet as pq

from ...publishing.card import card_header
from ...publishing.export import flac_bytes
from ...publishing.licences import source_sha256
from ...sources.audio import decode_span

AUDIO_DIR = "audio"


class NotReviewable(ValueError):
    """The folder cannot be reviewed (one line saying why and what to do)."""


@dataclass(frozen=True)
class Clip:
    index: int  # position in the queue (0-based)
    segment_id: str
    split: str
    duration: float
    primary_emotion: str | None
    emotions: list[str]
    gender: str | None
    transcript: str
    words: list[dict]  # word, start, end (clip time; null when untimed), emotion, gender
    source_file: str
    source_sha256: str | None
    clip_start: float
    clip_end: float


@dataclass(frozen=True)
class Pair:
    question_id: str
    segment_id: str
    question: str
    answer: str
    category: str
    split: str


@dataclass(frozen=True)
class EmpathySample:
    id: str
    segment_id: str
    target_text: str
    target_start: float | None
    target_end: float | None
    primary: str | None
    secondary: str | None
    strategy: str
    response: str
    emotion_awareness: str | None
    context: list[dict]  # speaker, text


@dataclass
class Build:
    out: Path
    mode: str
    clips: list[Clip]
    pairs: dict[str, Pair]  # question_id -> pair, in table order
    empathy: dict[str, EmpathySample]  # segment_id -> its sample
    left_out: dict[str, int] = field(default_factory=dict)  # "missing: f.wav" / "changed: f.wav" -> clips
    sources: dict[str, Path] = field(default_factory=dict)  # verified source file (metadata-only)

    def clip(self, segment_id: str) -> Clip | None:
        return next((c for c in self.clips if c.segment_id == segment_id), None)

    def pairs_of(self, segment_id: str) -> list[Pair]:
        if not hasattr(self, "_by_clip"):
            self._by_clip: dict[str, list[Pair]] = {}
            for pair in self.pairs.values():
                self._by_clip.setdefault(pair.segment_id, []).append(pair)
        return self._by_clip.get(segment_id, [])

    def audio_path(self, clip: Clip) -> Path:
        """Where the clip's FLAC is cached: named by a hash of what defines its audio, so a rebuilt
        folder never serves an earlier build's clip (and no file name comes from the data)."""
        key = f"{clip.segment_id}\n{clip.source_sha256}\n{clip.clip_start!r}\n{clip.clip_end!r}"
        return self.out / "review" / AUDIO_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.flac"


def shards(out: Path, config: str) -> list[tuple[str, Path]]:
    """(split, file) of every Parquet shard of ``config``, in written order (split names from file names)."""
    return [(p.name.split("-")[0], p) for p in sorted((out / "data" / config).glob("*.parquet"))]


def read_rows(out: Path, config: str, skip: tuple[str, ...] = ("context", "audio")) -> list[dict]:
    """Every row of ``config`` as a dict with ``split`` added, the audio columns left unread."""
    rows = []
    for split, path in shards(out, config):
        names = [n for n in pq.read_schema(path).names if n not in skip]
        rows += [{**row, "split": split} for row in pq.read_table(path, columns=names).to_pylist()]
    return rows


def check_folder(out: Path) -> str:
    """The publication mode of a reviewable build, or ``NotReviewable``."""
    if not out.is_dir():
        raise NotReviewable(f"{out}: no such folder")
    header = card_header(out) if (out / "README.md").exists() else {}
    if "cpqa_publication" not in header:
        raise NotReviewable(f"{out}: not a cpqa build (no dataset card from cpqa.py build); build one first")
    for config in ("qa", "segments"):
        if not shards(out, config):
            raise NotReviewable(f"{out}: has no {config} config (data/{config}/*.parquet): nothing to review")
    return header["cpqa_publication"]


def _clip(index: int, row: dict) -> Clip:
    return Clip(
        index,
        row["segment_id"],
        row["split"],
        float(row["duration"]),
        row.get("primary_emotion"),
        list(row.get("emotions") or []),
        row.get("gender"),
        row.get("transcript") or "",
        list(row.get("words") or []),
        row.get("source_file") or "",
        row.get("source_sha256"),
        float(row["clip_start"]),
        float(row["clip_end"]),
    )


def _empathy(row: dict) -> EmpathySample:
    target, response = row["target_utterance"] or {}, row["desired_response"] or {}
    emotions = target.get("emotions") or {}
    return EmpathySample(
        row["id"],
        row["segment_id"],
        target.get("text") or "",
        target.get("start"),
        target.get("end"),
        emotions.get("primary"),
        emotions.get("secondary"),
        response.get("response_strategy") or "",
        response.get("text") or "",
        response.get("emotion_awareness"),
        list(row.get("text_context") or []),
    )


def open_build(out_dir: str | Path, audio_root: str | Path | None = None, audio: bool = True) -> Build:
    """The reviewable content of a built folder, its clip audio ready under ``OUT/review/audio``
    (``audio`` False: no audio is needed, as for ``review export`` and ``review import``)."""
    out = Path(out_dir)
    mode = check_folder(out)
    has_audio = "context" in pq.read_schema(shards(out, "segments")[0][1]).names
    if audio and not has_audio and audio_root is None:
        raise NotReviewable(
            f"{out}: a metadata-only build (no audio in its tables): give --audio-root with your copy of the "
            "sources (each is checked by sha256, as cpqa.py rehydrate does)"
        )
    clips = [_clip(i, row) for i, row in enumerate(read_rows(out, "segments"))]
    pairs = {}
    for row in read_rows(out, "qa"):
        pairs[row["question_id"]] = Pair(
            row["question_id"],
            row["segment_id"],
            row["instruction"],
            row["answer"],
            row["category"],
            row["split"],
        )
    empathy = (
        {s.segment_id: s for s in map(_empathy, read_rows(out, "empathy"))} if shards(out, "empathy") else {}
    )
    build = Build(out, mode, clips, pairs, empathy)
    if not audio:
        return build
    if has_audio:
        _cache_embedded_audio(build)
    else:
        _verify_sources(build, Path(audio_root))
        _cache_source_audio(build)
    return build


def _cache_embedded_audio(build: Build) -> None:
    """Each clip's FLAC bytes from ``segments``' ``context`` column, read a few rows at a time."""
    by_id = {c.segment_id: c for c in build.clips}
    for _, path in shards(build.out, "segments"):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8, columns=["segment_id", "context"]):
            for sid, cell in zip(batch.column("segment_id").to_pylist(), batch.column("context").to_pylist()):
                target = build.audio_path(by_id[sid])
                if not target.exists():
                    _write_atomic(target, cell["bytes"])


def _write_atomic(target: Path, data: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)


def _verify_sources(build: Build, audio_root: Path) -> None:
    """Keep the clips whose source file is under ``audio_root`` with the build's sha256; count the rest."""
    if not audio_root.is_dir():
        raise NotReviewable(
            f"{audio_root}: no such folder (--audio-root names your copy of the source audio)"
        )
    found: dict[str, list[Path]] = {}
    for path in sorted(audio_root.rglob("*")):
        if path.is_file():
            found.setdefault(path.name, []).append(path)
    verdict: dict[tuple[str, str | None], Path | str] = {}
    kept = []
    for clip in build.clips:
        key = (clip.source_file, clip.source_sha256)
        if key not in verdict:
            candidates = found.get(clip.source_file, [])
            match = next((p for p in candidates if source_sha256(str(p)) == clip.source_sha256), None)
            verdict[key] = match if match is not None else ("changed" if candidates else "missing")
        if isinstance(verdict[key], Path):
            kept.append(clip)
            build.sources[clip.segment_id] = verdict[key]
        else:
            name = f"{verdict[key]}: {clip.source_file}"
            build.left_out[name] = build.left_out.get(name, 0) + 1
    if not kept:
        found = ", ".join(sorted(build.left_out))
        raise NotReviewable(
            f"{audio_root}: none of the build's sources is there with the same sha256 ({found})"
        )
    build.clips = [replace(c, index=i) for i, c in enumerate(kept)]


def _cache_source_audio(build: Build) -> None:
    for clip in build.clips:
        target = build.audio_path(clip)
        if not target.exists():
            samples = decode_span(str(build.sources[clip.segment_id]), clip.clip_start, clip.clip_end)
            _write_atomic(target, flac_bytes(samples))
