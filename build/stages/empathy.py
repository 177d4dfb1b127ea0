"""Empathetic-response samples: one per condensed clip, a second output beside the QA pairs.

    words + windows -> target utterance, dialogue history, audio span (pure)
    -> strategy (seeded by the clip id, or chosen by the LLM from the emotion's family)
    -> prompt (build/prompts/empathy_v1.txt + demonstrations of the same emotion) -> LlmClient (cached)
    -> parse_reply (pure) -> rejection_reason (pure)

Input columns (segment rows after ASR and the word join): ``segment_id``, ``start``, ``end`` (the clip
in recording time), ``tagged_words`` (``word, start, end, score, emotion, gender`` and, once
diarization exists, ``speaker``), ``emotion_windows`` (after X_E), ``primary_emotion``, ``gender``.
Output columns, and only these (``schema.EMPATHY_OUTPUT``):

- ``clip_start``, ``clip_end``: the published audio in recording time (provenance);
- ``text_context``: the turns before the target, ``[{speaker, text}]``;
- ``target_utterance``: ``{text, start, end, emotions: {primary, secondary}}``, times in seconds from
  ``clip_start`` (the start of the published audio);
- ``desired_response``: ``{text, response_strategy, emotion_awareness}``;
- ``empathy_raw``: the reply as the LLM wrote it; ``empathy_error``: null, a reason below, or the
  transport error (counted as ``REQUEST_FAILED``); ``prompt_version``, ``llm_model``: provenance.

Rules, in order:

1. **Sentences.** The clip's words are cut into sentence spans after every word that ends in ``.``,
   ``!``, ``?`` or ``…`` (closing quotes and brackets after it allowed; a few abbreviations such as
   "Mr." and "e.g." do not end a sentence). A clip whose words carry no such punctuation at all is
   cut at pauses instead: a new span starts where the gap between one word's end and the next
   word's start is at least ``pause_s`` seconds. Untimed words (digits, symbols) stay in the span
   they are written in.
2. **Target.** A span carries the clip's primary emotion when strictly more than half of its words
   are labelled with it (every word counts, untimed ones with the label they borrowed). The target
   utterance is the *last* span that carries it and has at least one timed word; its start and end
   are those of its first and last timed word. No such span: the clip is dropped with
   ``NO_TARGET`` (a clip without words with ``NO_WORDS``).
3. **Emotions.** ``primary`` is the clip's primary emotion (the target carries it by rule 2);
   ``secondary`` is the most frequent other label among the consistent emotion windows that overlap
   the target ("unknown" and "other" are not emotions and never count); on a tie the label whose
   first window comes earlier; null when there is none.
4. **History.** ``text_context`` is every word before the target, as turns: consecutive words of the
   same speaker form one turn; a word's speaker is its ``speaker`` value, or ``"Speaker"`` while
   words carry none. No word before the target: ``[]``.
5. **Audio.** The published audio runs from the clip's start to the target's end plus
   ``TAIL_PAD_S`` (never past the clip's end), so it holds the history and the target, and every
   time in the sample is relative to it.
6. **Strategy.** Each emotion2vec label belongs to one family (``EMOTION_FAMILY``): angry, disgusted,
   fearful, sad -> negative; happy -> positive; neutral, surprised (the paper's ambiguous class),
   other, unknown -> neutral or mixed. ``strategy="seeded"``: the strategy is the family's
   ``sha256(clip id) mod n``-th; ``strategy="llm"``: the LLM picks one from the family's closed list.
7. **Demonstrations.** ``demos_per_sample`` (1-3) examples from ``prompts/empathy_demos.jsonl`` with
   the same emotion (neutral ones for other and unknown): those using the assigned strategy first,
   the rest in an order seeded by the clip id.
8. **Validation.** A reply is rejected, with the reason counted, when it cannot be parsed
   (``UNPARSEABLE``), names no strategy in llm mode (``NO_STRATEGY``), names a strategy outside the
   family (``OUTSIDE_FAMILY``) or, in seeded mode, another one than assigned (``NOT_ASSIGNED``), has
   an empty response (``EMPTY_RESPONSE``) or one longer than ``max_response_chars``
   (``LONG_RESPONSE``), an empty emotion awareness (``NO_AWARENESS``), or when the response or the
   awareness names labels or classifiers (``NAMES_LABELS``: "emotion2vec", "classifier", "label",
   "detected emotion", "valence", a label word written as a tag such as "[sad]" or "emotion: sad").
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

from ..core.config import EmpathyConfig, QaConfig
from ..core.schema import EMOTION_FAMILY, EMOTION_LABELS, FAMILIES
from ..models.prompting import (
    FENCE,
    LENIENT_JSON,
    PROMPT_DIR,
    chat_request,
    check_structured_mode,
    client_for,
    load_sections,
    speaker_runs,
)

PROMPT_VERSION = "empathy_v1"
DEMOS_FILE = PROMPT_DIR / "empathy_demos.jsonl"
STRATEGY_MODES = ("seeded", "llm")
TAIL_PAD_S = 0.3
DEFAULT_SPEAKER = "Speaker"

# Reasons a clip yields no sample (counted in the funnel under the "empathy" stage).
NO_WORDS = "no words in the clip"
NO_TARGET = "no sentence carries the primary emotion"
UNPARSEABLE = "unparseable empathy reply"
NO_STRATEGY = "no strategy in the reply"
OUTSIDE_FAMILY = "strategy outside its family"
NOT_ASSIGNED = "strategy other than the one assigned"
EMPTY_RESPONSE = "empty response"
LONG_RESPONSE = "response too long"
NO_AWARENESS = "empty emotion awareness"
NAMES_LABELS = "response names labels or classifiers"
REQUEST_FAILED = "empathy request failed"  # counted for a transport error (the error is the detail)
REASONS = (NO_WORDS, NO_TARGET, UNPARSEABLE, NO_STRATEGY, OUTSIDE_FAMILY, NOT_ASSIGNED, EMPTY_RESPONSE, LONG_RESPONSE, NO_AWARENESS, NAMES_LABELS)

# ---------------------------------------------------------------- families and strategies (schema.FAMILIES)
NOT_EMOTIONS = frozenset({"unknown", "other"})


def family_of(emotion: str) -> str:
    if emotion not in EMOTION_FAMILY:
        raise ValueError(f"unknown emotion label {emotion!r}: expected one of {list(EMOTION_LABELS)}")
    return EMOTION_FAMILY[emotion]


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def seeded_strategy(clip_id: str, emotion: str) -> str:
    """The strategy of a clip in seeded mode: the same clip id always gets the same one."""
    strategies = FAMILIES[family_of(emotion)]
    return strategies[_hash(clip_id) % len(strategies)]


def _strategy_key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower()).replace("iz", "is")


_CANONICAL = {_strategy_key(s): s for strategies in FAMILIES.values() for s in strategies}


def canonical_strategy(name: str) -> str:
    """A strategy as the families spell it ("Problem solving" -> "problem-solving"); unknown names unchanged."""
    return _CANONICAL.get(_strategy_key(name), name.strip())


# ---------------------------------------------------------------- target span, history, audio
_SENTENCE_END = re.compile(r"[.!?…]+[\"'”’)\]]*$")
_ABBREVIATIONS = frozenset({"mr.", "mrs.", "ms.", "dr.", "st.", "vs.", "etc.", "e.g.", "i.e.", "prof.", "mt."})


def _timed(word: dict) -> bool:
    return word.get("start") is not None and word.get("end") is not None


def _ends_sentence(word: dict) -> bool:
    text = word["word"].strip()
    return bool(_SENTENCE_END.search(text)) and text.lower() not in _ABBREVIATIONS


def sentence_spans(words: list[dict], pause_s: float) -> list[list[int]]:
    """Word indices of each sentence span (rule 1)."""
    if not words:
        return []
    by_punctuation = any(_ends_sentence(w) for w in words)
    spans: list[list[int]] = [[]]
    last_end = None
    for i, word in enumerate(words):
        if not by_punctuation and spans[-1] and _timed(word) and last_end is not None and word["start"] - last_end >= pause_s:
            spans.append([])
        spans[-1].append(i)
        if _timed(word):
            last_end = word["end"]
        if by_punctuation and _ends_sentence(word) and i < len(words) - 1:
            spans.append([])
    return [s for s in spans if s]


def carries(words: list[dict], emotion: str) -> bool:
    """Strictly more than half of the words are labelled ``emotion``."""
    return sum(w.get("emotion") == emotion for w in words) * 2 > len(words)


def select_target(words: list[dict], primary: str, pause_s: float) -> list[int] | None:
    """Indices of the target utterance's words (rule 2), or None when no span qualifies."""
    for span in reversed(sentence_spans(words, pause_s)):
        members = [words[i] for i in span]
        if carries(members, primary) and any(_timed(w) for w in members):
            return span
    return None


def _text(words: list[dict]) -> str:
    return " ".join(w["word"].strip() for w in words if w["word"].strip())


def context_turns(words: list[dict]) -> list[dict]:
    """The words as turns of consecutive words by the same speaker (rule 4)."""
    return [{"speaker": speaker, "text": _text(run)} for speaker, run in speaker_runs(words, DEFAULT_SPEAKER) if _text(run)]


def target_emotions(windows: list[dict], start: float, end: float, primary: str) -> dict:
    """``{primary, secondary}`` over the consistent windows that overlap ``[start, end]`` (rule 3)."""
    overlapping = sorted((w for w in windows if w["start"] < end and w["end"] > start), key=lambda w: w["start"])
    labels = [w["emotion"] for w in overlapping if w.get("consistent") and w["emotion"] not in NOT_EMOTIONS and w["emotion"] != primary]
    counts = Counter(labels)
    first = {label: labels.index(label) for label in counts}
    secondary = min(counts, key=lambda label: (-counts[label], first[label])) if counts else None
    return {"primary": primary, "secondary": secondary}


def prepare_sample(row: dict, pause_s: float) -> tuple[dict | None, str | None]:
    """The sample's text and times from a clip row (rules 1-5), or None and the reason there is none."""
    words = row.get("tagged_words") or []
    if not any(w["word"].strip() for w in words):
        return None, NO_WORDS
    span = select_target(words, row["primary_emotion"], pause_s)
    if span is None:
        return None, NO_TARGET
    target = [words[i] for i in span]
    timed = [w for w in target if _timed(w)]
    start, end = timed[0]["start"], timed[-1]["end"]
    clip_start = row["start"]
    clip_end = min(row["end"], end + TAIL_PAD_S)
    sample = {
        "clip_start": clip_start,
        "clip_end": round(clip_end, 3),
        "text_context": context_turns(words[: span[0]]),
        "target_utterance": {
            "text": _text(target),
            "start": round(start - clip_start, 3),
            "end": round(end - clip_start, 3),
            "emotions": target_emotions(row.get("emotion_windows") or [], start, end, row["primary_emotion"]),
        },
    }
    return sample, None


# ---------------------------------------------------------------- demonstrations
@functools.lru_cache(maxsize=None)
def load_demos(path: str = str(DEMOS_FILE)) -> tuple[dict, ...]:
    """The bundled demonstrations; a line with an unknown emotion or a strategy outside its family is an error."""
    demos = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        demo = json.loads(line)
        missing = {"emotion", "context", "utterance", "strategy", "awareness", "response"} - demo.keys()
        if missing:
            raise ValueError(f"{path}:{n}: demonstration lacks {sorted(missing)}")
        if demo["strategy"] not in FAMILIES[family_of(demo["emotion"])]:
            raise ValueError(f"{path}:{n}: strategy {demo['strategy']!r} is not in the {family_of(demo['emotion'])} family")
        demos.append(demo)
    return tuple(demos)


def pick_demos(emotion: str, strategy: str | None, clip_id: str, n: int) -> list[dict]:
    """``n`` demonstrations of ``emotion`` (rule 7)."""
    pool = [d for d in load_demos() if d["emotion"] == (emotion if emotion not in NOT_EMOTIONS else "neutral")]
    order = sorted(range(len(pool)), key=lambda i: (pool[i]["strategy"] != strategy, _hash(f"{clip_id}/{i}")))
    return [pool[i] for i in order[:n]]


# ---------------------------------------------------------------- prompt
def load_prompt(version: str = PROMPT_VERSION):
    return load_sections(version, ("system", "user", "demo", "strategy_seeded", "strategy_llm", "format_text", "format_json"))


def _history(turns: list[dict]) -> str:
    return "\n".join(f"{t['speaker']}: {t['text']}" for t in turns) or "(nothing before this utterance)"


def render_messages(sample: dict, gender: str | None, strategy: str | None, demos: list[dict], structured: bool, version: str = PROMPT_VERSION) -> list[dict]:
    """System and user messages for one sample; ``strategy`` None lets the LLM choose from the family."""
    prompt = load_prompt(version)
    target = sample["target_utterance"]
    emotions = target["emotions"]
    family = family_of(emotions["primary"])
    demo_text = "\n\n".join(prompt["demo"].substitute({**d, "n": i + 1}) for i, d in enumerate(demos))
    fields = {
        "history": _history(sample["text_context"]),
        "utterance": target["text"],
        "duration": f"{target['end']:.0f}",
        "gender": gender or "unknown",
        "primary": emotions["primary"],
        "secondary": emotions["secondary"] or "none",
        "family": family,
        "emotion_list": ", ".join(label for label in EMOTION_LABELS if label not in NOT_EMOTIONS),
        "strategy_list": ", ".join(FAMILIES[family]),
        "demonstrations": demo_text or "(none)",
    }
    fields["strategy_rule"] = prompt["strategy_seeded" if strategy else "strategy_llm"].substitute({**fields, "strategy": strategy or ""})
    fields["output_format"] = prompt["format_json" if structured else "format_text"].substitute(fields)
    return [
        {"role": "system", "content": prompt["system"].substitute(fields)},
        {"role": "user", "content": prompt["user"].substitute(fields)},
    ]


def reply_schema(strategies: tuple[str, ...]) -> dict:
    """JSON schema of a reply (strict-mode valid): the strategy is one of ``strategies``."""
    return {
        "type": "object",
        "properties": {
            "strategy": {"type": "string", "enum": list(strategies)},
            "emotion_awareness": {"type": "string"},
            "response": {"type": "string"},
        },
        "required": ["strategy", "emotion_awareness", "response"],
        "additionalProperties": False,
    }


# ---------------------------------------------------------------- parse and validate
_FIELD_NAMES = {"strategy": "strategy", "responsestrategy": "strategy", "awareness": "awareness", "emotionawareness": "awareness", "response": "response", "reply": "response", "text": "response"}
_LINE = re.compile(r"^\s*(?:[-*•]\s+)?(?:\*\*|__)?(?P<name>response strategy|emotion awareness|strategy|awareness|response|reply)(?:\*\*|__)?\s*:\s*(?:\*\*|__)?\s*(?P<rest>.*)$", re.I)


def parse_reply(text: str | None) -> dict | None:
    """``{strategy, awareness, response}`` (strings, possibly empty) from JSON or labelled lines; None when neither."""
    if not text or not text.strip():
        return None
    parsed = _from_json(text)
    if parsed is None:
        parsed = _from_lines(text)
    if parsed is None:
        return None
    return {key: _clean(parsed.get(key) or "") for key in ("strategy", "awareness", "response")}


def _from_json(text: str) -> dict | None:
    fenced = FENCE.search(text)
    candidate = fenced.group(1).strip() if fenced else text[text.find("{") :] if "{" in text else ""
    if not candidate.startswith("{"):
        return None
    try:
        data, _ = LENIENT_JSON.raw_decode(candidate)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    fields = {}
    for key, value in data.items():
        name = _FIELD_NAMES.get(re.sub(r"[^a-z]", "", str(key).lower()))
        if name and isinstance(value, str):
            fields.setdefault(name, value)
    return fields or None


def _from_lines(text: str) -> dict | None:
    fields: dict[str, str] = {}
    current = None
    for line in text.splitlines():
        match = _LINE.match(line)
        if match:
            current = _FIELD_NAMES[re.sub(r"[^a-z]", "", match.group("name").lower())]
            fields[current] = match.group("rest")
        elif current is not None and line.strip():
            fields[current] += " " + line.strip()
    return fields or None


def _clean(value: str) -> str:
    value = re.sub(r"\s+", " ", value).strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1].strip()
    return value


_LABEL_WORDS = "|".join(EMOTION_LABELS)
_LEAKS = re.compile(
    r"emotion2vec|classifier|\blabel(?:s|led|ed)?\b|detected emotion|emotion (?:detection|recognition)|\bvalence\b|\barousal\b"
    r"|confidence score|primary emotion|secondary emotion"
    rf"|[\[(<{{#]\s*(?:{_LABEL_WORDS})\s*[\])>}}]?(?=\W|$)|\bemotions?\s*[:=]",
    re.I,
)


def names_labels(text: str) -> bool:
    """True when ``text`` talks about labels or classifiers, or writes a label as a tag."""
    return bool(_LEAKS.search(text))


def rejection_reason(reply: dict | None, family: str, assigned: str | None, max_response_chars: int) -> str | None:
    """Why a parsed reply cannot be a sample (rule 8), or None when it is valid."""
    if reply is None:
        return UNPARSEABLE
    strategy = canonical_strategy(reply["strategy"]) if reply["strategy"] else assigned
    if strategy is None:
        return NO_STRATEGY
    if strategy not in FAMILIES[family]:
        return OUTSIDE_FAMILY
    if assigned is not None and strategy != assigned:
        return NOT_ASSIGNED
    if not any(ch.isalnum() for ch in reply["response"]):
        return EMPTY_RESPONSE
    if len(reply["response"]) > max_response_chars:
        return LONG_RESPONSE
    if not any(ch.isalnum() for ch in reply["awareness"]):
        return NO_AWARENESS
    if names_labels(reply["response"]) or names_labels(reply["awareness"]):
        return NAMES_LABELS
    return None


# ---------------------------------------------------------------- map function
OUTPUT_COLUMNS = ("clip_start", "clip_end", "text_context", "target_utterance", "desired_response", "empathy_raw", "empathy_error", "prompt_version", "llm_model")


def generate_empathy(
    batch: dict[str, list], empathy: EmpathyConfig, qa: QaConfig, *, base_url: str, cache_dir: str | None
) -> dict[str, list]:
    """Batched map function: one LLM request per clip with a target utterance (cached), parsed and validated.

    The endpoint settings (model served, key, concurrency, retries, timeout) are those of ``qa``."""
    e = empathy
    check_structured_mode(e.structured_output)
    if e.strategy not in STRATEGY_MODES:
        raise ValueError(f"empathy.strategy must be one of {STRATEGY_MODES}, got {e.strategy!r}")
    if not 1 <= e.demos_per_sample <= 3:
        raise ValueError(f"empathy.demos_per_sample must be 1, 2 or 3, got {e.demos_per_sample}")
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    prepared = [prepare_sample(row, e.pause_s) for row in rows]
    seeded = e.strategy == "seeded"
    assigned = [seeded_strategy(row["segment_id"], row["primary_emotion"]) if seeded else None for row in rows]
    askable = [i for i, (sample, _) in enumerate(prepared) if sample is not None]
    requests = [_request(rows[i], prepared[i][0], assigned[i], e) for i in askable]
    client = client_for(qa, base_url, cache_dir) if askable else None
    results = dict(zip(askable, client.complete_many(requests))) if client else {}

    out: dict[str, list] = {name: [] for name in OUTPUT_COLUMNS}
    for i, row in enumerate(rows):
        sample, error = prepared[i]
        raw, response = None, None
        result = results.get(i)
        if result is not None and result.error is not None:
            raw, error = result.text, result.error
        elif result is not None:
            raw = result.text
            reply = parse_reply(raw)
            error = rejection_reason(reply, family_of(row["primary_emotion"]), assigned[i], e.max_response_chars)
            if error is None:
                response = {"text": reply["response"], "response_strategy": canonical_strategy(reply["strategy"]) if reply["strategy"] else assigned[i], "emotion_awareness": reply["awareness"]}
        sample = sample or {}
        out["clip_start"].append(sample.get("clip_start"))
        out["clip_end"].append(sample.get("clip_end"))
        out["text_context"].append(sample.get("text_context", []))
        out["target_utterance"].append(sample.get("target_utterance"))
        out["desired_response"].append(response)
        out["empathy_raw"].append(raw)
        out["empathy_error"].append(error)
        out["prompt_version"].append(PROMPT_VERSION)
        out["llm_model"].append(qa.model)
    return out


def _request(row: dict, sample: dict, assigned: str | None, e: EmpathyConfig) -> dict:
    emotion = row["primary_emotion"]
    demos = pick_demos(emotion, assigned, row["segment_id"], e.demos_per_sample)
    messages = render_messages(sample, row.get("gender"), assigned, demos, e.structured_output != "text")
    strategies = (assigned,) if assigned else FAMILIES[family_of(emotion)]
    limits = dict(temperature=e.temperature, max_tokens=e.max_tokens, structured_output=e.structured_output)
    return chat_request(messages, **limits, schema_name="empathetic_response", schema=reply_schema(strategies))
