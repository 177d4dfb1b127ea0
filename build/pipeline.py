"""The only module that knows the stage order; it also keeps the funnel and the per-recording ledger.

    recordings --probe--> --VAD--> segments --length filter--> windows (emotion, gender)
      --emotion2vec+ ensemble, MSP-Podcast dimensions, gender--> --X_E--> segments with windows
      --X_O--> --balanced sampling--> condensed segments                       (run_labelling)
      --ASR + alignment--> --word join--> --LLM QA--> pairs --post-filter--> (run_qa)
      --> Parquet + dataset card                                               (export_dataset)

Every drop is counted by stage and reason (``Funnel``), and every input recording ends as
``kept``, ``dropped`` (stage and reason) or ``failed`` (stage and error) in the ledger.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, Features

from . import align, condense, dimension, emotion, export, gender, ingest, postfilter, qa, schema, segment, windows, words
from .config import Config

STAGES = ("ingest", "vad", "length", "label", "occurrence", "sampling", "asr", "qa", "postfilter")


@dataclass
class Drop:
    recording_id: str
    stage: str
    reason: str  # counted in the funnel: no file names, nothing that varies per row
    detail: str | None = None  # the full error message, kept in the ledger


@dataclass
class Funnel:
    counts: dict[str, int] = field(default_factory=dict)  # rows after each step, in order
    drops: list[Drop] = field(default_factory=list)  # recordings and segments
    pair_drops: Counter = field(default_factory=Counter)  # QA pairs, by reason

    def drop_counts(self) -> dict[str, dict[str, int]]:
        table: dict[str, Counter] = {}
        for d in self.drops:
            table.setdefault(d.stage, Counter())[d.reason] += 1
        if self.pair_drops:
            table["pairs"] = Counter(self.pair_drops)
        return {stage: dict(counter) for stage, counter in table.items()}


@dataclass
class BuildResult:
    recording_ids: list[str]
    failures: dict[str, tuple[str, str]]
    funnel: Funnel
    segments: Dataset  # condensed segments (with transcripts and pairs once run_qa ran)
    pairs: Dataset | None = None  # kept QA pairs, once run_qa ran

    @property
    def ledger(self) -> list[dict]:
        final = self.pairs if self.pairs is not None else self.segments
        return _ledger(self.recording_ids, self.failures, self.funnel, set(final["recording_id"]))

    def report(self) -> dict:
        report = {
            "counts": self.funnel.counts,
            "drops": self.funnel.drop_counts(),
            "recordings": dict(Counter(entry["status"] for entry in self.ledger)),
            "primary_emotions": dict(Counter(self.segments["primary_emotion"])),
        }
        if self.pairs is not None:
            report["categories"] = dict(Counter(self.pairs["category"]))
        return report


def _drop_rows(data: Dataset, reasons: list[str | None], stage: str, funnel: Funnel, details: list | None = None) -> Dataset:
    """Drop the rows that have a reason, recording each drop against its recording."""
    rids = data["recording_id"]
    for i, reason in enumerate(reasons):
        if reason is not None:
            funnel.drops.append(Drop(rids[i], stage, reason, details[i] if details else None))
    return data.select([i for i, reason in enumerate(reasons) if reason is None])


# ---------------------------------------------------------------- labelling half (stages 0-7)
def _map(data: Dataset, fn, columns: Features, *, replace: bool = False, **kwargs) -> Dataset:
    """``Dataset.map`` with its output typed by ``columns`` (new columns, or all of them if ``replace``).

    Typing every stage's output keeps a batch of failures (all nulls) from fixing a column's type,
    and an empty input still gets the stage's columns: datasets never calls the function then.
    """
    features = columns if replace else Features({**data.features, **columns})
    if len(data) == 0:
        return Dataset.from_dict({name: [] for name in features}, features=features)
    if replace:
        kwargs["remove_columns"] = data.column_names
    return data.map(fn, batched=True, features=features, **kwargs)


def run_labelling(source: str | Path, config: Config, work_dir: str | Path) -> BuildResult:
    """Ingest → condensation on ``source``."""
    work_dir = Path(work_dir)
    funnel = Funnel()

    recordings = ingest.list_recordings(source, cache_dir=work_dir / "cache")
    recordings = _map(recordings, ingest.probe_recordings, schema.PROBE_OUTPUT, batch_size=32, desc="probe")
    funnel.counts["recordings"] = len(recordings)
    vad = config.vad
    vad_kwargs = dict(threshold=vad.threshold, min_speech_ms=vad.min_speech_ms, min_silence_ms=vad.min_silence_ms, speech_pad_ms=vad.speech_pad_ms)
    recordings = _map(recordings, segment.detect_speech, schema.VAD_OUTPUT, batch_size=8, fn_kwargs=vad_kwargs, desc="vad")
    failures = {}
    for rid, error, vad_error, speech in zip(recordings["recording_id"], recordings["error"], recordings["vad_error"], recordings["speech"]):
        if error is not None:
            failures[rid] = ("ingest", error)
        elif vad_error is not None:
            failures[rid] = ("vad", vad_error)
        elif not speech:
            funnel.drops.append(Drop(rid, "vad", "no speech detected"))
    funnel.counts["recordings with speech"] = sum(1 for s in recordings["speech"] if s)

    segments = _map(
        recordings, segment.explode_segments, schema.SEGMENT, replace=True,
        fn_kwargs=dict(merge_gap_s=vad.merge_gap_s, max_segment_s=config.max_segment_s), desc="segments",
    )  # fmt: skip
    funnel.counts["segments"] = len(segments)
    reasons = [segment.length_drop_reason(s, e, config.min_segment_s, config.max_segment_s) for s, e in zip(segments["start"], segments["end"])]
    segments = _drop_rows(segments, reasons, "length", funnel)
    funnel.counts["segments within length"] = len(segments)

    emotion_windows, gender_windows = _label_windows(segments, config)
    emotion_windows = _map(
        emotion_windows, condense.mark_consistency, schema.CONSISTENCY_OUTPUT,
        fn_kwargs=dict(x=config.condense.x, y=config.condense.y), desc="consistency",
    )  # fmt: skip
    segments, label_errors = _attach_windows(segments, emotion_windows, gender_windows)
    segments = _drop_rows(segments, [("labelling failed" if e else None) for e in label_errors], "label", funnel, label_errors)
    funnel.counts["segments labelled"] = len(segments)

    segments = _map(segments, condense.count_occurrences, schema.OCCURRENCE_OUTPUT, fn_kwargs=dict(alpha=config.condense.alpha), desc="occurrence")
    segments = _drop_rows(segments, segments["drop_reason"], "occurrence", funnel).remove_columns("drop_reason")
    funnel.counts["segments passing occurrence"] = len(segments)
    kept = condense.balanced_sample(segments["segment_id"], segments["primary_emotion"], config.condense.samples_per_category, config.condense.seed)
    segments = _drop_rows(segments, [None if sid in kept else "over the per-category quota" for sid in segments["segment_id"]], "sampling", funnel)
    funnel.counts["condensed segments"] = len(segments)
    return BuildResult(recordings["recording_id"], failures, funnel, segments.cast(schema.CONDENSED_SEGMENT))


def _label_windows(segments: Dataset, config: Config) -> tuple[Dataset, Dataset]:
    runtime = config.runtime
    on_device = dict(batch_size=runtime.batch_size, with_rank=True, num_proc=runtime.num_proc)

    def explode(spec, name):
        kwargs = dict(label_s=spec.label_s, context_s=spec.context_s, min_last_fraction=spec.min_last_fraction)
        return _map(segments, windows.explode_windows, schema.WINDOW, replace=True, fn_kwargs=kwargs, desc=f"{name} windows")

    emotion_windows = explode(config.emotion_window, "emotion")
    gender_windows = explode(config.gender_window, "gender")
    emotion_windows = _map(
        emotion_windows, emotion.label_categorical_emotion, schema.CATEGORICAL_OUTPUT,
        fn_kwargs=dict(model_ids=list(config.models.emotion), device=runtime.device), desc="emotion2vec", **on_device,
    )  # fmt: skip
    emotion_windows = _map(
        emotion_windows, dimension.label_dimensions, schema.DIMENSIONAL_OUTPUT,
        fn_kwargs=dict(model_id=config.models.dimension, device=runtime.device), desc="dimensions", **on_device,
    )  # fmt: skip
    gender_windows = _map(
        gender_windows, gender.label_gender, schema.GENDER_OUTPUT,
        fn_kwargs=dict(model_id=config.models.gender, device=runtime.device), desc="gender", **on_device,
    )  # fmt: skip
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
    features = Features({k: schema.CONDENSED_SEGMENT[k] for k in columns})
    return Dataset.from_dict(columns, features=features), [errors.get(sid) for sid in ids]


# ---------------------------------------------------------------- QA half (stages 8-11)
def run_qa(result: BuildResult, config: Config, work_dir: str | Path, base_url: str | None) -> BuildResult:
    """ASR → word join → QA generation → post-filter on the condensed segments of ``result``.

    ``base_url`` is the OpenAI-compatible endpoint (the caller starts the embedded one if needed).
    """
    funnel, runtime, asr = result.funnel, config.runtime, config.asr
    segments = _map(
        result.segments, align.transcribe_and_align, schema.ASR_OUTPUT,
        batch_size=asr.batch_size, with_rank=True, num_proc=runtime.num_proc,
        fn_kwargs=dict(model=asr.model, aligner=asr.aligner, language=asr.language, compute_type=asr.compute_type, batch_size=asr.batch_size, device=runtime.device),
        desc="asr",
    )  # fmt: skip
    errors = segments["asr_error"]
    reasons = ["transcription failed" if e else (None if t and t.strip() else "no words recognised") for e, t in zip(errors, segments["transcript"])]
    segments = _drop_rows(segments, reasons, "asr", funnel, [e or None for e in errors])
    funnel.counts["segments transcribed"] = len(segments)
    segments = _map(segments, words.tag_words, schema.WORDS_OUTPUT, desc="word labels")

    q = config.qa
    segments = _map(
        segments,
        qa.generate_qa,
        schema.QA_OUTPUT,
        batch_size=max(q.concurrency * 4, 16),
        fn_kwargs=dict(
            base_url=base_url,
            model=q.model,
            api_key_env=q.api_key_env,
            cache_dir=str(Path(work_dir) / "llm-cache"),
            pairs_per_segment=q.pairs_per_segment,
            temperature=q.temperature,
            max_tokens=q.max_tokens,
            structured_output=q.structured_output,
            concurrency=q.concurrency,
            max_retries=q.max_retries,
            timeout_s=q.timeout_s,
        ),
        desc="qa",
    )
    qa_errors = segments["qa_error"]
    reasons = [(_generic(e) if e else (None if pairs else "no pairs in the reply")) for e, pairs in zip(qa_errors, segments["qa_pairs"])]
    segments = _drop_rows(segments, reasons, "qa", funnel, qa_errors)
    funnel.counts["segments with QA pairs"] = len(segments)

    pairs = _map(segments, postfilter.explode_pairs, schema.PAIR, replace=True, desc="pairs")
    funnel.counts["QA pairs generated"] = len(pairs)
    pairs = _post_filter(pairs, config, funnel)
    funnel.counts["QA pairs kept"] = len(pairs)
    with_pairs = set(pairs["segment_id"])
    segments = _drop_rows(segments, [None if sid in with_pairs else "no pair survived the post-filter" for sid in segments["segment_id"]], "postfilter", funnel)
    funnel.counts["segments in the benchmark"] = len(segments)
    result.segments, result.pairs = segments, pairs
    return result


def _post_filter(pairs: Dataset, config: Config, funnel: Funnel) -> Dataset:
    """Drop pairs by reason (counted), then tag the categories of those kept."""
    pf = config.postfilter
    filter_kwargs = dict(transcript_words=list(pf.transcript_words), min_answer_chars=pf.min_answer_chars)
    pairs = _map(pairs, postfilter.filter_reasons, schema.DROP_REASON, fn_kwargs=filter_kwargs, desc="post-filter")
    pairs = _map(
        pairs, postfilter.mark_duplicates, schema.DROP_REASON,
        batch_size=None,  # whole table in one batch: duplicates are looked for within each segment
        with_rank=True,
        fn_kwargs=dict(model=pf.embedding_model, threshold=pf.duplicate_threshold, device=config.runtime.device),
        desc="duplicates",
    )  # fmt: skip
    funnel.pair_drops.update(r for r in pairs["drop_reason"] if r is not None)
    pairs = _drop_pairs(pairs)
    return _map(pairs, postfilter.categorise, schema.CATEGORY, desc="categories")


def _drop_pairs(pairs: Dataset) -> Dataset:
    return pairs.select([i for i, reason in enumerate(pairs["drop_reason"]) if reason is None]).remove_columns("drop_reason")


def _generic(error: str) -> str:
    """Funnel reason for a QA error: the parse and transcript ones as they are, transport errors as one."""
    return error if error in (qa.UNPARSEABLE, qa.NO_TRANSCRIPT) else "LLM request failed"


# ---------------------------------------------------------------- ledger
def _ledger(recording_ids: list[str], failures: dict[str, tuple[str, str]], funnel: Funnel, kept: set[str]) -> list[dict]:
    """One entry per input recording: kept, failed (stage, error) or dropped (stage, reasons)."""
    by_recording: dict[str, list[Drop]] = {}
    for d in funnel.drops:
        by_recording.setdefault(d.recording_id, []).append(d)
    ledger = []
    for rid in recording_ids:
        entry = {"recording_id": rid, "status": "kept", "stage": None, "reason": None}
        drops = by_recording.get(rid, [])
        if rid in failures:
            entry.update(status="failed", stage=failures[rid][0], reason=failures[rid][1])
        elif rid not in kept and drops:
            # The recording got as far as its furthest segment: report the drops at that stage.
            last = max(STAGES.index(d.stage) for d in drops)
            at_last = [d for d in drops if STAGES.index(d.stage) == last]
            if all(d.detail for d in at_last):  # every one of them failed with an error
                entry.update(status="failed", stage=STAGES[last], reason=at_last[0].detail)
            else:
                reasons = Counter(d.reason for d in at_last)
                entry.update(status="dropped", stage=STAGES[last], reason="; ".join(f"{r} (x{n})" if n > 1 else r for r, n in sorted(reasons.items())))
        elif rid not in kept:
            entry.update(status="dropped", stage="segments", reason="no segment")
        ledger.append(entry)
    return ledger


def write_report(result: BuildResult, out_dir: str | Path) -> None:
    """``report.json`` (funnel) and ``recordings.jsonl`` (ledger) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(result.report(), indent=2) + "\n")
    with open(out_dir / "recordings.jsonl", "w") as f:
        for entry in result.ledger:
            f.write(json.dumps(entry) + "\n")


# ---------------------------------------------------------------- export (stage 12)
def model_ids(config: Config) -> dict[str, object]:
    """The models behind the labels, as published (local folders by name only)."""
    return {
        "emotion_models": [export.public_model_id(m) for m in config.models.emotion],
        "dimension_model": export.public_model_id(config.models.dimension),
        "gender_model": export.public_model_id(config.models.gender),
        "asr_model": export.public_model_id(config.asr.model),
    }


def export_dataset(result: BuildResult, config: Config, out_dir: str | Path, *, license: str, sources: str, card_template: str) -> Path:
    """Parquet shards for the ``qa`` and ``segments`` configs, the card as README.md, and the reports."""
    out_dir = Path(out_dir)
    models = model_ids(config)
    segment_rows = export.segment_table(result.segments, models, Counter(result.pairs["segment_id"]))
    qa_rows = export.qa_table(result.pairs, segment_rows)
    export.write_config(qa_rows, out_dir, "qa")
    export.write_config(segment_rows, out_dir, "segments")
    values = export.card_values(config, qa_rows, segment_rows, result.report(), models, license=license, sources=sources, load_path=str(out_dir))
    values["dataset_info"] = export.dataset_info_yaml(out_dir, {"qa": len(qa_rows), "segments": len(segment_rows)})
    (out_dir / "README.md").write_text(export.render_card(card_template, values))
    write_report(result, out_dir)
    return out_dir
