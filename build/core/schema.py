"""Label sets and the columns each stage adds: the contract between stages.

Times are seconds from the start of the recording. Audio is never copied between stages: rows carry
``audio_path`` plus ``start``/``end`` and decode the span on demand (``build.sources.audio``).
"""

from __future__ import annotations

from datasets import Features, List, Value

# emotion2vec+ output order (its tokens.txt), which is also alphabetical.
EMOTION_LABELS = (
    "angry",
    "disgusted",
    "fearful",
    "happy",
    "neutral",
    "other",
    "sad",
    "surprised",
    "unknown",
)
SENTIMENT_CLASSES = {
    "positive": frozenset({"happy"}),
    "neutral": frozenset({"neutral"}),
    "ambiguous": frozenset({"surprised"}),
    "negative": frozenset({"angry", "disgusted", "fearful", "sad"}),
}
# Response-strategy families of the empathy output (DESIGN.md §5), and the family of every label:
# negative and positive follow the sentiment classes; neutral, ambiguous (surprised), other and
# unknown are "neutral or mixed".
FAMILIES = {
    "negative": ("validation", "empathetic response", "problem-solving", "redirection", "de-escalation", "normalisation"),
    "positive": ("celebration", "inquiry", "gratitude", "reciprocal enthusiasm", "future-oriented discussion"),
    "neutral or mixed": ("clarification", "open-ended questioning", "mindful presence", "summarisation"),
}
EMOTION_FAMILY = {
    label: "negative" if label in SENTIMENT_CLASSES["negative"] else "positive" if label in SENTIMENT_CLASSES["positive"] else "neutral or mixed"
    for label in EMOTION_LABELS
}
GENDER_LABELS = ("female", "male")
DIMENSIONS = ("arousal", "dominance", "valence")  # audeering MSP-Podcast output order

# stage 0: ingest -> one row per recording
RECORDING = Features(
    {
        "recording_id": Value("string"),
        "audio_path": Value("string"),
        "duration": Value("float64"),  # seconds; null when the file could not be probed
        "error": Value("string"),  # null when the file opened
        "sha256": Value("string"),  # of the file's bytes; null for table references and unreadable files
    }
)

PROBE_OUTPUT = Features({"duration": RECORDING["duration"], "error": RECORDING["error"], "sha256": RECORDING["sha256"], "drop_reason": Value("string")})

# stage 1: VAD -> new columns on the recording rows
VAD_OUTPUT = Features({"speech": List({"start": Value("float64"), "end": Value("float64")}), "vad_error": Value("string")})

# stage 2: one row per segment
SEGMENT = Features(
    {
        "segment_id": Value("string"),  # {recording_id}-{index:04d}
        "recording_id": Value("string"),
        "audio_path": Value("string"),
        "start": Value("float64"),
        "end": Value("float64"),
    }
)

# stage 3: one row per labelling window (one table per labeller)
WINDOW = Features(
    {
        "segment_id": Value("string"),
        "recording_id": Value("string"),
        "audio_path": Value("string"),
        "start": Value("float64"),  # labelled span
        "end": Value("float64"),
        "ctx_start": Value("float64"),  # what the model hears
        "ctx_end": Value("float64"),
    }
)

# stage 4-6: columns each labeller adds to its window rows
CATEGORICAL_OUTPUT = Features(
    {"emotion": Value("string"), "emotion_scores": List(Value("float32")), "emotion_error": Value("string")}
)
DIMENSIONAL_OUTPUT = Features(
    {
        "arousal": Value("float32"),
        "dominance": Value("float32"),
        "valence": Value("float32"),
        "dimension_error": Value("string"),
    }
)
GENDER_OUTPUT = Features(
    {"gender": Value("string"), "gender_score": Value("float32"), "gender_error": Value("string")}
)

# stage 7: X_E on emotion windows, X_O on segments
CONSISTENCY_OUTPUT = Features({"consistent": Value("bool"), "condensed_emotion": Value("string")})
OCCURRENCE_OUTPUT = Features(
    {
        "emotion_counts": {label: Value("int32") for label in EMOTION_LABELS},
        "emotions": List(Value("string")),
        "primary_emotion": Value("string"),
        "drop_reason": Value("string"),
    }
)

EMOTION_WINDOW = {
    "start": Value("float64"),
    "end": Value("float64"),
    "emotion": Value("string"),  # after X_E: "unknown" when inconsistent with valence
    "raw_emotion": Value("string"),  # the classifier's own label
    "emotion_scores": List(Value("float32")),  # 9 scores in EMOTION_LABELS order
    "arousal": Value("float32"),
    "dominance": Value("float32"),
    "valence": Value("float32"),
    "consistent": Value("bool"),
}
GENDER_WINDOW = {"start": Value("float64"), "end": Value("float64"), "gender": Value("string"), "gender_score": Value("float32")}

# stages 3-6 as one per-shard task (build.stages.label): a segment with its raw window labels
RAW_EMOTION_WINDOW = {
    "start": Value("float64"),
    "end": Value("float64"),
    "emotion": Value("string"),  # the classifier's own label (before X_E)
    "emotion_scores": List(Value("float32")),  # 9 scores in EMOTION_LABELS order
    "arousal": Value("float32"),
    "dominance": Value("float32"),
    "valence": Value("float32"),
}
LABEL_OUTPUT = Features(
    {
        "emotion_windows": List(RAW_EMOTION_WINDOW),
        "gender_windows": List(GENDER_WINDOW),
        "label_error": Value("string"),  # null, or the first window error of the segment (file and span named)
    }
)
LABELLED_SEGMENT = Features({**SEGMENT, **LABEL_OUTPUT})

# stage 7: a condensed, labelled segment
CONDENSED_SEGMENT = Features(
    {
        **SEGMENT,
        "emotion_windows": List(EMOTION_WINDOW),
        "gender_windows": List(GENDER_WINDOW),
        "emotion_counts": {label: Value("int32") for label in EMOTION_LABELS},
        "emotions": List(Value("string")),  # every category that passed its α
        "primary_emotion": Value("string"),
        "gender": Value("string"),  # majority over the gender windows
    }
)

# stage 8-9: ASR + alignment, then word labels (columns added to condensed segment rows)
WORD = {
    "word": Value("string"),
    "start": Value("float64"),
    "end": Value("float64"),
    "score": Value("float32"),
    "speaker": Value("string"),  # with asr.diarize: the clip's diarization label (SPEAKER_00, ...); else null
}
ASR_OUTPUT = Features(
    {
        "transcript": Value("string"),
        "language": Value("string"),
        "words": List(WORD),  # times in seconds of the recording; null for words the aligner left untimed
        "aligner": Value("string"),  # which aligner produced the times
        "n_speakers": Value("int32"),  # speakers the diarization found in the clip; null without asr.diarize
        "asr_error": Value("string"),
    }
)
TAGGED_WORD = {**WORD, "emotion": Value("string"), "gender": Value("string")}
WORDS_OUTPUT = Features({"tagged_words": List(TAGGED_WORD)})

# acoustic descriptors of a clip (build.stages.descriptors; units and null rules in its docstring)
DESCRIPTOR_WINDOW = {
    "start": Value("float64"),
    "end": Value("float64"),
    "f0_semitone_mean": Value("float64"),
    "loudness_mean": Value("float64"),
}
DESCRIPTORS_OUTPUT = Features(
    {
        **{
            name: Value("float64")
            for name in (
                "f0_semitone_mean", "f0_semitone_median", "f0_semitone_range", "loudness_mean", "jitter_local",
                "shimmer_local_db", "hnr_db", "voiced_fraction",
            )
        },
        "descriptor_windows": List(DESCRIPTOR_WINDOW),
        "syllable_count": Value("int64"),
        "speech_s": Value("float64"),
        "speaking_rate": Value("float64"),  # syllables per second of speech
        "pause_count": Value("int64"),
        "pause_mean_s": Value("float64"),
        "loudness_lufs": Value("float64"),
        "clipped_fraction": Value("float64"),
        "dnsmos_sig": Value("float64"),
        "dnsmos_bak": Value("float64"),
        "dnsmos_ovrl": Value("float64"),
    }
)

# stage 10: QA generation (columns added to segment rows)
QA_OUTPUT = Features(
    {
        "qa_pairs": List({"question": Value("string"), "answer": Value("string")}),
        "qa_raw": Value("string"),  # the LLM's reply as received, kept for every row
        "qa_error": Value("string"),
        "prompt_version": Value("string"),
        "llm_model": Value("string"),
    }
)

# stage 11: one row per generated pair, the post-filter's reasons, and the kept pairs with categories
PAIR = Features(
    {
        "segment_id": Value("string"),
        "recording_id": Value("string"),
        "pair_index": Value("int64"),  # position in the LLM's reply
        "question": Value("string"),
        "answer": Value("string"),
    }
)
DROP_REASON = Features({"drop_reason": Value("string")})
CATEGORY = Features({"category": Value("string")})
QA_PAIR = Features({**PAIR, **CATEGORY})

# empathy output: one sample per condensed clip (build.stages.empathy); times relative to clip_start
EMPATHY_OUTPUT = Features(
    {
        "clip_start": Value("float64"),  # the published audio, in recording time
        "clip_end": Value("float64"),
        "text_context": List({"speaker": Value("string"), "text": Value("string")}),
        "target_utterance": {
            "text": Value("string"),
            "start": Value("float64"),
            "end": Value("float64"),
            "emotions": {"primary": Value("string"), "secondary": Value("string")},
        },
        "desired_response": {"text": Value("string"), "response_strategy": Value("string"), "emotion_awareness": Value("string")},
        "empathy_raw": Value("string"),  # the LLM's reply as received
        "empathy_error": Value("string"),
        "prompt_version": Value("string"),
        "llm_model": Value("string"),
    }
)
EMPATHY_SAMPLE = Features(
    {
        "segment_id": SEGMENT["segment_id"],
        "recording_id": SEGMENT["recording_id"],
        "audio_path": SEGMENT["audio_path"],
        **{k: v for k, v in EMPATHY_OUTPUT.items() if k != "empathy_error"},
    }
)

# every dropped recording, segment or QA pair, with why (OUT/work/<stage>/<shard>.dropped.parquet,
# merged into OUT/work/dropped/<stage>.parquet at the end of a build)
DROPPED = Features(
    {
        "stage": Value("string"),  # the funnel step that dropped it (build.pipeline.FUNNEL)
        "recording_id": Value("string"),
        "segment_id": Value("string"),  # null for a whole recording
        "pair_index": Value("int64"),  # null unless a QA pair was dropped
        "reason": Value("string"),  # counted in the funnel: the same words for every row dropped for it
        "detail": Value("string"),  # the error or the dropped text; null when the reason says it all
    }
)

# the global ingest step: every recording with its shard (OUT/work/ingest/recordings.parquet)
PLANNED_RECORDING = Features({**RECORDING, "shard": Value("string")})
