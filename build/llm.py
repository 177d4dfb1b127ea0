"""A thin client for OpenAI-compatible chat endpoints (OpenAI, Azure OpenAI, vLLM, llama.cpp servers).

    client = LlmClient(base_url, model, api_key_env="OPENAI_API_KEY", cache_dir="work/llm-cache")
    results = client.complete_many([{"messages": [...], "temperature": 0.7, "max_tokens": 800}])

A request is a dict with ``messages``, ``temperature``, ``max_tokens`` and optionally
``response_format`` (OpenAI's ``{"type": "json_schema", "json_schema": {...}}``), ``seed``, ``top_p``,
``stop``, and ``fallback_to_text`` (True: a server that rejects ``response_format`` is asked again
without it). Each result carries the reply text, or an error message; ``complete_many`` never raises.

- Caching: every reply is stored as one JSON file named by the sha256 of (model, messages, parameters).
  The endpoint URL and the API key are not part of the key, so moving to another server that serves
  the same model reuses the replies, and a rerun never pays twice.
- Secrets: the key is read from the environment variable named by ``api_key_env`` and is never
  written to the cache, to logs or into results (error messages are scrubbed of it).
- Structured output: llama-cpp-python's server only knows ``{"type": "json_object", "schema": ...}``
  and rejects OpenAI's ``json_schema`` type with a message naming ``json_object``; the client then
  switches to that dialect, and remembers it. A server that rejects both is remembered as well.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
import threading
import time
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


@dataclass(frozen=True)
class LlmResult:
    text: str | None
    error: str | None = None
    cached: bool = False
    sent_format: str | None = None  # response_format type the reply was made under; None for plain text


class FormatRejected(Exception):
    """The server refused the request's response_format."""


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
        api_key_env: str = "OPENAI_API_KEY",
        cache_dir: str | Path | None = None,
        concurrency: int = 8,
        max_retries: int = 3,
        timeout_s: float = 120.0,
        backoff_s: float = 1.0,
    ):
        self.base_url = base_url
        self.model = model
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff_s = backoff_s
        self._api_key = os.environ.get(api_key_env) or KEY_PLACEHOLDER
        # Retries are ours (bounded, logged without secrets), so the SDK's own are switched off.
        self._sdk = openai.OpenAI(base_url=base_url, api_key=self._api_key, timeout=timeout_s, max_retries=0)
        self._schema_style = "json_schema"
        self._format_rejection: str | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"LlmClient(base_url={self.base_url!r}, model={self.model!r}, cache_dir={str(self.cache_dir)!r})"

    # ---------------------------------------------------------------- public
    def complete_many(self, requests: list[dict]) -> list[LlmResult]:
        """One result per request, in order; identical requests are sent once."""
        keys = [cache_key(self.model, r) for r in requests]
        results: dict[str, LlmResult] = {}
        pending: dict[str, dict] = {}
        for key, request in zip(keys, requests):
            if key in results or key in pending:
                continue
            hit = self._read_cache(key)
            if hit is not None:
                results[key] = hit
            else:
                pending[key] = request
        if pending:
            with ThreadPoolExecutor(max_workers=min(self.concurrency, len(pending))) as pool:
                fresh = pool.map(self._complete_and_store, pending.keys(), pending.values())
                results.update(zip(pending.keys(), fresh))
        return [results[key] for key in keys]

    def complete(self, request: dict) -> LlmResult:
        return self.complete_many([request])[0]

    # ---------------------------------------------------------------- one request
    def _complete_and_store(self, key: str, request: dict) -> LlmResult:
        try:
            result = self._complete_negotiating_format(request)
        except Exception as error:  # noqa: BLE001 - a failed request becomes a result, never an exception
            result = LlmResult(text=None, error=self._scrub(_describe(error)))
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
                return LlmResult(text=None, error=f"server rejects structured output: {self._format_rejection}")
            sent = response_format if style == "json_schema" else as_json_object_format(response_format)
            try:
                return self._send(request, sent)
            except FormatRejected as rejection:
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
        """One chat completion with bounded retries; raises FormatRejected, returns errors as results."""
        parameters = generation_parameters(request)
        parameters.pop("response_format", None)
        if response_format:
            parameters["response_format"] = response_format
        for attempt in range(self.max_retries + 1):
            try:
                completion = self._sdk.chat.completions.create(model=self.model, messages=request["messages"], **parameters)
                return _result_from(completion, response_format)
            except openai.APIStatusError as error:
                message = self._scrub(_describe(error))
                if response_format and _rejects_response_format(error.status_code, message):
                    raise FormatRejected(message) from error
                if error.status_code not in RETRIABLE_STATUS or attempt == self.max_retries:
                    return LlmResult(text=None, error=message)
                delay = self._delay(attempt, error.response.headers.get("retry-after"))
            except openai.APIConnectionError as error:  # includes timeouts
                message = self._scrub(_describe(error))
                if attempt == self.max_retries:
                    return LlmResult(text=None, error=message)
                delay = self._delay(attempt, None)
            log.warning("retry %d/%d in %.1f s after %s", attempt + 1, self.max_retries, delay, message)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        try:
            if retry_after is not None:
                return min(float(retry_after), 60.0)
        except ValueError:
            pass
        return self.backoff_s * (2**attempt) * (1 + random.random() / 2)

    def _scrub(self, message: str) -> str:
        if self._api_key != KEY_PLACEHOLDER and len(self._api_key) >= 4:
            message = message.replace(self._api_key, "***")
        return message

    # ---------------------------------------------------------------- cache
    def _cache_path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def _read_cache(self, key: str) -> LlmResult | None:
        if self.cache_dir is None:
            return None
        path = self._cache_path(key)
        try:
            entry = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, json.JSONDecodeError) as error:
            log.warning("ignoring unreadable cache entry %s: %s", path, error)
            return None
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


def _result_from(completion, response_format: dict | None) -> LlmResult:
    if not completion.choices:
        return LlmResult(text=None, error="reply without choices")
    text = completion.choices[0].message.content
    if text is None:
        return LlmResult(text=None, error=f"reply without content (finish_reason={completion.choices[0].finish_reason})")
    return LlmResult(text=text, sent_format=response_format["type"] if response_format else None)


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
