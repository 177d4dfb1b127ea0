"""The paper's Table 1 categories of a QA pair, decided from its question.

    categorise(questions, client=None) -> list[str]     one of ``CATEGORIES`` per question
    .venv/bin/python -m build.models.categories --evaluate      accuracy of the offline classifier (held-out folds)

Definitions (the paper's Table 1), with the edges the labelled questions follow:
- "emotion": the speaker's emotional state or feelings: which emotion the voice carries, how strong,
  whether it changes, whether the speaker is at ease, the attitude the tone shows;
- "speaker": who speaks: gender, age, accent and voice, how many people speak, whether it is the
  same person, and the turns (who speaks first, most or last, who interrupts whom);
- "contextual paralinguistic reasoning": the voice read together with what is said: the causes of an
  emotion (why the speaker feels so, why the voice trembles), what the tone implies about the words
  (sarcasm, irony, sincerity, doubt), what a hesitation or a sigh suggests;
- "other": everything else: the content, topics, facts and events, reasons given in the words
  ("Why does the speaker mention the budget?"), and the relations between the speakers.

With a client (``build.models.llm.LlmClient``, the QA endpoint) an LLM reads the definitions (``SYSTEM``) and labels
the questions in batches of ``BATCH`` with structured output (a JSON list of categories, one per
question); replies are cached by the client. A batch whose reply does not parse into exactly one
known category per question falls back to the offline classifier for that batch (counted in a
warning; a build counts the failed calls and redoes that post-filter shard on its next run).

Without a client, the offline classifier decides: a logistic regression (scikit-learn, ``C``) over
the bundled sentence embedding of the question (``build.models.embeddings``, all-MiniLM-L6-v2) beside the
tf-idf of its words and word pairs (scaled by ``WORD_WEIGHT``: the embedding carries the meaning,
the words the cues it blurs, such as "speakers" in "How many speakers take part?"), trained on the
labelled questions of ``DATA`` (``build/data/categories.jsonl``: one ``{"question", "category"}``
object per line, written for this project) the first time a process needs it and kept for the
rest of the process. A missing or damaged file is a ``ValueError`` naming the file (and line).
Its accuracy is measured by stratified ``FOLDS``-fold cross-validation (seed ``SEED``) and on
held-out questions (``tests/data/categories_*.jsonl``) that are not in the training set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from ..core.errors import json_object
from .embeddings import BUNDLED, embed
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
# postfilter.categoriser: auto = the LLM when an endpoint is configured, else the offline classifier;
# "rules" is the old name of the offline classifier (the keyword rules it replaced), kept for old configs.
MODES = ("auto", "llm", "embeddings", "rules")
LLM_MODES = ("auto", "llm")
DATA = Path(__file__).resolve().parents[1] / "data" / "categories.jsonl"  # build/data
EMBEDDING_MODEL = BUNDLED
C = 10.0  # inverse regularisation strength of the logistic regression
FOLDS = 5
SEED = 0
WORD_WEIGHT = 0.5  # scale of the word tf-idf columns beside the unit-length embedding
_TRAINED: dict[Path, "Classifier"] = {}
_TRAINED_LOCK = threading.Lock()


def has_words(alternatives: str, text: str) -> bool:
    """True when one of the regex ``alternatives`` occurs in ``text`` as whole words (any case)."""
    return re.search(r"\b(?:" + alternatives + r")\b", text, flags=re.IGNORECASE) is not None


# ---------------------------------------------------------------- offline classifier
def read_labelled(path: Path, every_category: bool = True) -> list[tuple[str, str]]:
    """The (question, category) rows of a JSONL file of ``{"question": ..., "category": ...}`` objects.

    Blank lines are skipped and other keys ignored. A missing, unreadable or empty file, a line that is
    not such an object, an empty question, an unknown category, a question repeated (any case), or
    (with ``every_category``, as training needs) a category without a single question is a
    ``ValueError`` naming the file (and the line)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ValueError(f"{path}: the labelled questions of the offline categoriser are missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the labelled questions ({exc})") from exc
    rows: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    for n, line in enumerate(lines, 1):
        if line.strip():
            question, category = _labelled_row(line, f"{path}:{n}")
            if question.lower() in seen:
                first = seen[question.lower()]
                raise ValueError(f"{path}:{n}: the question {question!r} repeats line {first}")
            seen[question.lower()] = n
            rows.append((question, category))
    if not rows:
        raise ValueError(f"{path}: lists no labelled questions")
    missing = [c for c in CATEGORIES if c not in {category for _, category in rows}]
    if missing and every_category:
        named = ", ".join(repr(c) for c in missing)
        raise ValueError(f"{path}: no question labelled {named}; every category needs some")
    return rows


def _labelled_row(line: str, where: str) -> tuple[str, str]:
    record = json_object(line, where)
    question, category = record.get("question"), record.get("category")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: no \"question\" text")
    if category not in CATEGORIES:
        raise ValueError(f"{where}: category {category!r} is not one of {', '.join(CATEGORIES)}")
    return question.strip(), category


@dataclass(frozen=True)
class Classifier:
    """A logistic regression over a question's sentence embedding and its word uni- and bigrams."""

    words: TfidfVectorizer
    model: LogisticRegression

    def features(self, questions: list[str], vectors) -> sparse.csr_matrix:
        """Embedding columns, then tf-idf columns of the words scaled by ``WORD_WEIGHT``."""
        words = WORD_WEIGHT * self.words.transform(questions)
        return sparse.hstack([sparse.csr_matrix(vectors), words]).tocsr()

    def predict(self, questions: list[str], vectors) -> list[str]:
        return [str(label) for label in self.model.predict(self.features(questions, vectors))]


def fit(questions: list[str], vectors, labels: list[str]) -> Classifier:
    """Train on ``questions`` with their embeddings ``vectors`` (deterministic: lbfgs, no sampling)."""
    words = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit(questions)
    model = LogisticRegression(C=C, max_iter=2000, random_state=SEED)
    trained = Classifier(words, model)
    model.fit(trained.features(questions, vectors), list(labels))
    return trained


def classifier(data: Path | None = None) -> Classifier:
    """The classifier trained on ``data`` (default ``DATA``), trained once per process and file.

    Kept in this module's own cache: training loads the embedder through ``build.core.devices.cached``,
    whose lock is held while a loader runs, so the classifier cannot be one of its loaders."""
    path = Path(data or DATA)
    with _TRAINED_LOCK:
        if path not in _TRAINED:
            questions, labels = zip(*read_labelled(path))
            _TRAINED[path] = fit(list(questions), embed(list(questions), EMBEDDING_MODEL), list(labels))
        return _TRAINED[path]


def classify(questions: list[str], data: Path | None = None) -> list[str]:
    """The offline classifier's category of each question (None is read as an empty question)."""
    if not questions:
        return []
    trained = classifier(data)
    texts = [q or "" for q in questions]
    return trained.predict(texts, embed(texts, EMBEDDING_MODEL))


def categorise_question(question: str) -> str:
    """The offline classifier's category of one question."""
    return classify([question])[0]


def offline_model(data: Path | None = None) -> str:
    """What the offline classifier is, for provenance and fingerprints: embeddings, method and data hash."""
    path = Path(data or DATA)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12] if path.is_file() else "missing"
    method = f"logistic regression C={C:g} over embeddings + {WORD_WEIGHT:g} x word 1-2-gram tf-idf"
    return f"{EMBEDDING_MODEL}:all-MiniLM-L6-v2, {method}, trained on {path.name} sha256:{digest}"


def cross_validated(rows: list[tuple[str, str]], folds: int = FOLDS, seed: int = SEED) -> list[str]:
    """Each row's category as predicted by a classifier trained on the other folds (stratified, shuffled)."""
    questions = [q for q, _ in rows]
    vectors = embed(questions, EMBEDDING_MODEL)
    labels = np.array([c for _, c in rows], dtype=object)
    predicted = np.empty(len(rows), dtype=object)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(vectors, labels):
        trained = fit([questions[i] for i in train], vectors[train], list(labels[train]))
        predicted[test] = trained.predict([questions[i] for i in test], vectors[test])
    return [str(label) for label in predicted]


def accuracy(truth: list[str], predicted: list[str]) -> dict[str, tuple[int, int]]:
    """(correct, total) per category of ``truth`` and over all rows (key ``"all"``)."""
    table = {key: (0, 0) for key in ("all", *CATEGORIES)}
    for want, got in zip(truth, predicted, strict=True):
        for key in ("all", want):
            correct, total = table[key]
            table[key] = (correct + (want == got), total + 1)
    return table


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
    """One category per question: the LLM's with a client, else (or where a reply fails) the offline one's."""
    if client is None or not questions:
        return classify(questions)
    batches = [questions[lo : lo + BATCH] for lo in range(0, len(questions), BATCH)]
    results = client.complete_many([request_for(batch) for batch in batches])
    out: list[str] = []
    failed = 0
    for batch, result in zip(batches, results):
        labels = parse_reply(result.text, len(batch)) if result.error is None else None
        if labels is None:
            failed += 1
            labels = classify(batch)
        out += labels
    if failed:
        log.warning(
            "%d of %d category requests failed or did not parse; the offline classifier labelled them",
            failed, len(batches),
        )
    return out


def llm_model(mode: str, qa_config) -> str | None:
    """The LLM that categorises under ``mode`` (None: the offline classifier); never the embedded server."""
    if mode not in MODES:
        raise ValueError(f"postfilter.categoriser must be one of {MODES}, got {mode!r}")
    base_url, model = resolve_endpoint(qa_config)
    return model if mode in LLM_MODES and base_url is not None else None


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


# ---------------------------------------------------------------- evaluation
def evaluation_table(data: Path | None = None, heldout: tuple[Path, ...] = ()) -> str:
    """A markdown table of the offline classifier's accuracy: cross-validated on ``data``, then on each
    held-out file (trained on all of ``data``); a held-out question that is also in ``data`` is an error."""
    path = Path(data or DATA)
    rows = read_labelled(path)
    training = {q.lower() for q, _ in rows}
    tests = {Path(other): read_labelled(Path(other), every_category=False) for other in heldout}
    for other, test in tests.items():
        leaked = [q for q, _ in test if q.lower() in training]
        if leaked:
            count, example = len(leaked), leaked[0]
            raise ValueError(f"{other}: {count} question(s) also in the training file {path}: {example!r}")
    lines = ["| questions | n | all | " + " | ".join(CATEGORIES) + " |"]
    lines.append("|---|---:|---:|" + "---:|" * len(CATEGORIES))
    cv = accuracy([c for _, c in rows], cross_validated(rows))
    lines.append(_table_row(f"{path.name}, {FOLDS}-fold CV (seed {SEED})", cv))
    for other, test in tests.items():
        predicted = classify([q for q, _ in test], path)
        lines.append(_table_row(f"{other.name}, held out", accuracy([c for _, c in test], predicted)))
    return "\n".join(lines)


def _table_row(name: str, table: dict[str, tuple[int, int]]) -> str:
    counts = [table[key] for key in ("all", *CATEGORIES)]
    cells = [f"{100 * c / n:.1f} % ({c}/{n})" if n else "-" for c, n in counts]
    return f"| {name} | {table['all'][1]} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m build.models.categories", description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--evaluate", action="store_true", help="print its accuracy by held-out folds and on --heldout")
    add("--data", type=Path, default=DATA, help="labelled questions to train on (%(default)s)")
    add("--heldout", type=Path, action="append", default=[], help="labelled questions not trained on")
    add("questions", nargs="*", help="questions to categorise")
    args = parser.parse_args(argv)
    try:
        if args.evaluate:
            print(evaluation_table(args.data, tuple(args.heldout)))
        for question, category in zip(args.questions, classify(args.questions, args.data)):
            print(f"{category}\t{question}")
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
