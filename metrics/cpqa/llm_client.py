"""The one client for OpenAI-compatible chat endpoints (OpenAI, Azure OpenAI, vLLM, llama.cpp servers).

It writes the build's QA pairs and the metric's judgements, so it lives with the metric: `evaluate`
ships a metric folder on its own, and the build imports it from here (``build.llm`` re-exports it).

    client = LlmClient(base_url, model, api_key_env="OPENAI_API_KEY", cache_dir="work/llm-cache")
    results = client.complete_many([{"messages": [...], "temperature": 0.7, "max_tokens": 800}])
    client.calls.snapshot()   # {"requests": 40, "cached": 30, "sent": 10, "attempts": 14, ...}

A request is a dict with ``messages``, ``temperature``, ``max_tokens`` and optionally
``response_format`` (OpenAI's ``{"type": "json_schema", "json_schema": {...}}``), ``seed``, ``top_p``,
``stop``, and ``fallback_to_text`` (True: a server that rejects ``response_format`` is asked again
without it). Each result carries the reply text or an error; ``complete_many`` never raises.

Faults. A request is tried again, after an exponential backoff with jitter (or exactly the server's
``Retry-After``/``retry-after-ms``, capped at ``max_backoff_s``), on HTTP 408, 409, 429 and 5xx,
timeouts, connection errors, a body that is not JSON, and a reply without text; at most
``max_retries`` times. A reply cut off by the token limit (``finish_reason="length"``) is asked once
more with twice the ``max_tokens``, at once; cut off again, it is a failure. Other HTTP errors (400,
401, 404, ...) fail at once: asking again would not help.

Caching. Only successful replies are stored, one JSON file per request named by the sha256 of (model,
messages, parameters), so a rerun sends exactly the requests that failed and never a request that
succeeded. The endpoint URL and the key are not part of the key: another server with the same model
reuses the replies. An entry records the response_format type its reply was made under
(``sent_format``); a plain-text reply to a request that asked for a format, made because
``fallback_to_text`` allowed it, serves only requests that allow it too. A damaged entry (not UTF-8,
not JSON, not an object with non-blank ``text``) is a miss, with a warning naming its file: the
request is sent again and the entry rewritten.

Counting. ``client.calls`` counts what happened (requests asked, served from cache, sent, HTTP
attempts, retried, failed) with the reasons for retries and failures; ``summary_line`` prints it.

Secrets. The key is read from the environment variable named by ``api_key_env`` and is never written
to the cache, to logs or into results (error messages are scrubbed of it).

Structured output. llama-cpp-python's server only knows ``{"type": "json_object", "schema": ...}``
and rejects OpenAI's ``json_schema`` type with a message naming ``json_object``; the client then
switches to that dialect, and remembers it. A server that rejects both is remembered as well.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai

log = logging.getLogger("cpqa.llm")

KEY_PLACEHOLDER = "not-needed"  # what local servers get when the key variable is unset
CACHE_FORMAT = 1
# Parameters forwarded to the server; together with the model and messages they make the cache key.
GENERATION_PARAMETERS = ("temperature", "max_tokens", "response_format", "seed", "top_p", "stop")
RETRIABLE_STATUS = frozenset({408, 409, 429}) | frozenset(range(500, 600))
# How the JSON schema is sent: OpenAI's json_schema type, llama-cpp-python's json_object + schema, or not at all.
SCHEMA_STYLES = ("json_schema", "json_object", "none")
DEFAULT_BACKOFF_S = 1.0  # first backoff; doubles with each retry (tests shorten it)
LENGTH_RETRY_FACTOR = 2  # max_tokens multiplier for the one retry of a reply cut off by the token limit

# Reasons a request was tried again or failed, as counted in ``calls`` (HTTP errors read "HTTP <status>").
TIMEOUT = "timeout"
CONNECTION = "connection error"
NOT_JSON = "body not JSON"
EMPTY = "empty reply"
CUT_OFF = "cut off (finish_reason=length)"
FORMAT_REJECTED = "response_format rejected"


@dataclass(frozen=True)
class LlmResult:
    text: str | None
    error: str | None = None
    cached: bool = False
    sent_format: str | None = None  # response_format type the reply was made under; None for plain text


class FormatRejected(Exception):
    """The server refused the request's response_format."""


class _Transient(Exception):
    """A fault worth another attempt; ``reason`` is what ``calls`` counts it as."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class CallStats:
    """Thread-safe counts of one client's calls (a client lives for a run; take deltas for a part)."""

    FIELDS = ("requests", "cached", "sent", "attempts", "retried", "failed")

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = Counter()
        self._retry_reasons = Counter()
        self._failure_reasons = Counter()

    def add(self, **counts: int) -> None:
        with self._lock:
            self._counts.update(counts)

    def retry(self, reason: str) -> None:
        with self._lock:
            self._retry_reasons[reason] += 1

    def fail(self, reason: str) -> None:
        with self._lock:
            self._counts["failed"] += 1
            self._failure_reasons[reason] += 1

    def snapshot(self) -> dict:
        """``{"requests", "cached", "sent", "attempts", "retried", "failed", "retry_reasons", "failure_reasons"}``."""
        with self._lock:
            out = {name: self._counts[name] for name in self.FIELDS}
            out["retry_reasons"] = dict(sorted(self._retry_reasons.items()))
            out["failure_reasons"] = dict(sorted(self._failure_reasons.items()))
        return out


def stats_delta(after: dict, before: dict) -> dict:
    """What happened between two ``CallStats.snapshot()`` values."""
    out = {name: after[name] - before.get(name, 0) for name in CallStats.FIELDS}
    for field in ("retry_reasons", "failure_reasons"):
        reasons = {r: n - before.get(field, {}).get(r, 0) for r, n in after[field].items()}
        out[field] = {r: n for r, n in reasons.items() if n}
    return out


def summary_line(stats: dict) -> str:
    """``12 requests: 8 from cache, 4 sent in 7 attempts; 2 retried (HTTP 429 ×2, body not JSON ×1); 0 failed``."""

    def reasons(counts: dict) -> str:
        return " (" + ", ".join(f"{r} ×{n}" for r, n in counts.items()) + ")" if counts else ""

    return (
        f"{stats['requests']} requests: {stats['cached']} from cache, {stats['sent']} sent in {stats['attempts']} attempts; "
        f"{stats['retried']} retried{reasons(stats['retry_reasons'])}; {stats['failed']} failed{reasons(stats['failure_reasons'])}"
    )


def cache_key(model: str, request: dict) -> str:
    payload = {"model": model, "messages": request["messages"], "parameters": generation_parameters(request)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def generation_parameters(request: dict) -> dict:
    return {name: request[name] for name in GENERATION_PARAMETERS if request.get(name) is not None}


def as_json_object_format(response_format: dict) -> dict:
    """OpenAI's ``json_schema`` response_format in llama-cpp-python's dialect."""
    schema = response_format.get("json_schema", {}).get("schema")
    return {"type": "json_object", "schema": schema} if schema is not None else {"type": "json_object"}


class LlmClient:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str | None = "OPENAI_API_KEY",
        cache_dir: str | Path | None = None,
        concurrency: int = 8,
        max_retries: int = 5,
        timeout_s: float = 120.0,
        backoff_s: float | None = None,
        max_backoff_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base_url = base_url
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = DEFAULT_BACKOFF_S if backoff_s is None else backoff_s
        self.max_backoff_s = max_backoff_s
        self.calls = CallStats()
        self._sleep = sleep
        self._api_key = (os.environ.get(api_key_env) if api_key_env else None) or KEY_PLACEHOLDER
        # Retries are ours (bounded, counted, logged without secrets), so the SDK's own are switched off.
        self._sdk = openai.OpenAI(base_url=base_url, api_key=self._api_key, timeout=timeout_s, max_retries=0)
        self._schema_style = "json_schema"
        self._format_rejection: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"LlmClient(base_url={self.base_url!r}, model={self.model!r}, cache_dir={str(self.cache_dir)!r})"

    # ---------------------------------------------------------------- public
    def complete_many(self, requests: list[dict]) -> list[LlmResult]:
        """One result per request, in order; identical requests are sent once (a request that may fall
        back to plain text and one that may not are different requests, under one cache key)."""
        slots = [(cache_key(self.model, r), bool(r.get("fallback_to_text"))) for r in requests]
        results: dict[tuple[str, bool], LlmResult] = {}
        pending: dict[tuple[str, bool], dict] = {}
        for slot, request in zip(slots, requests):
            if slot in results or slot in pending:
                continue
            hit = self._read_cache(slot[0], request)
            if hit is not None:
                results[slot] = hit
            else:
                pending[slot] = request
        self.calls.add(requests=len(results) + len(pending), cached=len(results), sent=len(pending))
        if pending:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(pending))) as pool:
                fresh = pool.map(self._complete_and_store, [key for key, _ in pending], pending.values())
                results.update(zip(pending.keys(), fresh))
        return [results[slot] for slot in slots]

    def complete(self, request: dict) -> LlmResult:
        return self.complete_many([request])[0]

    # ---------------------------------------------------------------- one request
    def _complete_and_store(self, key: str, request: dict) -> LlmResult:
        try:
            result = self._complete_negotiating_format(request)
        except Exception as error:  # noqa: BLE001 - a failed request becomes a result, never an exception
            result = LlmResult(text=None, error=self._scrub(_describe(error)))
            self.calls.fail(type(error).__name__)
        if result.error is None:
            self._write_cache(key, request, result)
        return result

    def _complete_negotiating_format(self, request: dict) -> LlmResult:
        response_format = request.get("response_format")
        if not response_format or response_format.get("type") != "json_schema":
            return self._send(request, response_format)
        while True:
            style = self._schema_style
            if style == "none":
                if request.get("fallback_to_text"):
                    return self._send(request, None)
                self.calls.fail("structured output rejected")
                return LlmResult(text=None, error=f"server rejects structured output: {self._format_rejection}")
            sent = response_format if style == "json_schema" else as_json_object_format(response_format)
            try:
                return self._send(request, sent)
            except FormatRejected as rejection:  # asked again in the next dialect: counted as a retry
                self._count_retry(FORMAT_REJECTED, first=True)
                self._downgrade_schema_style(style, str(rejection))

    def _downgrade_schema_style(self, failed_style: str, message: str) -> None:
        with self._lock:
            if self._schema_style != failed_style:  # another thread already moved on
                return
            knows_json_object = "json_object" in message
            self._schema_style = "json_object" if failed_style == "json_schema" and knows_json_object else "none"
            self._format_rejection = message
            log.warning("%s rejected response_format %s; using %s from now on", self.base_url, failed_style, self._schema_style)

    def _send(self, request: dict, response_format: dict | None) -> LlmResult:
        """One chat completion with bounded retries; raises FormatRejected, returns failures as results."""
        parameters = generation_parameters(request)
        parameters.pop("response_format", None)
        if response_format:
            parameters["response_format"] = response_format
        retries = 0  # transient faults tried again
        widened = False  # the one retry of a reply cut off by the token limit is spent
        while True:
            self.calls.add(attempts=1)
            try:
                text, finish_reason = self._attempt(request["messages"], parameters, response_format)
            except openai.APIStatusError as error:  # not worth another attempt (400, 401, 404, ...)
                self.calls.fail(f"HTTP {error.status_code}")
                return LlmResult(text=None, error=self._scrub(_describe(error)))
            except _Transient as fault:
                message = self._scrub(str(fault))
                if retries == self.max_retries:
                    self.calls.fail(fault.reason)
                    attempts = f" (after {retries + 1 + widened} attempts)" if retries + widened else ""
                    return LlmResult(text=None, error=message + attempts)
                self._count_retry(fault.reason, first=not (retries or widened))
                delay = self._delay(retries, fault.retry_after)
                retries += 1
                log.warning("retry %d/%d in %.1f s after %s", retries, self.max_retries, delay, message)
                self._sleep(delay)
                continue
            if finish_reason != "length":
                return LlmResult(text=text, sent_format=response_format["type"] if response_format else None)
            limit = parameters.get("max_tokens")
            if widened or not limit:
                self.calls.fail(CUT_OFF)
                return LlmResult(text=None, error=f"reply cut off at max_tokens={limit} (finish_reason=length)")
            self._count_retry(CUT_OFF, first=not retries)
            widened = True
            parameters = {**parameters, "max_tokens": limit * LENGTH_RETRY_FACTOR}

    def _count_retry(self, reason: str, *, first: bool) -> None:
        self.calls.retry(reason)
        if first:
            self.calls.add(retried=1)

    def _attempt(self, messages: list[dict], parameters: dict, response_format: dict | None) -> tuple[str, str | None]:
        """(reply text, finish_reason) of one HTTP request; raises _Transient or FormatRejected."""
        try:
            completion = self._sdk.chat.completions.create(model=self.model, messages=messages, **parameters)
        except openai.APIStatusError as error:
            message = _describe(error)
            if response_format and _rejects_response_format(error.status_code, message):
                raise FormatRejected(self._scrub(message)) from error
            if error.status_code not in RETRIABLE_STATUS:
                raise
            raise _Transient(f"HTTP {error.status_code}", message, _retry_after(error.response.headers)) from error
        except openai.APITimeoutError as error:
            raise _Transient(TIMEOUT, _describe(error)) from error
        except openai.APIConnectionError as error:
            raise _Transient(CONNECTION, _describe(error)) from error
        except (json.JSONDecodeError, openai.APIResponseValidationError) as error:
            raise _Transient(NOT_JSON, f"the server's reply is not a JSON chat completion: {error}") from error
        choices = getattr(completion, "choices", None)
        if not choices:
            raise _Transient(EMPTY, "reply without choices")
        choice = choices[0]
        text = choice.message.content if choice.message is not None else None
        if choice.finish_reason == "length":
            return text or "", "length"
        if text is None or not text.strip():
            raise _Transient(EMPTY, f"reply without text (finish_reason={choice.finish_reason})")
        return text, choice.finish_reason

    def _delay(self, retries: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_backoff_s)
        base = self.backoff_s * (2**retries)
        return min(base * (0.5 + random.random() / 2), self.max_backoff_s)  # "equal jitter"

    def _scrub(self, message: str) -> str:
        if self._api_key != KEY_PLACEHOLDER and len(self._api_key) >= 4:
            message = message.replace(self._api_key, "***")
        return message

    # ---------------------------------------------------------------- cache
    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _read_cache(self, key: str, request: dict) -> LlmResult | None:
        """The stored reply, or None: no entry, a damaged one (warned about with its path; the request
        is sent again and the entry rewritten), or a plain-text fallback reply that ``request`` does
        not allow (it asks for its response_format without ``fallback_to_text``)."""
        if self.cache_dir is None:
            return None
        path = self._cache_path(key)
        try:
            entry = json.loads(path.read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            log.warning("ignoring unreadable cache entry %s (%s); asking again", path, error)
            return None
        problem = _entry_problem(entry)
        if problem:
            log.warning("ignoring damaged cache entry %s (%s); asking again", path, problem)
            return None
        if _text_fallback(entry, request) and not request.get("fallback_to_text"):
            return None  # made without the asked format because another request allowed it: not for this one
        return LlmResult(text=entry["text"], cached=True, sent_format=entry.get("sent_format"))

    def _write_cache(self, key: str, request: dict, result: LlmResult) -> None:
        if self.cache_dir is None:
            return
        entry = {
            "format": CACHE_FORMAT,
            "key": key,
            "model": self.model,
            "messages": request["messages"],
            "parameters": generation_parameters(request),
            "sent_format": result.sent_format,
            "text": result.text,
        }
        path = self._cache_path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{key[:8]}-", suffix=".tmp")
        try:
            with os.fdopen(descriptor, "w") as f:
                json.dump(entry, f, ensure_ascii=False, indent=1)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def _text_fallback(entry: dict, request: dict) -> bool:
    """The entry is a plain-text reply to a request that asked for a response_format."""
    return bool(request.get("response_format")) and entry.get("sent_format") is None


def _entry_problem(entry) -> str | None:
    """Why a parsed cache entry cannot be a stored reply (None when it can): a successful reply is
    non-blank text, made under a response_format type or none."""
    if not isinstance(entry, dict):
        return f"a JSON {type(entry).__name__}, not an object"
    if not isinstance(entry.get("text"), str) or not entry["text"].strip():
        return "no reply text" if entry.get("text") is None else "reply text not a non-blank string"
    if not isinstance(entry.get("sent_format"), (str, type(None))):
        return "sent_format not a string"
    return None


def _retry_after(headers) -> float | None:
    """Seconds the server asks us to wait: ``retry-after-ms``, ``Retry-After`` in seconds or as an HTTP date."""
    try:
        if headers.get("retry-after-ms") is not None:
            return float(headers["retry-after-ms"]) / 1000
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return float(value)
        except ValueError:
            when = email.utils.parsedate_to_datetime(value)
            return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _rejects_response_format(status: int, message: str) -> bool:
    # llama-cpp-python answers a response_format it cannot validate with HTTP 500, OpenAI and vLLM with 400/422.
    message = message.lower()
    return status in (400, 422, 500) and ("response_format" in message or "json_schema" in message)


def _describe(error: Exception) -> str:
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {_server_message(error)}"
    if isinstance(error, openai.APITimeoutError):
        return f"timeout: {error}"
    if isinstance(error, openai.APIConnectionError):
        return f"connection error: {error.__cause__ or error}"
    return f"{type(error).__name__}: {error}"


def _server_message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if "detail" in body:
            return json.dumps(body["detail"])
    return error.message
