"""What every LLM-writing stage shares: prompt files, chat requests with structured output, the client.

- ``load_sections(version, required)``: the ``### name`` blocks of ``build/prompts/<version>.txt`` as
  ``string.Template`` objects (lines before the first block are comments).
- ``chat_request(messages, ...)``: one request for ``LlmClient.complete_many``; with
  ``structured_output`` ``"json_schema"`` it carries OpenAI's ``response_format``, with ``"auto"`` it
  also asks the client to retry as plain text on a server that refuses the schema, with ``"text"``
  it carries no schema.
- ``llm_client(...)``: one cached ``LlmClient`` per process and endpoint (map functions get names and
  numbers, never client objects).
- ``FENCE`` / ``LENIENT_JSON``: how replies are searched for JSON (fenced blocks; raw newlines and tabs
  inside strings allowed, which small models write).
- ``QUESTION_MARKS`` / ``ends_with_question_mark(text)``: the question marks of every script that has
  one, for the reply parser and the post-filter (a reply in Chinese ends its questions with ？, in
  Arabic with ؟, in Greek with ; ...).
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from string import Template

from ..core import devices
from .llm import LlmClient

PROMPT_DIR = Path(__file__).resolve().parents[1] / "prompts"
STRUCTURED_MODES = ("auto", "json_schema", "text")
FRAGMENT_WORDS = 8  # a pair holding this many consecutive words of a prompt's fixed text repeats the prompt
FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)
LENIENT_JSON = json.JSONDecoder(strict=False)
# Question marks by script: Latin ?, fullwidth ？ (Chinese, Japanese, Korean), small and vertical forms,
# Arabic ؟ (also Persian, Urdu), Greek ; (U+037E; NFC turns it into the semicolon, see below), Armenian ՞
# (written over the questioned word, so it counts anywhere), Ethiopic ፧, Limbu, Vai, Bamum, Chakma,
# Coptic Old Nubian, reversed ⸮, medieval, and the doubled forms ⁇ ⁈ ⁉ and ornaments ❓ ❔.
QUESTION_MARKS = (
    "?\uff1f\ufe56\ufe16\u061f\u037e\u055e\u1367\u1945\ua60f\ua6f7\U00011143\u2cfa\u2cfb"
    "\u2e2e\u2e54\u2047\u2048\u2049\u2753\u2754"
)
ARMENIAN_QUESTION_MARK = "\u055e"
# what may follow a question's mark: closing quotes and brackets of any script, markdown emphasis
CLOSERS = "\"'\u201d\u2019\u00bb\u203a)]}\u300d\u300f\uff09\u3011\u3015\u300b\u3009*_ \t\n"
_GREEK = re.compile(r"[\u0370-\u03ff\u1f00-\u1fff]")


@functools.lru_cache(maxsize=None)
def load_sections(version: str, required: tuple[str, ...]) -> dict[str, Template]:
    """The ``### section`` blocks of ``prompts/<version>.txt`` as templates; a missing required one is an error."""
    path = PROMPT_DIR / f"{version}.txt"
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text().splitlines():
        if line.startswith("### "):
            current = sections.setdefault(line[4:].strip(), [])
        elif current is not None:
            current.append(line)
    missing = set(required) - sections.keys()
    if missing:
        raise ValueError(f"{path}: prompt {version} lacks the sections {sorted(missing)}")
    return {name: Template("\n".join(lines).strip()) for name, lines in sections.items()}


def check_structured_mode(structured_output: str) -> None:
    if structured_output not in STRUCTURED_MODES:
        raise ValueError(f"structured_output must be one of {STRUCTURED_MODES}, got {structured_output!r}")


def json_schema_format(name: str, schema: dict) -> dict:
    """OpenAI's strict ``response_format`` for ``schema`` (the client translates it for llama.cpp)."""
    return {"type": "json_schema", "json_schema": {"name": name, "strict": True, "schema": schema}}


def chat_request(messages: list[dict], *, temperature: float, max_tokens: int, structured_output: str, schema_name: str, schema: dict) -> dict:
    request = {"messages": messages, "temperature": temperature, "max_tokens": max_tokens}
    if structured_output != "text":
        request["response_format"] = json_schema_format(schema_name, schema)
        request["fallback_to_text"] = structured_output == "auto"
    return request


def llm_client(base_url: str, model: str, api_key_env: str, cache_dir: str | None, concurrency: int, max_retries: int, timeout_s: float) -> LlmClient:
    """The process's client for this endpoint and cache (built on first use)."""
    if not base_url:
        raise ValueError("LLM generation needs a base_url: start build.models.llm_server.embedded_server() or configure qa.base_url")
    return devices.cached(
        ("llm-client", base_url, model, api_key_env, cache_dir, concurrency, max_retries, timeout_s),
        lambda: LlmClient(base_url, model, api_key_env, cache_dir, concurrency, max_retries, timeout_s),
    )


def client_for(qa, base_url: str, cache_dir: str | None) -> LlmClient:
    """The process's client for the QA section's endpoint settings (``qa.model``: the served model)."""
    return llm_client(base_url, qa.model, qa.api_key_env, cache_dir, qa.concurrency, qa.max_retries, qa.timeout_s)


def speaker_runs(words: list[dict], default: str | None = None) -> list[tuple[str | None, list[dict]]]:
    """Consecutive words of one speaker (``word["speaker"]``, else ``default``) as ``(speaker, words)``."""
    runs: list[tuple[str | None, list[dict]]] = []
    for word in words:
        speaker = word.get("speaker") or default
        if runs and runs[-1][0] == speaker:
            runs[-1][1].append(word)
        else:
            runs.append((speaker, [word]))
    return runs


def ends_with_question_mark(text: str) -> bool:
    """True when ``text`` ends, before closing quotes, brackets and emphasis, with a question mark of any
    script; in Greek text the semicolon (what the Greek question mark U+037E becomes under NFC) counts."""
    end = text.rstrip(CLOSERS)
    if not end:
        return False
    return end[-1] in QUESTION_MARKS or end[-1] == ";" and _GREEK.search(end) is not None
