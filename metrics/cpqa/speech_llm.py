"""The speech-LLM side of CPQA: decode audio, cut the 30 s windows, and answer questions.

Audio longer than the window is answered twice, on its first and on its last ``window_seconds``
(the paper's protocol), as windows named after their length (``first_30s``/``last_30s`` for 30 s,
``first_10s``/``last_10s`` for 10 s); the judge keeps the better answer. ``window_seconds=None`` sends
the whole clip as one window (``full``), for models that take long audio. The protocol is the same for every
backend:

- ``TransformersBackend``: a Qwen2-Audio checkpoint (hub id or local folder) in-process, bf16 on CUDA,
  SDPA attention, left-padded batches of similar length;
- ``OpenAiBackend``: any OpenAI-compatible chat endpoint taking ``input_audio`` (base64 16 kHz PCM16 WAV),
  e.g. ``vllm serve Qwen/Qwen2-Audio-7B-Instruct``, concurrent, with the LLM client's retries;
- ``CallableBackend``: a plain ``model(questions, waveforms, sampling_rate) -> answers``.

A backend answers a batch with one text per window, or an ``Exception`` instance for a window it
failed on. A call that raises is asked again one window at a time, and the windows it still raises on
fail alone (their error is the exception's first line): one bad item never stops the run. Only a
backend that returns another number of answers than it got windows stops it (a broken contract).
Every successful answer is cached on disk by
(model, generation parameters, sha256 of the window's samples, question) when a cache folder is
given, so a rerun after a crash (or a judge outage) generates only what is missing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

log = logging.getLogger("cpqa.speech_llm")

DEFAULT_MODEL = "Qwen/Qwen2-Audio-7B-Instruct"
WINDOW_SECONDS = 30.0

FULL = "full"


# --- audio -------------------------------------------------------------------------------------


def load_waveform(audio, sampling_rate: int, source_rate: int | None = None) -> np.ndarray:
    """Mono float32 samples at ``sampling_rate`` from any accepted audio item.

    Accepted: a file path; ``{"array", "sampling_rate"}`` (datasets' decoded Audio);
    ``{"bytes"}`` or ``{"path"}`` (datasets' undecoded Audio); a torchcodec ``AudioDecoder``
    (what datasets >= 4 returns); an ``(array, rate)`` pair; or a bare array with ``source_rate``.
    """
    array, rate = _decode(audio, source_rate)
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 2:  # (channels, samples) from decoders, (samples, channels) from soundfile
        array = array.mean(axis=0 if array.shape[0] <= array.shape[1] else 1)
    if array.ndim != 1:
        raise ValueError(f"audio must be mono or (channels, samples); got shape {array.shape}")
    return resample(array, int(rate), sampling_rate)


def _decode(audio, source_rate: int | None):
    if isinstance(audio, (str, os.PathLike)):
        return _read_file(os.fspath(audio))
    if hasattr(audio, "get_all_samples"):  # torchcodec AudioDecoder, as datasets 4/5 return
        samples = audio.get_all_samples()
        return samples.data.cpu().numpy(), samples.sample_rate
    if isinstance(audio, dict):
        if audio.get("array") is not None:
            return audio["array"], audio["sampling_rate"]
        if audio.get("bytes"):
            return _read_file(io.BytesIO(audio["bytes"]))
        if audio.get("path"):
            return _read_file(audio["path"])
        raise ValueError(f"audio dict without 'array', 'bytes' or 'path' (keys: {sorted(audio)})")
    if not is_bare_array(audio):  # an (array, rate) pair, the one form left
        return audio
    if source_rate is None:
        raise ValueError("a bare audio array needs its rate: pass sampling_rate=... or (array, rate) pairs")
    return _as_numpy(audio), source_rate


def is_bare_array(audio) -> bool:
    """``audio`` is samples without their rate (what ``load_waveform`` can read only with ``source_rate``):
    not a path, a decoder, a dict or an ``(array, rate)`` pair."""
    if isinstance(audio, (str, os.PathLike, dict)) or hasattr(audio, "get_all_samples"):
        return False
    return not (isinstance(audio, tuple) and len(audio) == 2)


def _as_numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)


def _read_file(source):
    """soundfile first (no FFmpeg needed); torchcodec for what libsndfile cannot read."""
    import soundfile as sf

    try:
        array, rate = sf.read(source, dtype="float32", always_2d=False)
        return array, rate
    except Exception as sf_error:
        if isinstance(source, io.BytesIO):
            source.seek(0)
            source = source.read()
        try:
            from torchcodec.decoders import AudioDecoder

            samples = AudioDecoder(source).get_all_samples()
        except Exception as exc:
            name = source if isinstance(source, str) else "audio bytes"
            raise ValueError(f"{name}: cannot decode ({sf_error}; {exc})") from exc
        return samples.data.numpy(), samples.sample_rate


def resample(array: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    if source_rate == target_rate:
        return array.astype(np.float32, copy=False)
    from scipy.signal import resample_poly

    common = gcd(source_rate, target_rate)
    return resample_poly(array, target_rate // common, source_rate // common).astype(np.float32)


def audio_windows(
    waveform: np.ndarray, sampling_rate: int, window_seconds: float | None = WINDOW_SECONDS
) -> list[tuple[str, np.ndarray]]:
    """``[("full", all)]`` up to ``window_seconds`` (or always, when it is None: the whole clip);
    else ``[("first_<N>s", head), ("last_<N>s", tail)]``, N the window's length (``first_30s``)."""
    if window_seconds is None:
        return [(FULL, waveform)]
    size = int(round(window_seconds * sampling_rate))
    if len(waveform) <= size:
        return [(FULL, waveform)]
    first, last = window_names(window_seconds)
    return [(first, waveform[:size]), (last, waveform[-size:])]


def window_names(window_seconds: float) -> tuple[str, str]:
    """The names of the head and tail windows of ``window_seconds``: ``("first_30s", "last_30s")``,
    ``("first_2.5s", "last_2.5s")``."""
    length = f"{window_seconds:g}s"
    return f"first_{length}", f"last_{length}"


def wav_base64(samples: np.ndarray, sampling_rate: int) -> str:
    """A 16-bit PCM mono WAV file of ``samples``, base64-encoded, as OpenAI's ``input_audio`` carries it."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.clip(samples, -1.0, 1.0), sampling_rate, format="WAV", subtype="PCM_16")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def audio_sha256(samples: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(samples, dtype=np.float32).tobytes()).hexdigest()


# --- backends ------------------------------------------------------------------------------------
#
# A backend answers one batch: ``backend(questions, waveforms, sampling_rate) -> answers``, where an
# answer is the text, or an ``Exception`` instance for one that failed (the other answers stand).
# ``name`` and ``params`` (generation settings) make the answer cache's key with the audio and question.


@dataclass
class Answer:
    """One generated answer: the window it saw, the text (None on failure), the error, and whether it
    came from the answer cache."""

    window: str
    text: str | None
    error: str | None = None
    cached: bool = False


_LOADED: dict[tuple, tuple] = {}


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_speech_llm(model: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None):
    """``(model, processor)`` for a Qwen2-Audio checkpoint, loaded once per process and kept.

    bfloat16 on CUDA, float32 elsewhere, with PyTorch's SDPA attention. Missing weights (offline, or a
    wrong id) raise one ``ValueError`` naming the model and the fix, before any audio is decoded.
    """
    device = device or default_device()
    dtype = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    key = (model, device, dtype)
    if key not in _LOADED:
        import torch
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        try:
            processor = AutoProcessor.from_pretrained(model)
            network = Qwen2AudioForConditionalGeneration.from_pretrained(
                model, dtype=getattr(torch, dtype), attn_implementation="sdpa"
            )
        except OSError as error:
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"speech-LLM {model!r}: weights not found ({reason}); download them first "
                f"(`huggingface-cli download {model}` while online), pass --model a local folder, "
                "or use --backend openai (a served model) or --backend predictions"
            ) from error
        processor.tokenizer.padding_side = "left"  # batched generation continues from the right edge
        network.to(device).eval()
        _LOADED[key] = (network, processor)
    return _LOADED[key]


def qwen2_audio_answer(
    network, processor, questions: Sequence[str], waveforms: Sequence[np.ndarray], max_new_tokens: int = 256
) -> list[str]:
    """Greedy answers for one batch of (question, <= 30 s waveform) pairs."""
    import torch

    texts = [processor.apply_chat_template(_conversation(q), add_generation_prompt=True, tokenize=False) for q in questions]
    # transformers 5 reads `audio=`; the older `audios=` keyword is silently ignored
    inputs = processor(
        text=texts,
        audio=list(waveforms),
        sampling_rate=processor.feature_extractor.sampling_rate,
        return_tensors="pt",
        padding=True,
    ).to(network.device)
    inputs["input_features"] = inputs["input_features"].to(network.dtype)
    with torch.inference_mode():
        output = network.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def _conversation(question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]}]


class TransformersBackend:
    """A Qwen2-Audio checkpoint (hub id or local folder) run in-process through transformers."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str | None = None, dtype: str | None = None,
                 batch_size: int = 4, max_new_tokens: int = 256):
        self.name = model
        self.batch_size = batch_size
        self.params = {"max_new_tokens": max_new_tokens, "do_sample": False}
        self.network, self.processor = load_speech_llm(model, device, dtype)
        self.sampling_rate = self.processor.feature_extractor.sampling_rate

    def __call__(self, questions, waveforms, _rate):
        return qwen2_audio_answer(self.network, self.processor, questions, waveforms, self.params["max_new_tokens"])


class OpenAiBackend:
    """Any OpenAI-compatible chat endpoint that takes audio (vLLM serving Qwen2-Audio or Qwen2.5-Omni,
    Ultravox, hosted audio models): each window goes as a base64 16 kHz PCM16 WAV ``input_audio`` part
    before the question, requests run concurrently with the LLM client's retries and backoff."""

    sampling_rate = 16_000

    def __init__(self, model: str, base_url: str, api_key_env: str | None = None, max_tokens: int = 256,
                 concurrency: int = 8, max_retries: int = 3, timeout_s: float = 120.0):
        from .llm_client import LlmClient

        self.name = model
        self.batch_size = 4 * max(1, concurrency)  # enough requests in hand to keep every slot busy
        self.params = {"temperature": 0.0, "max_tokens": max_tokens}
        # no client cache: answers are cached one level up, by audio hash, for every backend alike
        self.client = LlmClient(base_url, model, api_key_env=api_key_env, cache_dir=None, concurrency=concurrency,
                                max_retries=max_retries, timeout_s=timeout_s)

    def __call__(self, questions, waveforms, rate):
        requests = [{"messages": audio_messages(q, w, rate), **self.params} for q, w in zip(questions, waveforms)]
        return [r.text if r.error is None else RuntimeError(r.error) for r in self.client.complete_many(requests)]


def audio_messages(question: str, samples: np.ndarray, sampling_rate: int) -> list[dict]:
    """One user turn: the audio window as ``input_audio`` (WAV), then the question as text."""
    audio = {"type": "input_audio", "input_audio": {"data": wav_base64(samples, sampling_rate), "format": "wav"}}
    return [{"role": "user", "content": [audio, {"type": "text", "text": question}]}]


class CallableBackend:
    """A plain ``model(questions, waveforms, sampling_rate) -> answers`` (at its ``sampling_rate``
    attribute, else 16 kHz); named after the function, so its answers cache under that name."""

    def __init__(self, respond: Callable, batch_size: int = 4):
        self.respond = respond
        self.name = getattr(respond, "name", None) or getattr(respond, "__name__", type(respond).__name__)
        self.batch_size = int(getattr(respond, "batch_size", batch_size))
        self.params = dict(getattr(respond, "params", {}))
        self.sampling_rate = int(getattr(respond, "sampling_rate", 16_000))

    def __call__(self, questions, waveforms, rate):
        return self.respond(questions, waveforms, rate)


def make_backend(model, **settings):
    """A backend object from a checkpoint id/folder (transformers), a dict ``{"model", "base_url",
    "api_key_env"?, "max_tokens"?, "concurrency"?}`` (an OpenAI-compatible endpoint), a backend, or a callable."""
    if isinstance(model, (TransformersBackend, OpenAiBackend, CallableBackend)):
        return model
    if isinstance(model, dict):
        return OpenAiBackend(**model)
    if callable(model):
        return CallableBackend(model, settings.get("batch_size", 4))
    return TransformersBackend(model, settings.get("device"), settings.get("dtype"),
                               settings.get("batch_size", 4), settings.get("max_new_tokens", 256))


# --- answering, with the answer cache ---------------------------------------------------------------

READ_AHEAD_WINDOWS = 64  # windows decoded ahead and sorted by length (64 x 30 s x 16 kHz float32 = 123 MB)


class AnswerCache:
    """Answers on disk, one JSON file per (model, generation parameters, window audio hash, question).

    Only successful answers are stored, written then renamed, so a run killed at any point leaves
    whole entries; the next run answers only what is missing. No cache when ``directory`` is None.
    """

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory) if directory else None

    @staticmethod
    def key(model: str, params: dict, audio_hash: str, question: str) -> str:
        payload = json.dumps({"model": model, "params": params, "audio": audio_hash, "question": question}, sort_keys=True)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        """The stored answer, or None: no entry, or a damaged one (a warning names it; answered again)."""
        if self.directory is None:
            return None
        path = self._path(key)
        try:
            entry = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            log.warning("ignoring unreadable answer cache entry %s (%s); answering again", path, error)
            return None
        if not isinstance(entry, dict) or not isinstance(entry.get("text"), str):
            log.warning("ignoring damaged answer cache entry %s (no answer text); answering again", path)
            return None
        return entry["text"]

    def put(self, key: str, text: str) -> None:
        if self.directory is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as tmp:
            json.dump({"text": text}, tmp, ensure_ascii=False)
        os.replace(tmp.name, path)


def _first_line(error: BaseException) -> str:
    """``RuntimeError: the first line of its message`` (at most 300 characters of it)."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__


def _answer_or_fail(backend, batch: list[tuple], rate: int) -> list:
    """One answer per window of ``batch`` (``(item, slot, window, question, samples, key)``), an
    exception instance where it failed. A call that raises is repeated window by window, so that only
    the windows it raises on fail (with the exception's first line); a call that returns another
    number of answers than it was given windows breaks the backend contract and stops the run."""
    try:
        texts = list(backend([p[3] for p in batch], [p[4] for p in batch], rate))
    except Exception as error:  # noqa: BLE001 - recorded on the item, like a failed judgement
        if len(batch) > 1:
            return [text for one in batch for text in _answer_or_fail(backend, [one], rate)]
        log.warning("the speech-LLM failed on a window of %r: %s", batch[0][3], _first_line(error))
        return [error]
    if len(texts) != len(batch):
        raise RuntimeError(f"the speech-LLM returned {len(texts)} answers for {len(batch)} inputs")
    return texts


def answer_questions(
    questions: Sequence[str],
    audio: Sequence,
    model=DEFAULT_MODEL,
    batch_size: int = 4,
    max_new_tokens: int = 256,
    device: str | None = None,
    dtype: str | None = None,
    window_seconds: float | None = WINDOW_SECONDS,
    source_rate: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    silence: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[list[Answer]]:
    """Answer each question on its audio, one answer per window; failures stay on their item.

    ``model``: a Qwen2-Audio checkpoint, a backend (``OpenAiBackend``, ...) or a callable. Windows are
    answered in batches of similar length (fewer padded frames) from a bounded read-ahead, so audio is
    decoded lazily. ``silence=True`` replaces every clip by zeros of the same length (the control that
    shows whether the answers needed the voice). ``progress(n)`` is told of every n windows answered.
    """
    backend = make_backend(model, batch_size=batch_size, max_new_tokens=max_new_tokens, device=device, dtype=dtype)
    run = _Answering(backend, AnswerCache(cache_dir), [[] for _ in questions], progress)
    read_ahead = max(READ_AHEAD_WINDOWS, backend.batch_size)
    for item, (question, clip) in enumerate(zip(questions, audio)):
        try:
            waveform = load_waveform(clip, backend.sampling_rate, source_rate)
        except Exception as exc:
            run.answers[item].append(Answer(FULL, None, f"audio: {type(exc).__name__}: {exc}"))
            continue
        if silence:
            waveform = np.zeros_like(waveform)
        for window, samples in audio_windows(waveform, backend.sampling_rate, window_seconds):
            run.add(item, window, question, samples)
        if len(run.pending) >= read_ahead:
            run.flush()
    run.flush()
    return run.answers


class _Answering:
    """The answers of one ``answer_questions`` call: windows from the cache at once, the others pending
    until a batch of similar lengths is answered (a failure stays on its window)."""

    def __init__(self, backend, cache: AnswerCache, answers: list[list], progress: Callable[[int], None] | None):
        self.backend, self.cache, self.answers, self.progress = backend, cache, answers, progress
        self.pending: list[tuple[int, int, str, str, np.ndarray, str]] = []  # item, slot, window, question, samples, key

    def add(self, item: int, window: str, question: str, samples: np.ndarray) -> None:
        key = AnswerCache.key(self.backend.name, self.backend.params, audio_sha256(samples), question)
        cached = self.cache.get(key)
        self.answers[item].append(Answer(window, cached, cached=True) if cached is not None else None)
        if cached is None:
            self.pending.append((item, len(self.answers[item]) - 1, window, question, samples, key))
        elif self.progress is not None:
            self.progress(1)

    def flush(self) -> None:
        self.pending.sort(key=lambda p: len(p[4]))
        size = self.backend.batch_size
        for start in range(0, len(self.pending), size):
            self._answer(self.pending[start : start + size])
        self.pending.clear()

    def _answer(self, batch) -> None:
        texts = _answer_or_fail(self.backend, batch, self.backend.sampling_rate)
        for (item, slot, window, _, _, key), text in zip(batch, texts):
            if isinstance(text, BaseException):
                self.answers[item][slot] = Answer(window, None, _first_line(text))
            else:
                self.cache.put(key, text)
                self.answers[item][slot] = Answer(window, text)
        if self.progress is not None:
            self.progress(len(batch))
