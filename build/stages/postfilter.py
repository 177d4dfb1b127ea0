"""Stage 11, post-filter and categories of generated QA pairs.

``explode_pairs`` (batched map, one row per pair): segment rows with ``qa_pairs`` -> ``segment_id``,
``recording_id``, ``pair_index``, ``question``, ``answer``.

``filter_reasons`` (batched map over pair rows): ``question``, ``answer``, ``pair_index`` -> ``drop_reason``
from the first predicate that fires, in this order. First the reply is treated as untrusted input (a
transcript can carry instructions aimed at the LLM):
- "beyond the pairs asked for": ``pair_index`` at or past the number of pairs the prompt asked for;
- "too long": a question over ``max_question_chars`` or an answer over ``max_answer_chars``;
- "repeats the prompt": eight consecutive words of one of our prompts' fixed text (``prompt_fragments``,
  from ``qa.prompt_fragments()``) in the question or the answer (a reply that leaks its instructions);
then the content:
- "empty": question or answer blank (or the answer shorter than ``min_answer_chars``);
- "garbled": fewer than half of the characters are letters, a word repeats five times in a row,
  or the answer only repeats the question;
- "not a question": no question mark of any script at its end (? ？ ؟ Greek ; ፧ ...; Armenian ՞
  anywhere, as it sits on the questioned word; ``prompting.ends_with_question_mark``) and no English
  interrogative or imperative opening ("what", "is", "describe", ...). A language that writes
  questions without a mark (Thai, Lao, Burmese, Tibetan) has no such sign, so its questions are
  dropped here unless they open with an English interrogative;
- "presupposes a transcript": the question names a transcript, text, caption... (a listener has audio only).

``mark_duplicates`` (batched map over pair rows; call it with ``batch_size=None`` so that no segment
is split across batches): a question whose
sentence-embedding cosine similarity to an earlier surviving question of the same segment reaches the
threshold is a "near-duplicate question". Only pairs of one segment are compared: the same question
asked of two different clips is a benchmark feature, not a duplicate.

``categorise`` (batched map): ``question`` -> ``category``, one of the paper's Table 1 categories
(``build.models.categories``: an LLM with the definitions when a client is given, its rules otherwise).
"""

from __future__ import annotations

import re

from ..core.config import PostFilterConfig
from ..core.devices import device_for
from ..models.categories import categorise as categorise_questions
from ..models.categories import has_words as _has
from ..models.embeddings import embed
from ..models.llm import LlmClient
from ..models.prompting import ARMENIAN_QUESTION_MARK, FRAGMENT_WORDS, ends_with_question_mark

EXTRA_PAIR = "beyond the pairs asked for"
TOO_LONG = "too long"
LEAKS_PROMPT = "repeats the prompt"

# the content reasons, in the order the predicates fire after the untrusted-reply ones above
EMPTY = "empty"
GARBLED = "garbled"
NOT_A_QUESTION = "not a question"
PRESUPPOSES_TRANSCRIPT = "presupposes a transcript"
NEAR_DUPLICATE = "near-duplicate question"
REASONS = (EXTRA_PAIR, TOO_LONG, LEAKS_PROMPT, EMPTY, GARBLED, NOT_A_QUESTION, PRESUPPOSES_TRANSCRIPT, NEAR_DUPLICATE)


_QUESTION_OPENINGS = (
    r"what|who|whom|whose|why|how|when|where|which|is|are|was|were|does|do|did|can|could|would|will|"
    r"should|has|have|had|describe|name|identify|list|explain|tell|compare|summari[sz]e|give|state"
)


def transcript_pattern(words: list[str]) -> str:
    return "|".join(re.escape(w) + "s?" for w in words)


def pair_drop_reason(question: str | None, answer: str | None, transcript_words: list[str], min_answer_chars: int) -> str | None:
    question, answer = (question or "").strip(), (answer or "").strip()
    if not question or len(answer) < max(1, min_answer_chars):
        return EMPTY
    if _garbled(question) or _garbled(answer) or _normal(answer) == _normal(question):
        return GARBLED
    if not is_question(question):
        return NOT_A_QUESTION
    if _has(transcript_pattern(transcript_words), question):
        return PRESUPPOSES_TRANSCRIPT
    return None


def is_question(text: str) -> bool:
    """A question mark of any script at the end (Armenian's anywhere), or an English question opening."""
    if ends_with_question_mark(text) or ARMENIAN_QUESTION_MARK in text:
        return True
    return _has(_QUESTION_OPENINGS, text.split()[0])


def _garbled(text: str) -> bool:
    visible = [c for c in text if not c.isspace()]
    letters = sum(c.isalpha() for c in visible)
    if visible and letters / len(visible) < 0.5:
        return True
    return re.search(r"\b(\w+)(?:\W+\1\b){4,}", text, flags=re.IGNORECASE) is not None


def _normal(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def explode_pairs(batch: dict[str, list]) -> dict[str, list]:
    out = {"segment_id": [], "recording_id": [], "pair_index": [], "question": [], "answer": []}
    for sid, rid, pairs in zip(batch["segment_id"], batch["recording_id"], batch["qa_pairs"]):
        for index, pair in enumerate(pairs or []):
            out["segment_id"].append(sid)
            out["recording_id"].append(rid)
            out["pair_index"].append(index)
            out["question"].append(pair["question"])
            out["answer"].append(pair["answer"])
    return out


def filter_reasons(
    batch: dict[str, list], pf: PostFilterConfig, *, max_pairs: int, prompt_fragments: frozenset[str]
) -> dict[str, list]:
    """Why each pair is dropped (or None), before the duplicate check: untrusted replies, then the rules."""
    limits = dict(max_question_chars=pf.max_question_chars, max_answer_chars=pf.max_answer_chars)
    limits |= dict(max_pairs=max_pairs, prompt_fragments=prompt_fragments)
    words, min_chars = list(pf.transcript_words), pf.min_answer_chars
    rows = zip(batch["question"], batch["answer"], batch["pair_index"])
    return {"drop_reason": [untrusted_reason(q, a, i, **limits) or pair_drop_reason(q, a, words, min_chars) for q, a, i in rows]}


def untrusted_reason(
    question: str | None, answer: str | None, pair_index: int, *, max_question_chars: int, max_answer_chars: int, max_pairs: int, prompt_fragments: frozenset[str]
) -> str | None:
    """Why an LLM-written pair cannot be trusted as it is, or None."""
    question, answer = (question or "").strip(), (answer or "").strip()
    if pair_index >= max_pairs:
        return EXTRA_PAIR
    if len(question) > max_question_chars or len(answer) > max_answer_chars:
        return TOO_LONG
    for text in (question, answer):
        words = _normal(text).split()
        if any(" ".join(words[i : i + FRAGMENT_WORDS]) in prompt_fragments for i in range(len(words) - FRAGMENT_WORDS + 1)):
            return LEAKS_PROMPT
    return None


def categorise(batch: dict[str, list], client: LlmClient | None = None) -> dict[str, list]:
    return {"category": categorise_questions(batch["question"], client)}


def duplicate_flags(segment_ids: list[str], vectors, threshold: float) -> list[bool]:
    """True for a question too similar to an earlier kept question of the same segment."""
    flags = []
    kept: dict[str, list[int]] = {}
    for i, sid in enumerate(segment_ids):
        earlier = kept.setdefault(sid, [])
        duplicate = any(float(vectors[i] @ vectors[j]) >= threshold for j in earlier)
        flags.append(duplicate)
        if not duplicate:
            earlier.append(i)
    return flags


def mark_duplicates(batch: dict[str, list], pf: PostFilterConfig, rank: int | None = None, device: str = "auto") -> dict[str, list]:
    """``drop_reason`` with the near-duplicates of a clip's earlier questions marked
    (``pf.embedding_model`` cosine at or above ``pf.duplicate_threshold``)."""
    reasons = list(batch["drop_reason"])
    alive = [i for i, r in enumerate(reasons) if r is None]
    if alive:
        vectors = embed([batch["question"][i] for i in alive], pf.embedding_model, device_for(rank, device))
        flags = duplicate_flags([batch["segment_id"][i] for i in alive], vectors, pf.duplicate_threshold)
        for i, flag in zip(alive, flags):
            if flag:
                reasons[i] = NEAR_DUPLICATE
    return {"drop_reason": reasons}
