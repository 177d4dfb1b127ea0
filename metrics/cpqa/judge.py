"""LLM judges for CPQA: two grading prompts, a pure render, a pure parse, and a thin cached client.

A judge is either an OpenAI-compatible endpoint (OpenAI, Azure OpenAI's v1 endpoint, vLLM, llama.cpp
server) described by a dict, or a Python callable that takes chat messages and returns the reply text.
API keys are read from the environment variable a judge names; they are never logged or returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PROMPT_VERSION = "cpqa-judge-v1"
MAX_RATING = 5

_SYSTEM = "You grade answers to questions about an audio recording. You are strict, consistent and brief."

_SCALE_AUDIOBENCH = """\
0: the answer refuses, says it cannot tell, or has nothing to do with the reference.
1: the answer barely touches the reference; it is mostly wrong or beside the point.
2: the answer recognises what the question is about but departs from the reference in substance.
3: the answer is broadly in line with the reference but lacks detail or precision.
4: the answer is mostly accurate and relevant, with only small gaps.
5: the answer agrees with the reference in content and in detail."""

_SCALE_PARALINGUISTIC = """\
0: the answer refuses, says it cannot tell, or has nothing to do with the reference.
1: the answer gets the main point wrong (for example the opposite emotion, the wrong gender, or the wrong number of speakers).
2: the answer is on topic but its conclusion about the content or the voice differs from the reference.
3: the answer is partly right: one of several points, or a related but clearly different emotion.
4: the answer reaches the reference's conclusion with a small inaccuracy or vagueness.
5: the answer reaches the same conclusion as the reference about what is said and how it is said."""

_REPLY_FORMAT = """\
Reason first, then grade. Reply in exactly this form:
Explanation: <one or two sentences>
Rating: <one integer from 0 to 5>"""

_AUDIOBENCH_TASK = f"""\
Compare the model's answer with the reference answer. Judge how closely it matches the reference in
content, accuracy and relevance to the question, and pay attention to details.

Rating scale:
{_SCALE_AUDIOBENCH}

{_REPLY_FORMAT}"""

_PARALINGUISTIC_TASK = f"""\
The question may concern how things are said as well as what is said: the speaker's emotion or mood,
their gender, how many people speak and when the speaker changes. Decide whether the model's answer
reaches the same conclusion as the reference about these cues and about the content.
- A short answer that is right deserves full marks; do not lower the grade for brevity or for leaving
  out wording the reference happens to use.
- Close emotion words (for example "upset" for "sad", "cheerful" for "happy") count as a match; an
  opposite or unrelated emotion does not.
- A wrong gender, a wrong number of speakers or a missed change of speaker is a substantive error.

Rating scale:
{_SCALE_PARALINGUISTIC}

{_REPLY_FORMAT}"""

PROMPTS: dict[str, str] = {"audiobench": _AUDIOBENCH_TASK, "paralinguistic": _PARALINGUISTIC_TASK}
DEFAULT_PROMPTS = ("audiobench", "paralinguistic")


def render_messages(prompt: str, question: str, reference: str, prediction: str) -> list[dict]:
    """The chat messages that ask a judge to grade ``prediction`` against ``reference``."""
    if prompt not in PROMPTS:
        raise ValueError(f"unknown judge prompt {prompt!r}; known: {sorted(PROMPTS)}")
    user = (
        f"[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n[Model answer]\n{prediction}\n\n"
        f"[Task]\n{PROMPTS[prompt]}"
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


_RATING = re.compile(r"rating\W{0,6}?(-?\d+(?:\.\d+)?)", re.IGNORECASE)


def parse_rating(text: str | None) -> tuple[int | None, str | None]:
    """``(rating, None)`` from a judge reply, or ``(None, reason)`` when it holds no valid rating.

    The last "Rating: N" wins (judges sometimes quote the scale first); markdown and brackets
    around the number are tolerated, anything outside 0..5 or fractional is a failure.

    >>> parse_rating("Explanation: close.\\n**Rating:** [4]")
    (4, None)
    >>> parse_rating("I would give it a 4.")
    (None, 'no "Rating: N" line in the reply')
    """
    if not text or not text.strip():
        return None, "empty reply"
    found = _RATING.findall(text)
    if not found:
        return None, 'no "Rating: N" line in the reply'
    value = float(found[-1])
    if not value.is_integer() or not 0 <= value <= MAX_RATING:
        return None, f"rating {found[-1]} outside the integers 0..{MAX_RATING}"
    return int(value), None


@dataclass(frozen=True)
class Judge:
    """One judge: an endpoint (model + base_url + key variable) or a local callable."""

    name: str
    model: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    max_retries: int = 3
    timeout: float = 120.0
    params: Mapping = field(default_factory=lambda: {"temperature": 0.0, "max_tokens": 512})
    call: Callable[[list[dict]], str] | None = None

    def describe(self) -> dict:
        """What the results may say about this judge (never the key)."""
        if self.call is not None:
            return {"name": self.name, "kind": "callable"}
        return {"name": self.name, "model": self.model, "base_url": self.base_url, "params": dict(self.params)}


def make_judges(specs: Sequence[Mapping | Callable] | Mapping | Callable) -> list[Judge]:
    """Judges from dicts (``model``, ``base_url``, ``api_key_env``, optional ``name``, ``max_retries``,
    ``timeout``, ``max_tokens``), callables, or dicts ``{"name", "call"}``; names must be unique."""
    if isinstance(specs, Mapping) or callable(specs):
        specs = [specs]
    judges = [_make_judge(spec) for spec in specs]
    if not judges:
        raise ValueError("at least one judge is needed")
    names = [j.name for j in judges]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"judge names must be unique, repeated: {duplicates}; give each a 'name'")
    return judges


def _make_judge(spec: Mapping | Callable) -> Judge:
    if callable(spec):
        return Judge(name=getattr(spec, "__name__", "callable"), call=spec)
    spec = dict(spec)
    if spec.get("call") is not None:
        return Judge(name=spec.get("name") or getattr(spec["call"], "__name__", "callable"), call=spec["call"])
    if not spec.get("model"):
        raise ValueError(f"a judge needs a 'model' (or a 'call'); got keys {sorted(spec)}")
    unknown = set(spec) - {"name", "model", "base_url", "api_key_env", "max_retries", "timeout", "max_tokens", "temperature"}
    if unknown:
        raise ValueError(f"unknown judge settings {sorted(unknown)}")
    params = {"temperature": float(spec.get("temperature", 0.0)), "max_tokens": int(spec.get("max_tokens", 512))}
    return Judge(
        name=spec.get("name") or spec["model"],
        model=spec["model"],
        base_url=spec.get("base_url"),
        api_key_env=spec.get("api_key_env"),
        max_retries=int(spec.get("max_retries", 3)),
        timeout=float(spec.get("timeout", 120.0)),
        params=params,
    )


@dataclass(frozen=True)
class Reply:
    """A judge's answer to one request: the raw text, or the error that prevented one."""

    text: str | None
    error: str | None = None


class ReplyCache:
    """Judge replies on disk, one JSON file per request, keyed by sha256(model, messages, params)."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory) if directory else None

    @staticmethod
    def key(model: str, messages: list[dict], params: Mapping) -> str:
        request = {"model": model, "messages": messages, "params": dict(params)}
        payload = json.dumps(request, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        if self.directory is None:
            return None
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))["text"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, model: str, text: str) -> None:
        if self.directory is None:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename, so a concurrent or interrupted run never reads half a file
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as tmp:
            json.dump({"model": model, "text": text}, tmp, ensure_ascii=False)
        os.replace(tmp.name, path)


class JudgeClient:
    """Sends messages to one judge; successful endpoint replies go to the cache, errors never do."""

    def __init__(self, judge: Judge, cache: ReplyCache):
        self.judge = judge
        self.cache = cache
        self._client = None if judge.call is not None else _openai_client(judge)

    def ask(self, messages: list[dict]) -> Reply:
        if self.judge.call is not None:
            return _guarded(lambda: self.judge.call(messages))
        key = ReplyCache.key(self.judge.model, messages, self.judge.params)
        cached = self.cache.get(key)
        if cached is not None:
            return Reply(cached)
        reply = _guarded(lambda: self._complete(messages))
        if reply.error is None:
            self.cache.put(key, self.judge.model, reply.text)
        return reply

    def _complete(self, messages: list[dict]) -> str:
        response = self._client.chat.completions.create(model=self.judge.model, messages=messages, **self.judge.params)
        content = response.choices[0].message.content if response.choices else None
        if content is None:
            raise ValueError("the reply has no message content")
        return content


def require_api_key(judge: Judge) -> str:
    """The judge's key from its environment variable ("EMPTY" for keyless local servers)."""
    if not judge.api_key_env:
        return "EMPTY"  # vLLM and llama.cpp servers accept any key
    api_key = os.environ.get(judge.api_key_env)
    if not api_key:
        raise ValueError(f"judge {judge.name!r}: environment variable {judge.api_key_env} is not set")
    return api_key


def _openai_client(judge: Judge):
    import openai

    api_key = require_api_key(judge)
    return openai.OpenAI(base_url=judge.base_url, api_key=api_key, max_retries=judge.max_retries, timeout=judge.timeout)


def _guarded(ask: Callable[[], str]) -> Reply:
    try:
        text = ask()
    except Exception as exc:  # any failure is recorded on the item, never raised mid-run
        return Reply(None, f"{type(exc).__name__}: {_first_line(exc)}")
    if not isinstance(text, str):
        return Reply(None, f"the judge returned {type(text).__name__}, not text")
    return Reply(text)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else ""


@dataclass(frozen=True)
class Grade:
    """One judgement of one answer: the rating (None when it failed), the raw reply and the error."""

    rating: int | None
    raw: str | None
    error: str | None


def grade_all(
    judges: Sequence[Judge],
    requests: Sequence[tuple[str, str, str, str]],
    cache_dir: str | os.PathLike | None = None,
    max_concurrency: int = 8,
) -> dict[tuple[str, int], Grade]:
    """Grade every ``(prompt, question, reference, prediction)`` request with every judge.

    Returns ``{(judge name, request index): Grade}``. Identical requests are sent once per judge.
    """
    cache = ReplyCache(cache_dir)
    clients = {judge.name: JudgeClient(judge, cache) for judge in judges}
    messages = [render_messages(*request) for request in requests]
    unique: dict[str, list[dict]] = {}
    for m in messages:
        unique.setdefault(_fingerprint(m), m)
    jobs = [(name, fp) for name in clients for fp in unique]
    with ThreadPoolExecutor(max_workers=max(1, max_concurrency)) as pool:
        replies = dict(zip(jobs, pool.map(lambda job: clients[job[0]].ask(unique[job[1]]), jobs)))
    grades = {}
    for name in clients:
        for index, m in enumerate(messages):
            reply = replies[(name, _fingerprint(m))]
            grades[(name, index)] = _grade(reply)
    return grades


def _fingerprint(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode("utf-8")).hexdigest()


def _grade(reply: Reply) -> Grade:
    if reply.error is not None:
        return Grade(None, reply.text, reply.error)
    rating, problem = parse_rating(reply.text)
    return Grade(rating, reply.text, problem)
