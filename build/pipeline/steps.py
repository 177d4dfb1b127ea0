"""The per-shard steps of a build, each a small object: its name, what it reads, the config it uses and
a ``run`` over one shard that returns a typed ``ShardResult``. ``build.pipeline.executor`` owns the
loop around them (skip if done, stats, drops, progress); ``build.pipeline.build`` lists them in order.

    step        reads      writes (one row per)            config it uses
    vad         ingest     recording, speech regions       vad (less block_s, merge_gap_s), sample_rate
    label       vad        labelled segment                vad.merge_gap_s, segment bounds, windows, models
    condense    label      segment passing X_O             condense.x, .y, .alpha
    asr         sample     transcribed segment             asr (less batch_size)
    qa          asr        segment with its QA pairs       qa (the model that answers), word labels
    postfilter  qa         kept QA pair with category      postfilter, qa.pairs_per_segment
    empathy     asr        clip's empathetic sample        empathy, the QA model

A step's fingerprint hashes its name, its code version (``build.core.work``), the values of ``uses`` (plus
``extra``), the shard and the fingerprint its input was written under: the flow is written once, here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from datasets import Features

from ..core import schema
from ..core.config import Config
from ..models import categories
from ..models.llm import stats_delta
from ..models.llm_server import resolve_endpoint
from ..models.prompting import client_for
from ..stages import align, condense, empathy, label, postfilter, qa, segment, words
from . import columns as cols
from .context import Context
from .funnel import (
    ASR_FAILED,
    LABELLING_FAILED,
    LLM_FAILED,
    NO_PAIR_SURVIVED,
    NO_PAIRS,
    NO_SPEECH,
    NO_WORDS,
    llm_counts,
)


@dataclass(frozen=True)
class ShardResult:
    """What a step made of one shard: its rows, their features, the funnel counts and the dropped rows."""

    columns: dict[str, list]
    features: Features
    counts: dict[str, int]
    dropped: list[dict] = field(default_factory=list)


def config_value(config: Config, path: str):
    """The value at a dotted config path (``"vad.threshold"``), dataclass sections as dicts."""
    value = config
    for part in path.split("."):
        value = getattr(value, part)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


class Step:
    """One stage over one shard (subclasses set the class attributes and ``run``)."""

    name: ClassVar[str]
    reads: ClassVar[str]  # the work folder whose shard of the same name is this step's input
    uses: ClassVar[tuple[str, ...]] = ()  # config paths hashed into the fingerprint
    llm: ClassVar[bool] = False  # needs the LLM endpoint while it has tasks left

    def params(self, config: Config) -> dict:
        return {path: config_value(config, path) for path in self.uses} | self.extra(config)

    def extra(self, config: Config) -> dict:
        """Values the fingerprint hashes beyond ``uses`` (a resolved model, a prompt file)."""
        return {}

    def run(self, rows: dict[str, list], ctx: Context, advance: Callable[[float], None]) -> ShardResult:
        raise NotImplementedError


class Vad(Step):
    name, reads = "vad", "ingest"
    # block_s changes how a recording is read, not the regions (silero's state runs across blocks)
    uses = ("vad.threshold", "vad.min_speech_ms", "vad.min_silence_ms", "vad.speech_pad_ms", "sample_rate")

    def run(self, rows, ctx, advance):
        out: dict[str, list] = {"speech": [], "vad_error": []}
        dropped = []
        for row in cols.rows(rows):  # one recording at a time, for the progress
            found = segment.detect_speech({"audio_path": [row["audio_path"]], "error": [row["error"]]}, ctx.config.vad)
            speech, vad_error = found["speech"][0], found["vad_error"][0]
            out["speech"].append(speech)
            out["vad_error"].append(vad_error)
            advance(row["duration"] or 0.0)
            rid = row["recording_id"]
            if row["error"] is not None:
                continue  # the ingest step recorded it
            if vad_error is not None:
                reason = segment.vad_drop_reason(vad_error)
                dropped.append({"stage": "vad", "recording_id": rid, "reason": reason, "detail": vad_error})
            elif not speech:
                dropped.append({"stage": "vad", "recording_id": rid, "reason": NO_SPEECH})
        counts = {"vad": sum(1 for s in out["speech"] if s)}
        return ShardResult({**rows, **out}, cols.VAD_RECORDING, counts, dropped)


class Label(Step):
    name, reads = "label", "vad"
    uses = ("vad.merge_gap_s", "min_segment_s", "max_segment_s", "emotion_window", "gender_window", "models")
    uses += ("runtime.precision",)

    def run(self, rows, ctx, advance):
        c = ctx.config
        segments = segment.explode_segments(rows, merge_gap_s=c.vad.merge_gap_s, max_segment_s=c.max_segment_s)
        n_segments = len(segments["segment_id"])
        bounds = zip(segments["start"], segments["end"])
        reasons = [segment.length_drop_reason(s, e, c.min_segment_s, c.max_segment_s) for s, e in bounds]
        keep, dropped = cols.split("length", segments, reasons)
        segments = cols.pick(segments, keep)
        if keep:
            labels = label.label_segments(segments, c, rank=ctx.ranks.local, on_segment_done=advance)
        else:
            labels = {name: [] for name in schema.LABEL_OUTPUT}
        errors = labels["label_error"]
        failed = [LABELLING_FAILED if e else None for e in errors]
        labelled, label_dropped = cols.split("label", segments, failed, errors)
        counts = {"segments": n_segments, "length": len(keep), "label": len(labelled)}
        columns = cols.pick({**segments, **labels}, labelled)
        return ShardResult(columns, schema.LABELLED_SEGMENT, counts, dropped + label_dropped)


class Condense(Step):
    """X_E on every window, X_O on every segment; the gender majority."""

    name, reads = "condense", "label"
    uses = ("condense.x", "condense.y", "condense.alpha")

    def run(self, rows, ctx, advance):
        c = ctx.config.condense
        items = cols.rows(rows)
        windows = [w for row in items for w in row["emotion_windows"]]
        batch = {"emotion": [w["emotion"] for w in windows], "valence": [w["valence"] for w in windows]}
        marks = condense.mark_consistency(batch, x=c.x, y=c.y)
        marked = iter(zip(marks["consistent"], marks["condensed_emotion"]))
        out, dropped = [], []
        for row in items:
            emotion_windows = []
            for w in row["emotion_windows"]:
                consistent, condensed = next(marked)
                emotion_windows.append({**w, "emotion": condensed, "raw_emotion": w["emotion"], "consistent": consistent})
            occurrence = condense.count_occurrences({"emotion_windows": [emotion_windows]}, alpha=c.alpha)
            if occurrence["drop_reason"][0] is not None:
                drop = {"recording_id": row["recording_id"], "segment_id": row["segment_id"]}
                dropped.append({"stage": "occurrence", **drop, "reason": occurrence["drop_reason"][0]})
                continue
            out.append(_condensed(row, emotion_windows, occurrence))
        columns = cols.from_rows(out, schema.CONDENSED_SEGMENT)
        return ShardResult(columns, schema.CONDENSED_SEGMENT, {"occurrence": len(out)}, dropped)


def _condensed(row: dict, emotion_windows: list[dict], occurrence: dict[str, list]) -> dict:
    return {
        **{k: row[k] for k in schema.SEGMENT},
        "emotion_windows": emotion_windows,
        "gender_windows": row["gender_windows"],
        "emotion_counts": occurrence["emotion_counts"][0],
        "emotions": occurrence["emotions"][0],
        "primary_emotion": occurrence["primary_emotion"][0],
        "gender": condense.majority_gender(row["gender_windows"]),
    }


class Asr(Step):
    name, reads = "asr", "sample"
    uses = ("asr.model", "asr.aligner", "asr.language", "asr.compute_type", "asr.diarize")

    def run(self, rows, ctx, advance):
        asr = ctx.config.asr
        device = ctx.config.runtime.device
        out = cols.map_batches(rows, align.transcribe_and_align, asr.batch_size, advance, asr, ctx.ranks.local, device)
        errors = [e or None for e in out.get("asr_error", [])]
        transcripts = out.get("transcript", [])
        reasons = [ASR_FAILED if e else (None if t and t.strip() else NO_WORDS) for e, t in zip(errors, transcripts)]
        keep, dropped = cols.split("asr", rows, reasons, errors)
        return ShardResult(cols.pick({**rows, **out}, keep), cols.ASR_SEGMENT, {"asr": len(keep)}, dropped)


class _LlmStep(Step):
    """A step whose requests go to the build's LLM endpoint; its call counts join the shard's counts."""

    llm = True

    def model(self, config: Config) -> str:
        return resolve_endpoint(config.qa)[1]  # the embedded one when no endpoint is set

    def generate(self, rows, ctx, advance, fn, *sections) -> tuple[dict[str, list], dict[str, int]]:
        base_url, qa_config = ctx.endpoint.open()
        client = client_for(qa_config, base_url, ctx.cache_dir)
        before = client.calls.snapshot()
        size = max(qa_config.concurrency * 4, 16)
        out = cols.map_batches(rows, fn, size, advance, *sections, qa_config, base_url=base_url, cache_dir=ctx.cache_dir)
        return out, llm_counts(stats_delta(client.calls.snapshot(), before))


class Qa(_LlmStep):
    name, reads = "qa", "asr"
    uses = ("qa.prompt_version", "qa.word_timing", "qa.pairs_per_segment", "qa.temperature", "qa.max_tokens")
    uses += ("qa.structured_output", "qa.language")

    def extra(self, config):
        return {"model": self.model(config)}

    def run(self, rows, ctx, advance):
        rows = {**rows, **words.tag_words(rows)}
        out, calls = self.generate(rows, ctx, advance, qa.generate_qa)
        reasons = [_qa_reason(e, pairs) for e, pairs in zip(out.get("qa_error", []), out.get("qa_pairs", []))]
        keep, dropped = cols.split("qa", rows, reasons, out.get("qa_error", []))
        columns = cols.pick({**rows, **out}, keep)
        return ShardResult(columns, cols.QA_SEGMENT, {"qa": len(keep), **calls}, dropped)


def _qa_reason(error: str | None, pairs: list) -> str | None:
    if error:
        return error if error in (qa.UNPARSEABLE, qa.NO_TRANSCRIPT) else LLM_FAILED
    return None if pairs else NO_PAIRS


class PostFilter(Step):
    name, reads = "postfilter", "qa"
    uses = ("postfilter", "qa.pairs_per_segment")

    def extra(self, config):
        # the LLM that categorises, else the offline classifier (its data file's hash included)
        llm = categories.llm_model(config.postfilter.categoriser, config.qa)
        return {"categoriser_model": llm or categories.offline_model()}

    def run(self, rows, ctx, advance):
        pf = ctx.config.postfilter
        pairs = postfilter.explode_pairs(rows)
        max_pairs, fragments = ctx.config.qa.pairs_per_segment, qa.prompt_fragments()
        reasons = postfilter.filter_reasons(pairs, pf, max_pairs=max_pairs, prompt_fragments=fragments)
        reasons = postfilter.mark_duplicates({**pairs, **reasons}, pf, ctx.ranks.local, ctx.config.runtime.device)
        texts = [f"Q: {q} | A: {a}" for q, a in zip(pairs["question"], pairs["answer"])]
        keep, dropped = cols.split("pairs", pairs, reasons["drop_reason"], texts)
        kept = cols.pick(pairs, keep)
        categoriser = ctx.categoriser()
        before = categoriser.calls.snapshot() if categoriser is not None else None
        kept = {**kept, **postfilter.categorise(kept, categoriser)}
        with_pairs = set(kept["segment_id"])
        survived = [None if sid in with_pairs else NO_PAIR_SURVIVED for sid in rows["segment_id"]]
        dropped += cols.split("postfilter", rows, survived)[1]
        counts = {"generated": len(pairs["segment_id"]), "pairs": len(keep), "postfilter": len(with_pairs)}
        if categoriser is not None:  # a failed call fell back to the rules: the shard is redone on the next run
            counts.update(llm_counts(stats_delta(categoriser.calls.snapshot(), before)))
        return ShardResult(kept, schema.QA_PAIR, counts, dropped)


class Empathy(_LlmStep):
    """One empathetic-response sample per clip; clips without one are dropped with the reason."""

    name, reads = "empathy", "asr"
    uses = ("empathy",)

    def extra(self, config):
        demos = empathy.DEMOS_FILE.read_text()
        return {"model": self.model(config), "prompt_version": empathy.PROMPT_VERSION, "demos": demos}

    def run(self, rows, ctx, advance):
        rows = {**rows, **words.tag_words(rows)}
        out = {name: [] for name in empathy.OUTPUT_COLUMNS}  # a shard that lost every clip at ASR
        generated, calls = self.generate(rows, ctx, advance, empathy.generate_empathy, ctx.config.empathy)
        out.update(generated)
        errors = out["empathy_error"]
        reasons = [(e if e in empathy.REASONS else empathy.REQUEST_FAILED) if e else None for e in errors]
        # the audit keeps the transport error, or the rejected reply itself
        raws = out["empathy_raw"]
        details = [e if r == empathy.REQUEST_FAILED else raw for e, r, raw in zip(errors, reasons, raws)]
        keep, dropped = cols.split("empathy", rows, reasons, details)
        columns = cols.pick({**rows, **out}, keep)
        return ShardResult(columns, schema.EMPATHY_SAMPLE, {"empathy": len(keep), **calls}, dropped)
