"""The only module that knows the stage order; it also keeps the funnel and the per-recording ledger.

    recordings --probe--> --VAD--> segments --length filter--> windows (emotion, gender)
      --emotion2vec+ ensemble, MSP-Podcast dimensions, gender--> --X_E--> segments with windows
      --X_O--> --balanced sampling--> condensed segments

Every drop is counted by stage and reason (``Funnel``), and every input recording ends as
``kept``, ``dropped`` (stage and reason) or ``failed`` (stage and error) in the ledger.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

from . import condense, dimension, emotion, gender, ingest, segment, windows
from .config import Config
from .schema import CONDENSED_SEGMENT

log = logging.getLogger("cpqa")

STAGES = ("ingest", "vad", "length", "label", "occurrence", "sampling")


@dataclass
class Drop:
    recording_id: str
    stage: str
    reason: str  # counted in the funnel: no file names, no numbers that vary per row
    detail: str | None = None  # the full error message, kept in the ledger


@dataclass
class Funnel:
    counts: dict[str, int] = field(default_factory=dict)  # rows after each step
    drops: list[Drop] = field(default_factory=list)

    def drop_counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = {}
        for d in self.drops:
            table.setdefault(d.stage, Counter())[d.reason] += 1
        return {stage: dict(counter) for stage, counter in table.items()}


@dataclass
class BuildResult:
    condensed: Dataset
    funnel: Funnel
    ledger: list[dict]

    def report(self) -> dict:
        status = Counter(entry["status"] for entry in self.ledger)
        return {
            "counts": self.funnel.counts,
            "drops": self.funnel.drop_counts(),
            "recordings": dict(status),
            "primary_emotions": dict(Counter(self.condensed["primary_emotion"])),
        }


def _drop_rows(data: Dataset, reasons: list[str | None], stage: str, funnel: Funnel, details: list | None = None) -> Dataset:
    """Drop the rows that have a reason, recording each drop against its recording."""
    keep = [i for i, reason in enumerate(reasons) if reason is None]
    rids = data["recording_id"]
    for i, reason in enumerate(reasons):
        if reason is not None:
            funnel.drops.append(Drop(rids[i], stage, reason, details[i] if details else None))
    return data.select(keep)


def run_labelling(source: str | Path, config: Config, work_dir: str | Path) -> BuildResult:
    """Run ingest → condensation on ``source``; returns the condensed segments, funnel and ledger."""
    work_dir = Path(work_dir)
    funnel = Funnel()
    runtime = config.runtime

    # 0 ingest
    recordings = ingest.list_recordings(source, cache_dir=work_dir / "cache")
    recordings = recordings.map(ingest.probe_recordings, batched=True, batch_size=32, desc="probe")
    funnel.counts["recordings"] = len(recordings)
    # 1 VAD
    vad = config.vad
    recordings = recordings.map(
        segment.detect_speech,
        batched=True,
        batch_size=8,
        fn_kwargs=dict(threshold=vad.threshold, min_speech_ms=vad.min_speech_ms, min_silence_ms=vad.min_silence_ms, speech_pad_ms=vad.speech_pad_ms),
        desc="vad",
    )
    failures = {}
    for rid, error, vad_error, speech in zip(recordings["recording_id"], recordings["error"], recordings["vad_error"], recordings["speech"]):
        if error is not None:
            failures[rid] = ("ingest", error)
        elif vad_error is not None:
            failures[rid] = ("vad", vad_error)
        elif not speech:
            funnel.drops.append(Drop(rid, "vad", "no speech detected"))
    funnel.counts["recordings with speech"] = sum(1 for s in recordings["speech"] if s)
    # 2 segments and the length filter
    segments = recordings.map(
        segment.explode_segments,
        batched=True,
        remove_columns=recordings.column_names,
        fn_kwargs=dict(merge_gap_s=vad.merge_gap_s, max_segment_s=config.max_segment_s),
        desc="segments",
    )
    funnel.counts["segments"] = len(segments)
    reasons = [segment.length_drop_reason(s, e, config.min_segment_s, config.max_segment_s) for s, e in zip(segments["start"], segments["end"])]
    segments = _drop_rows(segments, reasons, "length", funnel)
    funnel.counts["segments within length"] = len(segments)

    # 3-6 windows and labels
    emotion_windows, gender_windows = _label_windows(segments, config)
    # 7 X_E, then windows back onto their segments
    emotion_windows = emotion_windows.map(
        condense.mark_consistency, batched=True, fn_kwargs=dict(x=config.condense.x, y=config.condense.y), desc="consistency"
    )
    segments, label_errors = _attach_windows(segments, emotion_windows, gender_windows)
    segments = _drop_rows(segments, [("labelling failed" if e else None) for e in label_errors], "label", funnel, label_errors)
    funnel.counts["segments labelled"] = len(segments)
    # 7 X_O and balanced sampling
    segments = segments.map(condense.count_occurrences, batched=True, fn_kwargs=dict(alpha=config.condense.alpha), desc="occurrence")
    segments = _drop_rows(segments, segments["drop_reason"], "occurrence", funnel).remove_columns("drop_reason")
    funnel.counts["segments passing occurrence"] = len(segments)
    kept = condense.balanced_sample(segments["segment_id"], segments["primary_emotion"], config.condense.samples_per_category, config.condense.seed)
    segments = _drop_rows(segments, [None if sid in kept else "over the per-category quota" for sid in segments["segment_id"]], "sampling", funnel)
    funnel.counts["condensed segments"] = len(segments)
    segments = segments.cast(CONDENSED_SEGMENT)
    ledger = _ledger(recordings["recording_id"], failures, funnel, set(segments["recording_id"]))
    return BuildResult(segments, funnel, ledger)


def _label_windows(segments: Dataset, config: Config) -> tuple[Dataset, Dataset]:
    runtime = config.runtime
    common = dict(batched=True, batch_size=runtime.batch_size, with_rank=True, num_proc=runtime.num_proc)

    def explode(spec, name):
        return segments.map(
            windows.explode_windows,
            batched=True,
            remove_columns=segments.column_names,
            fn_kwargs=dict(label_s=spec.label_s, context_s=spec.context_s, min_last_fraction=spec.min_last_fraction),
            desc=f"{name} windows",
        )

    emotion_windows = explode(config.emotion_window, "emotion")
    gender_windows = explode(config.gender_window, "gender")
    emotion_windows = emotion_windows.map(
        emotion.label_categorical_emotion, fn_kwargs=dict(model_ids=list(config.models.emotion), device=runtime.device), desc="emotion2vec", **common
    )
    emotion_windows = emotion_windows.map(
        dimension.label_dimensions, fn_kwargs=dict(model_id=config.models.dimension, device=runtime.device), desc="dimensions", **common
    )
    gender_windows = gender_windows.map(
        gender.label_gender, fn_kwargs=dict(model_id=config.models.gender, device=runtime.device), desc="gender", **common
    )
    return emotion_windows, gender_windows


def _attach_windows(segments: Dataset, emotion_windows: Dataset, gender_windows: Dataset) -> tuple[Dataset, list[str | None]]:
    """Group window rows under their segment; a segment with any failed window gets that error."""
    grouped_emotion: dict[str, list] = {}
    grouped_gender: dict[str, list] = {}
    errors: dict[str, str] = {}
    for row in emotion_windows:
        error = row["emotion_error"] or row["dimension_error"]
        if error:
            errors.setdefault(row["segment_id"], error)
        grouped_emotion.setdefault(row["segment_id"], []).append(
            {
                "start": row["start"],
                "end": row["end"],
                "emotion": row["condensed_emotion"],
                "raw_emotion": row["emotion"],
                "emotion_scores": row["emotion_scores"],
                "arousal": row["arousal"],
                "dominance": row["dominance"],
                "valence": row["valence"],
                "consistent": row["consistent"],
            }
        )
    for row in gender_windows:
        if row["gender_error"]:
            errors.setdefault(row["segment_id"], row["gender_error"])
        grouped_gender.setdefault(row["segment_id"], []).append(
            {"start": row["start"], "end": row["end"], "gender": row["gender"], "gender_score": row["gender_score"]}
        )
    ids = segments["segment_id"]
    columns = segments.to_dict()
    columns["emotion_windows"] = [grouped_emotion.get(sid, []) for sid in ids]
    columns["gender_windows"] = [grouped_gender.get(sid, []) for sid in ids]
    columns["gender"] = [condense.majority_gender(w) for w in columns["gender_windows"]]
    features = {k: CONDENSED_SEGMENT[k] for k in columns}
    from datasets import Features

    return Dataset.from_dict(columns, features=Features(features)), [errors.get(sid) for sid in ids]


def _ledger(recording_ids: list[str], failures: dict[str, tuple[str, str]], funnel: Funnel, kept: set[str]) -> list[dict]:
    """One entry per input recording: kept, failed (stage, error) or dropped (stage, reasons)."""
    by_recording: dict[str, list[Drop]] = {}
    for d in funnel.drops:
        by_recording.setdefault(d.recording_id, []).append(d)
    ledger = []
    for rid in recording_ids:
        if rid in failures:
            stage, error = failures[rid]
            ledger.append({"recording_id": rid, "status": "failed", "stage": stage, "reason": error})
            continue
        if rid in kept:
            ledger.append({"recording_id": rid, "status": "kept", "stage": None, "reason": None})
            continue
        drops = by_recording.get(rid, [])
        # The recording got as far as its furthest segment: report the drops at that stage.
        last = max((STAGES.index(d.stage) for d in drops), default=None)
        if last is None:
            ledger.append({"recording_id": rid, "status": "dropped", "stage": "segments", "reason": "no segment"})
            continue
        at_last = [d for d in drops if STAGES.index(d.stage) == last]
        if all(d.detail for d in at_last):  # every segment failed with an error
            ledger.append({"recording_id": rid, "status": "failed", "stage": STAGES[last], "reason": at_last[0].detail})
            continue
        reasons = Counter(d.reason for d in at_last)
        text = "; ".join(f"{n} segment(s) {r}" if STAGES[last] != "vad" else r for r, n in sorted(reasons.items()))
        ledger.append({"recording_id": rid, "status": "dropped", "stage": STAGES[last], "reason": text})
    return ledger


def write_outputs(result: BuildResult, out_dir: str | Path) -> Path:
    """``out_dir/condensed`` (load_from_disk), ``report.json`` (funnel) and ``recordings.jsonl`` (ledger)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.condensed.save_to_disk(str(out_dir / "condensed"))
    (out_dir / "report.json").write_text(json.dumps(result.report(), indent=2) + "\n")
    with open(out_dir / "recordings.jsonl", "w") as f:
        for entry in result.ledger:
            f.write(json.dumps(entry) + "\n")
    return out_dir
