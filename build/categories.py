"""The paper's Table 1 categories of a QA pair, decided from its question.

    categorise(questions, client=None) -> list[str]     one of ``CATEGORIES`` per question

Definitions (the paper's Table 1):
- "emotion": the speaker's emotional state or feelings (what they feel, how the voice sounds);
- "speaker": the gender, number or identity of the speakers;
- "contextual paralinguistic reasoning": the causes of an emotion (why the speaker feels so);
- "other": everything else: the content, topics, events, and relations between the speakers.

With a client (``build.llm.LlmClient``, the QA endpoint) an LLM reads these definitions and labels
the questions in batches of ``BATCH`` with structured output (a JSON list of categories, one per
question); replies are cached by the client. A batch whose reply does not parse into exactly one
known category per question falls back to the rules for that batch (counted in a warning; a build counts
the failed calls and redoes that post-filter shard on its next run).

Without a client, rules decide, checked in this order:
1. "contextual paralinguistic reasoning": an emotion word together with a cause word
   ("why", "cause", "reason", "made", "led to", "explain", ...);
2. "emotion": an emotion or feeling word ("feel", "mood", "tone", "emotion", "happy", ...);
3. "speaker": gender words, questions of number ("how many speakers", "more than one voice") and of
   identity ("who is speaking", "the same person");
4. "other": everything else. The word "speaker" alone decides nothing (most questions name the
   speaker), and "indicate"/"suggest" are not causes ("What emotion does the voice indicate?" asks
   for the emotion).
"""

from __future__ import annotations

import json
import logging
import re

from .llm import LlmClient
from .llm_server import resolve_endpoint
from .prompting import json_schema_format

log = logging.getLogger("cpqa.categories")

EMOTION = "emotion"
SPEAKER = "speaker"
REASONING = "contextual paralinguistic reasoning"
OTHER = "other"
CATEGORIES = (EMOTION, SPEAKER, REASONING, OTHER)
BATCH = 20  # questions per LLM request
MODES = ("auto", "llm", "rules")  # postfilter.categoriser: auto = the LLM when an endpoint is configured

_EMOTION_WORDS = (
    r"emotion\w*|feel\w*|felt|mood\w*|tone|attitude|sentiment|valence|arousal|"
    r"angry|anger|annoyed|annoyance|frustrat\w*|irritat\w*|furious|disgust\w*|fear\w*|afraid|scared|anxious|anxiety|"
    r"nervous\w*|worr\w*|happy|happiness|joy\w*|cheerful\w*|delight\w*|excite\w*|enthusias\w*|sad|sadness|upset\w*|"
    r"unhappy|disappoint\w*|surpris\w*|shock\w*|astonish\w*|neutral|calm\w*|amused|amusement|bored|boredom|"
    r"relie\w*|stress\w*|emotional\w*"
)
_CAUSE_WORDS = (
    r"why|reasons?|caus\w*|because|due to|made|makes?|led|lead|leads|trigger\w*|prompt\w*|source|"
    r"explain\w*|account for|behind"
)
_SPEAKER_WORDS = (
    r"gender|male|female|man|men|woman|women|boy|girl|masculine|feminine|"
    r"how many (?:\w+ )?(?:people|persons|speakers|voices|individuals)|number of (?:\w+ )?(?:speakers|people|voices)|"
    r"more than one (?:speaker|person|voice)|(?:a )?single (?:speaker|person|voice)|multiple (?:speakers|voices)|"
    r"several (?:speakers|voices)|same (?:speaker|person|voice)|different (?:speakers|voices|people)|"
    r"who (?:is|was) (?:speaking|talking)|who speaks|identity|identify the speaker|"
    r"change of speakers?|speakers? changes?|switch(?:es)? speakers?"
)


def has_words(alternatives: str, text: str) -> bool:
    """True when one of the regex ``alternatives`` occurs in ``text`` as whole words (any case)."""
    return re.search(r"\b(?:" + alternatives + r")\b", text, flags=re.IGNORECASE) is not None


def categorise_question(question: str) -> str:
    """The rules' category of one question."""
    emotional = has_words(_EMOTION_WORDS, question)
    if emotional and has_words(_CAUSE_WORDS, question):
        return REASONING
    if emotional:
        return EMOTION
    if has_words(_SPEAKER_WORDS, question):
        return SPEAKER
    return OTHER


# ---------------------------------------------------------------- LLM classifier
SYSTEM = """You sort questions about a speech recording into four categories. Each question is asked of someone who only hears the audio.

- "emotion": the question asks about the speaker's emotional state or feelings: which emotion the voice carries, how the speaker feels, whether the mood changes.
- "speaker": the question asks about the speakers themselves: their gender, how many people speak, or who is speaking.
- "contextual paralinguistic reasoning": the question asks about the cause of an emotion: why the speaker feels the way they do, what in the situation or the words brings the feeling about.
- "other": everything else: what is said, the topic, facts and events mentioned, and the relations between the speakers.

Give exactly one category per question, in the order the questions are numbered."""


def request_for(questions: list[str]) -> dict:
    """One structured-output request that labels ``questions``."""
    numbered = "\n".join(f"{i}. {q.strip()}" for i, q in enumerate(questions, 1))
    schema = {
        "type": "object",
        "properties": {
            "categories": {"type": "array", "items": {"type": "string", "enum": list(CATEGORIES)}, "minItems": len(questions), "maxItems": len(questions)}
        },
        "required": ["categories"],
        "additionalProperties": False,
    }
    user = f"Questions:\n{numbered}\n\nReply with JSON only: an object whose \"categories\" list holds {len(questions)} categories, one per question, in order."
    return {
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "temperature": 0.0,
        "max_tokens": 40 + 16 * len(questions),
        "response_format": json_schema_format("qa_categories", schema),
        "fallback_to_text": True,
    }


def parse_reply(text: str | None, n: int) -> list[str] | None:
    """The ``n`` categories of a reply, or None when it does not hold exactly n known ones."""
    if not text:
        return None
    match = re.search(r"\{.*\}", text, flags=re.S)
    try:
        data = json.loads(match.group(0) if match else text)
    except json.JSONDecodeError:
        return None
    labels = data.get("categories") if isinstance(data, dict) else data
    if not isinstance(labels, list) or len(labels) != n:
        return None
    labels = [str(label).strip().lower() for label in labels]
    return labels if all(label in CATEGORIES for label in labels) else None


def categorise(questions: list[str], client: LlmClient | None = None) -> list[str]:
    """One category per question: the LLM's with a client, the rules' without (or where a reply fails)."""
    if client is None or not questions:
        return [categorise_question(q) for q in questions]
    batches = [questions[lo : lo + BATCH] for lo in range(0, len(questions), BATCH)]
    results = client.complete_many([request_for(batch) for batch in batches])
    out: list[str] = []
    failed = 0
    for batch, result in zip(batches, results):
        labels = parse_reply(result.text, len(batch)) if result.error is None else None
        if labels is None:
            failed += 1
            labels = [categorise_question(q) for q in batch]
        out += labels
    if failed:
        log.warning("%d of %d category requests failed or did not parse; the rules labelled those questions", failed, len(batches))
    return out


def llm_model(mode: str, qa_config) -> str | None:
    """The model that categorises under ``mode`` (None: the rules); the embedded server never does."""
    if mode not in MODES:
        raise ValueError(f"postfilter.categoriser must be one of {MODES}, got {mode!r}")
    base_url, model = resolve_endpoint(qa_config)
    return model if mode != "rules" and base_url is not None else None


def client_for(mode: str, qa_config, cache_dir: str | None) -> LlmClient | None:
    """The QA endpoint's client when ``mode`` and the environment call for the LLM, else None."""
    model = llm_model(mode, qa_config)
    if model is None:
        if mode == "llm":  # the preflight says so before a build starts
            raise ValueError("postfilter.categoriser=llm needs an endpoint: set qa.base_url or OPENAI_BASE_URL")
        return None
    base_url, _ = resolve_endpoint(qa_config)
    q = qa_config
    return LlmClient(base_url, model, q.api_key_env, cache_dir, q.concurrency, q.max_retries, q.timeout_s)
