"""Stage 10, QA generation: an LLM writes question-answer pairs about each condensed segment.

    prompt file (build/prompts/qa_v2.txt) -> render_messages (pure) -> LlmClient (cached, concurrent)
    -> parse_qa (pure) -> qa_pairs

Input columns: ``segment_id``, ``transcript``, ``tagged_words`` (``word, start, end, score, emotion,
gender``), ``primary_emotion``, ``emotions``, ``gender``; ``start``/``end`` when present put the word
times relative to the clip. Output columns, and only these:

- ``qa_pairs``: list of ``{"question", "answer"}`` (empty when the reply had none);
- ``qa_raw``: the reply as the LLM wrote it (kept whether or not it parsed);
- ``qa_error``: null, ``"unparseable reply"``, ``"no transcript"``, or the transport error;
- ``prompt_version``, ``llm_model``: provenance of every row.

``prompt_version`` names the prompt file (``qa_v2``, the default, adds to ``qa_v1`` the paper's two
instructions: labels may be wrong, and questions should need both the words and the voice).
``word_timing``: ``"spans"`` lists consecutive words that share emotion and gender as one timed span
(short prompts); ``"words"`` lists every word with its own start and end (two decimals).

``structured_output``: ``"json_schema"`` sends a JSON schema (the reply is then JSON); ``"text"`` asks for
``Q:``/``A:`` lines; ``"auto"`` sends the schema and falls back to plain text on a server that refuses it.

``parse_qa``: pairs from JSON (bare, fenced, or truncated: the complete pairs are kept) or from labelled
lines (``Q:``/``A:``, ``Question:``/``Answer:``, numbered, bold, any case, an ASCII or a fullwidth
colon; unlabelled lines continue the field above them until a blank line). An answer label later on a
question's line ("Q: Who speaks? A: A woman.") counts only where the question has ended: after a
question mark of any script (``prompting.ends_with_question_mark``) or a sentence end (. ! 。 ！ ...,
for imperative questions); elsewhere ("Q: What does A: mean?") it is part of the question.
"""

from __future__ import annotations

import functools
import json
import re
from string import Template

from ..core.config import QaConfig
from ..models.prompting import (
    CLOSERS,
    FRAGMENT_WORDS,
    PROMPT_DIR,
    chat_request,
    check_structured_mode,
    client_for,
    ends_with_question_mark,
    json_schema_format,
    load_sections,
    speaker_runs,
)
from ..models.prompting import FENCE as _FENCE
from ..models.prompting import LENIENT_JSON as _LENIENT_JSON

PROMPT_VERSION = "qa_v2"  # the default of qa.prompt_version
WORD_TIMINGS = ("spans", "words")
UNPARSEABLE = "unparseable reply"
NO_TRANSCRIPT = "no transcript"


# ---------------------------------------------------------------- prompt
def prompt_versions() -> list[str]:
    """The QA prompt files of ``build/prompts`` by version name."""
    return sorted(p.stem for p in PROMPT_DIR.glob("qa_*.txt"))


@functools.lru_cache(maxsize=None)
def load_prompt(version: str = PROMPT_VERSION) -> dict[str, Template]:
    """The ``### section`` blocks of ``prompts/<version>.txt`` as templates (text before the first is comment)."""
    path = PROMPT_DIR / f"{version}.txt"
    if not path.is_file():
        raise ValueError(f"qa.prompt_version {version!r}: no prompt file {path.name} (known: {', '.join(prompt_versions())})")
    return load_sections(version, ("system", "user", "format_text", "format_json"))


@functools.lru_cache(maxsize=1)
def prompt_fragments(n_words: int = FRAGMENT_WORDS) -> frozenset[str]:
    """Every run of ``n_words`` consecutive words (lower case, punctuation dropped) in the fixed text of
    every prompt version: a pair containing one repeats its instructions instead of answering."""
    fragments = set()
    for path in sorted(PROMPT_DIR.glob("*.txt")):
        for version_text in load_sections(path.stem, ()).values():
            for literal in re.split(r"\$\w+|\$\{\w+\}", version_text.template):  # placeholders break runs
                words = re.sub(r"\W+", " ", literal.lower()).split()
                fragments.update(" ".join(words[i : i + n_words]) for i in range(len(words) - n_words + 1))
    return frozenset(fragments)


def word_spans(words: list[dict], clip_start: float = 0.0) -> list[dict]:
    """Consecutive words that share emotion and gender, merged into one span (keeps prompts short)."""
    spans: list[dict] = []
    for w in words:
        labels = (w.get("emotion"), w.get("gender"))
        if spans and (spans[-1]["emotion"], spans[-1]["gender"]) == labels:
            if w["end"] is not None:  # untimed words (numbers, symbols) keep the span's end
                spans[-1]["end"] = w["end"]
            spans[-1]["start"] = spans[-1]["start"] if spans[-1]["start"] is not None else w["start"]
            spans[-1]["words"].append(w["word"].strip())
        else:
            spans.append({"start": w["start"], "end": w["end"], "emotion": labels[0], "gender": labels[1], "words": [w["word"].strip()]})
    for span in spans:
        for key in ("start", "end"):
            span[key] = None if span[key] is None else round(span[key] - clip_start, 1)
    return spans


def format_word_spans(spans: list[dict]) -> str:
    if not spans:
        return "(no word timings)"
    return "\n".join(
        f"{_seconds(s['start'])}-{_seconds(s['end'])} | {s['emotion'] or 'none'} | {s['gender'] or 'none'} | {' '.join(s['words'])}" for s in spans
    )


def format_words(words: list[dict], clip_start: float = 0.0) -> str:
    """One line per word with its own times (clip-relative, two decimals): the ``words`` timing."""
    if not words:
        return "(no word timings)"
    lines = []
    for w in words:
        start, end = (None if w[k] is None else w[k] - clip_start for k in ("start", "end"))
        lines.append(f"{_seconds(start, 2)}-{_seconds(end, 2)} | {w.get('emotion') or 'none'} | {w.get('gender') or 'none'} | {w['word'].strip()}")
    return "\n".join(lines)


def format_word_timings(words: list[dict], clip_start: float, word_timing: str) -> tuple[str, str]:
    """(the timed labels block, the note that says what its lines hold) for ``word_timing``."""
    if word_timing == "spans":
        return format_word_spans(word_spans(words, clip_start)), "seconds | emotion | gender | words"
    if word_timing == "words":
        return format_words(words, clip_start), "seconds | emotion | gender | word, one line per word"
    raise ValueError(f"qa.word_timing must be one of {WORD_TIMINGS}, got {word_timing!r}")


def _seconds(value: float | None, digits: int = 1) -> str:
    return "?" if value is None else f"{value:.{digits}f}"


QA_LANGUAGES = ("en", "segment")


def format_speaker_turns(words: list[dict], clip_start: float = 0.0) -> str:
    """Consecutive words of one speaker (``asr.diarize``) as one line: clip-relative seconds, speaker, words."""
    turns = []
    for speaker, run in speaker_runs(words):
        ends = [w["end"] for w in run if w["end"] is not None]  # untimed words (numbers, symbols) keep the turn's end
        turns.append({"speaker": speaker, "start": run[0]["start"], "end": ends[-1] if ends else run[0]["end"], "words": [w["word"].strip() for w in run]})
    shift = lambda t: None if t is None else t - clip_start
    return "\n".join(f"{_seconds(shift(t['start']))}-{_seconds(shift(t['end']))} | {t['speaker'] or 'unknown'} | {' '.join(t['words'])}" for t in turns)


def render_messages(row: dict, n_pairs: int, structured: bool, version: str = PROMPT_VERSION, word_timing: str = "spans", language: str = "en") -> list[dict]:
    """System and user messages for one segment row; with ``language="segment"`` the pairs of a segment
    whose speech is not English are asked for in its language (the row's ``language``)."""
    prompt = load_prompt(version)
    words = row.get("tagged_words") or []
    clip_start = row.get("start") or 0.0
    timings, timing_note = format_word_timings(words, clip_start, word_timing)
    fields = {
        "duration": _duration(row, words, clip_start),
        "transcript": (row.get("transcript") or "").strip(),
        "primary_emotion": row.get("primary_emotion") or "none",
        "emotions": ", ".join(row.get("emotions") or []) or "none",
        "gender": row.get("gender") or "unknown",
        "word_spans": timings,
        "timing_note": timing_note,
        "n_pairs": n_pairs,
        "output_format": prompt["format_json" if structured else "format_text"].substitute(),
    }
    user = prompt["user"].substitute(fields)
    if any(w.get("speaker") for w in words):
        user += "\nSpeaker turns from diarization (seconds | speaker | words):\n" + format_speaker_turns(words, clip_start)
    if language == "segment" and row.get("language") not in (None, "en"):
        from whisperx.utils import LANGUAGES

        user += f"\nWrite the questions and answers in {LANGUAGES.get(row['language'], row['language']).title()}, the language spoken in the recording."
    return [
        {"role": "system", "content": prompt["system"].substitute(fields)},
        {"role": "user", "content": user},
    ]


def _duration(row: dict, words: list[dict], clip_start: float) -> str:
    if row.get("start") is not None and row.get("end") is not None:
        seconds = row["end"] - row["start"]
    elif words:
        seconds = words[-1]["end"] - clip_start
    else:
        return "unknown"
    return f"{seconds:.0f} seconds"


def qa_schema(n_pairs: int) -> dict:
    """JSON schema of a reply; valid for OpenAI's strict mode and for llama.cpp grammars."""
    pair = {
        "type": "object",
        "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
        "required": ["question", "answer"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {"pairs": {"type": "array", "items": pair, "minItems": 1, "maxItems": n_pairs}},
        "required": ["pairs"],
        "additionalProperties": False,
    }


def response_format(n_pairs: int) -> dict:
    return json_schema_format("qa_pairs", qa_schema(n_pairs))


# ---------------------------------------------------------------- parse
_JSON_PAIR = re.compile(r'\{\s*"question"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"answer"\s*:\s*("(?:[^"\\]|\\.)*")\s*\}', re.S)
_MARK = r"(?:\*\*|__)?"
# "Q:", "Question:", "Q1:", "Question 2:", "1. Q:", "- Q:", "**Q1:**" at the start of a line
_COLON = r"\s*[:：]\s*"  # an ASCII or a fullwidth colon
_LABEL = re.compile(
    rf"^\s*(?:[-*•]\s+)?(?:\d+\s*[.)]\s*)?{_MARK}(?P<kind>question|answer|q|a)\s*\d*\s*{_MARK}"
    rf"{_COLON}{_MARK}\s*",
    re.I,
)
# an answer label later on a question's line: "Q: Who speaks? A: A woman." (see _inline_answer)
_INLINE_ANSWER = re.compile(rf"{_MARK}(?:answer|a)\s*\d*\s*{_MARK}{_COLON}{_MARK}\s*", re.I)
# sentence ends of several scripts: an imperative question ("Describe her tone. A: Calm.") ends with one
_SENTENCE_ENDS = ".!\u3002\uff01\uff0e\u0589\u0964\u104b\u1362\u06d4"


def parse_qa(text: str | None) -> list[dict]:
    """Question-answer pairs from a reply in JSON (bare, fenced, or truncated) or labelled lines."""
    if not text or not text.strip():
        return []
    pairs = _pairs_from_json(text)
    if pairs is None:
        pairs = _pairs_from_lines(text)
    return [p for p in pairs if _has_words(p["question"]) and _has_words(p["answer"])]


def _has_words(value: str) -> bool:
    """False for empty fields and placeholders such as "..." copied from the format description."""
    return any(ch.isalnum() for ch in value)


def _pairs_from_json(text: str) -> list[dict] | None:
    """None when the text holds no usable JSON; complete pairs are salvaged from a truncated reply."""
    candidate = _json_candidate(text)
    if candidate is None:
        return None
    try:
        data, _ = _LENIENT_JSON.raw_decode(candidate)  # ignores chatter after the JSON value
    except json.JSONDecodeError:
        salvaged = [{"question": _json_string(q), "answer": _json_string(a)} for q, a in _JSON_PAIR.findall(candidate)]
        return [_clean_pair(p) for p in salvaged] or None
    if isinstance(data, dict):
        data = data.get("pairs", data.get("qa_pairs", [data]))
    if not isinstance(data, list):
        return None
    return [_clean_pair(_pair_from_item(item)) for item in data if isinstance(item, dict)] or None


def _json_string(quoted: str) -> str:
    try:
        return _LENIENT_JSON.decode(quoted)
    except json.JSONDecodeError:
        return ""


def _json_candidate(text: str) -> str | None:
    fenced = _FENCE.search(text)
    if fenced:
        return fenced.group(1).strip()
    text = text.strip()
    if text.startswith(("{", "[")):
        return text
    if '"question"' in text:  # JSON after a sentence of preamble
        starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
        return text[min(starts):] if starts else None
    return None


def _pair_from_item(item: dict) -> dict:
    lowered = {str(k).lower(): v for k, v in item.items()}
    question = lowered.get("question", lowered.get("q"))
    answer = lowered.get("answer", lowered.get("a"))
    return {"question": question if isinstance(question, str) else "", "answer": answer if isinstance(answer, str) else ""}


def _pairs_from_lines(text: str) -> list[dict]:
    pairs: list[dict] = []
    current: dict | None = None
    field: str | None = None  # the field that unlabelled lines continue; None after a blank line
    for line in text.splitlines():
        label = _LABEL.match(line)
        if label is None:
            if not line.strip() or line.strip().startswith("```"):
                field = None
            elif current is not None and field is not None:
                current[field] += " " + line.strip()
            continue
        rest = line[label.end() :].strip()
        if label.group("kind").lower().startswith("q"):
            current = {"question": rest, "answer": ""}
            pairs.append(current)
            field = "question"
            inline = _inline_answer(rest)
            if inline:
                current["question"], current["answer"] = rest[: inline.start()].strip(), rest[inline.end() :].strip()
                field = "answer"
        elif current is not None and not current["answer"]:
            current["answer"] = rest
            field = "answer"
    return [_clean_pair(p) for p in pairs]


def _inline_answer(line: str) -> re.Match | None:
    """The first answer label in the rest of a question's line that follows the end of the question (a
    question mark of any script, or a sentence end), with or without a space after it; None if none."""
    for match in _INLINE_ANSWER.finditer(line):
        before = line[: match.start()]
        if not before or before[-1].isalnum():
            continue  # the line's start (an empty question), or inside a word ("Tina: ...")
        end = before.rstrip(CLOSERS)
        if ends_with_question_mark(before) or end and end[-1] in _SENTENCE_ENDS:
            return match
    return None


def _clean_pair(pair: dict) -> dict:
    return {key: _clean(value) for key, value in pair.items()}


def _clean(value: str) -> str:
    value = re.sub(r"\s+", " ", value).strip()
    value = re.sub(r"^(?:\*\*|__)|(?:\*\*|__)$", "", value).strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1].strip()
    return value


# ---------------------------------------------------------------- map function
def generate_qa(batch: dict[str, list], qa: QaConfig, *, base_url: str, cache_dir: str | None) -> dict[str, list]:
    """Batched map function: one LLM request per segment (cached), parsed into QA pairs.

    ``qa.model`` names the model the endpoint at ``base_url`` serves."""
    check_structured_mode(qa.structured_output)
    if qa.language not in QA_LANGUAGES:
        raise ValueError(f"qa.language must be one of {QA_LANGUAGES}, got {qa.language!r}")
    client = client_for(qa, base_url, cache_dir)
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    askable = [i for i, row in enumerate(rows) if (row.get("transcript") or "").strip()]
    requests = [qa_request(rows[i], qa) for i in askable]
    results = dict(zip(askable, client.complete_many(requests)))

    out: dict[str, list] = {"qa_pairs": [], "qa_raw": [], "qa_error": [], "prompt_version": [], "llm_model": []}
    for i in range(len(rows)):
        result = results.get(i)
        if result is None:
            pairs, raw, error = [], None, NO_TRANSCRIPT
        elif result.error is not None:
            pairs, raw, error = [], result.text, result.error
        else:
            pairs, raw = parse_qa(result.text), result.text
            error = None if pairs else UNPARSEABLE
        out["qa_pairs"].append(pairs)
        out["qa_raw"].append(raw)
        out["qa_error"].append(error)
        out["prompt_version"].append(qa.prompt_version)
        out["llm_model"].append(qa.model)
    return out


def qa_request(row: dict, qa: QaConfig) -> dict:
    """The chat request for one segment under the QA section's settings."""
    n = qa.pairs_per_segment
    messages = render_messages(row, n, qa.structured_output != "text", qa.prompt_version, qa.word_timing, qa.language)
    limits = dict(temperature=qa.temperature, max_tokens=qa.max_tokens, structured_output=qa.structured_output)
    return chat_request(messages, **limits, schema_name="qa_pairs", schema=qa_schema(n))
