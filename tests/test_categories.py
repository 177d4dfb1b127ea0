"""Table 1 categories: the offline classifier (sentence embeddings + logistic regression) measured by held-out
folds and on questions it was not trained on, its labelled data file and its errors, and the LLM classifier
on a loopback server."""

import hashlib
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest
from openai_stub import OpenAIStub, Reply

from build.models import categories
from build.models.categories import (
    BATCH,
    CATEGORIES,
    DATA,
    MODES,
    accuracy,
    categorise,
    categorise_question,
    classify,
    cross_validated,
    offline_model,
    parse_reply,
    read_labelled,
    request_for,
)
from build.models.llm import LlmClient

E, S, R, O = CATEGORIES
HELD_OUT = Path(__file__).parent / "data"
# The 48 questions the old keyword rules were written against (they agreed with 44), labelled by Table 1.
TUNED = HELD_OUT / "categories_tuned.jsonl"
# 64 questions written afterwards in other styles (generated-QA phrasing, annotators' short or informal
# questions, imperatives), never trained on; the keyword rules agree with 37 of them.
UNSEEN = HELD_OUT / "categories_unseen.jsonl"
HAND_LABELLED = read_labelled(TUNED)

# The questions issue 17 names, which the keyword rules sent to "other".
ISSUE_QUESTIONS = [
    ("Does the speaker seem at ease?", E),
    ("Is there a note of sarcasm?", R),
    ("Why is the caller's voice trembling?", R),
    ("Which speaker interrupts the other?", S),
]
# Clear cases (none in the training file), among them the questions other tests and the demo depend on.
CLEAR_CASES = [
    ("How does the speaker feel?", E),
    ("What is the speaker's emotional state?", E),
    ("Does the speaker sound angry?", E),
    ("Is the speaker male or female?", S),
    ("How many people speak?", S),
    ("How many speakers take part?", S),
    ("What accent does the speaker have?", S),
    ("Are there two women in the recording?", S),
    ("Why does the speaker sound afraid?", R),
    ("Why does the speaker sound angry?", R),
    ("Why is the speaker so excited?", R),
    ("Is the speaker being sarcastic?", R),
    ("What is the main topic the speaker discusses?", O),
    ("What is the relationship between the speakers?", O),
    ("What is the conversation about?", O),
    ("Where does the speaker live?", O),
]
# Where the shipped classifier disagrees with the hand labels of the held-out files (kept honest: the
# accuracy below counts them). Deterministic: the embeddings are computed on the CPU, lbfgs does not sample.
HELD_OUT_MISSES = {
    TUNED: {"What does the speaker's trembling voice reveal?": R},  # a feeling heard in the voice: emotion
    UNSEEN: {
        "Why is the flight delayed, according to the announcement?": R,  # a reason given in the words: other
        "How does the speaker's disappointment connect to the cancelled trip?": O,
    },
}


def _write(path: Path, rows: list) -> Path:
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the labelled data
def test_training_data_is_large_balanced_and_apart_from_the_held_out_questions():
    rows = read_labelled(DATA)
    counts = {c: sum(1 for _, label in rows if label == c) for c in CATEGORIES}
    assert len(rows) >= 300 and min(counts.values()) >= 50, counts
    assert DATA == Path(categories.__file__).parents[1] / "data" / "categories.jsonl"  # shipped inside build/
    trained_on = {q.lower() for q, _ in rows}
    for path, minimum in ((TUNED, 48), (UNSEEN, 56)):
        held_out = read_labelled(path)
        assert len(held_out) >= minimum and {c for _, c in held_out} == set(CATEGORIES)
        assert not trained_on & {q.lower() for q, _ in held_out}, path
    assert not trained_on & {q.lower() for q, _ in ISSUE_QUESTIONS + CLEAR_CASES}
    assert len({q.lower() for q, _ in read_labelled(TUNED) + read_labelled(UNSEEN)}) == 112


def test_cross_validated_accuracy_meets_the_target_overall_and_per_category():
    rows = read_labelled(DATA)
    predicted = cross_validated(rows)
    assert len(predicted) == len(rows) and set(predicted) <= set(CATEGORIES)
    table = accuracy([c for _, c in rows], predicted)
    correct, total = table["all"]
    assert total == len(rows) and correct / total >= 0.90, table
    for category in CATEGORIES:
        correct, total = table[category]
        assert total >= 50 and correct / total >= 0.85, (category, table)


@pytest.mark.parametrize("path", [TUNED, UNSEEN], ids=["tuned", "unseen"])
def test_held_out_questions_disagree_only_where_pinned(path):
    rows = read_labelled(path)
    predicted = classify([q for q, _ in rows])
    disagreements = {q: p for (q, truth), p in zip(rows, predicted) if p != truth}
    assert disagreements == HELD_OUT_MISSES[path]
    n = len(rows)
    assert accuracy([c for _, c in rows], predicted)["all"] == (n - len(HELD_OUT_MISSES[path]), n)


@pytest.mark.parametrize("question, category", ISSUE_QUESTIONS)
def test_the_questions_of_the_issue(question, category):
    assert categorise_question(question) == category


def test_clear_cases_in_one_call_and_one_by_one():
    questions = [q for q, _ in CLEAR_CASES]
    assert categorise(questions) == [c for _, c in CLEAR_CASES]
    assert [categorise_question(q) for q in questions[:4]] == [c for _, c in CLEAR_CASES[:4]]
    assert categorise([]) == [] and classify([]) == []
    assert categories.classifier() is categories.classifier(DATA)  # trained once per process and file


def test_accuracy_counts_per_category_and_overall():
    table = accuracy([E, E, S, O], [E, R, S, S])
    assert table == {"all": (2, 4), E: (1, 2), S: (1, 1), R: (0, 0), O: (0, 1)}
    with pytest.raises(ValueError):
        accuracy([E], [E, S])


# ---------------------------------------------------------------- the data file's errors
def test_a_missing_data_file_is_an_error_naming_it(tmp_path, monkeypatch):
    missing = tmp_path / "gone" / "categories.jsonl"
    monkeypatch.setattr(categories, "DATA", missing)
    with pytest.raises(ValueError) as raised:
        categorise(["How does the speaker feel?"])
    assert str(raised.value) == f"{missing}: the labelled questions of the offline categoriser are missing"
    with pytest.raises(ValueError, match="are missing"):  # nothing was cached: the next call says it again
        categorise_question("How does the speaker feel?")
    assert offline_model(missing).endswith("trained on categories.jsonl sha256:missing")


GOOD = [{"question": f"{c} question {i}?", "category": c} for c in CATEGORIES for i in range(2)]


@pytest.mark.parametrize(
    "rows, message",
    [
        ([GOOD[0], "", '{"question": "cut off', GOOD[1]],
         ":3: not a JSON object (Unterminated string starting at)"),
        ([GOOD[0], '["How?", "emotion"]'], ":2: not a JSON object (a JSON list)"),
        ([GOOD[0], {"question": "  ", "category": E}], ':2: no "question" text'),
        ([GOOD[0], {"category": E}], ':2: no "question" text'),
        ([{"question": "How?", "category": "feelings"}],
         ":1: category 'feelings' is not one of emotion, speaker, "
         "contextual paralinguistic reasoning, other"),
        ([*GOOD, {"question": " EMOTION question 0? ", "category": O}],
         ":9: the question 'EMOTION question 0?' repeats line 1"),
        ([r for r in GOOD if r["category"] not in (S, O)],
         ": no question labelled 'speaker', 'other'; every category needs some"),
        (["", "  "], ": lists no labelled questions"),
    ],
    ids=["bad-json", "not-an-object", "blank-question", "no-question", "unknown-category", "repeated",
         "missing-category", "empty"],
)
def test_a_damaged_data_file_is_an_error_naming_file_and_line(tmp_path, monkeypatch, rows, message):
    path = _write(tmp_path / "categories.jsonl", rows)
    with pytest.raises(ValueError) as raised:
        read_labelled(path)
    assert str(raised.value) == f"{path}{message}"
    if "no question labelled" in message:  # a held-out file may lack a category; training may not
        assert read_labelled(path, every_category=False) == [(r["question"], r["category"]) for r in rows]
    monkeypatch.setattr(categories, "DATA", path)
    with pytest.raises(ValueError, match="^" + str(path)):
        categorise(["How does the speaker feel?"])


def test_a_data_file_that_is_not_utf8_is_an_error_naming_it(tmp_path):
    path = tmp_path / "categories.jsonl"
    path.write_bytes(b'{"question": "caf\xe9?", "category": "other"}\n')
    with pytest.raises(ValueError, match=f"^{path}: cannot read the labelled questions"):
        read_labelled(path)


def test_another_data_file_trains_its_own_classifier(tmp_path):
    labelled = [
        ("Does she sound happy?", E), ("Is the voice sad?", E), ("Is it a man or a woman?", S),
        ("How many people talk?", S), ("Why is she angry?", R), ("Why does he sound scared?", R),
        ("Which city is named?", O), ("What time is the meeting?", O),
    ]
    rows = [{"question": q, "category": c} for q, c in labelled]
    rows.append({"question": "Are extra keys ignored?", "category": O, "source": "test"})
    path = _write(tmp_path / "mine.jsonl", rows)
    # the training rows are separable: the classifier gives each its own label back
    assert classify([r["question"] for r in rows], path) == [r["category"] for r in rows]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    assert offline_model(path).endswith(f"trained on mine.jsonl sha256:{digest}")
    assert offline_model(path) != offline_model()


# ---------------------------------------------------------------- the evaluate command
def _cells(table: dict) -> str:
    counts = [table[key] for key in ("all", *CATEGORIES)]
    return " | ".join(f"{100 * c / n:.1f} % ({c}/{n})" if n else "-" for c, n in counts)


def test_evaluate_prints_the_accuracy_table(tmp_path):
    training = read_labelled(DATA)
    small = [row for c in CATEGORIES for row in [r for r in training if r[1] == c][:50:10]]  # 5 per category
    data = _write(tmp_path / "small.jsonl", [{"question": q, "category": c} for q, c in small])
    held_out = _write(tmp_path / "held.jsonl", [{"question": q, "category": c} for q, c in ISSUE_QUESTIONS])
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = categories.main(["--evaluate", "--data", str(data), "--heldout", str(held_out),
                                "How many people speak?"])
    assert code == 0, printed.getvalue()
    cv = accuracy([c for _, c in small], cross_validated(small))
    held = accuracy([c for _, c in ISSUE_QUESTIONS], classify([q for q, _ in ISSUE_QUESTIONS], data))
    assert printed.getvalue().splitlines() == [
        "| questions | n | all | emotion | speaker | contextual paralinguistic reasoning | other |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| small.jsonl, 5-fold CV (seed 0) | 20 | {_cells(cv)} |",
        f"| held.jsonl, held out | 4 | {_cells(held)} |",
        f"{classify(['How many people speak?'], data)[0]}\tHow many people speak?",
    ]
    assert held[O] == (0, 0) and _cells(held).endswith(" | -")  # a category without a held-out question


def test_evaluate_refuses_held_out_questions_it_was_trained_on(tmp_path):
    question, category = read_labelled(DATA)[7]
    held_out = _write(tmp_path / "leaky.jsonl", [{"question": question.upper(), "category": category}])
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert categories.main(["--evaluate", "--heldout", str(held_out)]) == 2
    leak = f"{held_out}: 1 question(s) also in the training file {DATA}: {question.upper()!r}"
    assert printed.getvalue() == f"error: {leak}\n"


# ---------------------------------------------------------------- the LLM classifier
def _oracle(request: dict) -> str:
    """A stub LLM that knows the hand labels: it answers each numbered question of the request."""
    truth = dict(HAND_LABELLED)
    user = request["messages"][1]["content"]
    questions = [line.split(". ", 1)[1] for line in user.splitlines() if line[:1].isdigit()]
    return json.dumps({"categories": [truth[q] for q in questions]})


def test_llm_classifier_batches_structured_requests_and_caches(tmp_path):
    questions = [q for q, _ in HAND_LABELLED]
    with OpenAIStub(_oracle) as stub:
        client = LlmClient(stub.base_url, "stub-model", cache_dir=tmp_path / "cache")
        assert categorise(questions, client) == [c for _, c in HAND_LABELLED]
        n_batches = -(-len(questions) // BATCH)
        assert len(stub.requests) == n_batches
        first = stub.requests[0]
        assert first["response_format"]["type"] == "json_schema"
        assert first["response_format"]["json_schema"]["schema"]["properties"]["categories"]["items"]["enum"] == list(CATEGORIES)
        assert "the cause of an emotion" in first["messages"][0]["content"]
        assert categorise(questions, client) == [c for _, c in HAND_LABELLED]
        assert len(stub.requests) == n_batches  # the second pass comes from the cache


def test_a_batch_that_fails_falls_back_to_the_offline_classifier(tmp_path):
    questions = ["What is the main topic the speaker discusses?", "Is the speaker male or female?"]

    def replies(request):
        return Reply(400, "bad request") if "male or female" in request["messages"][1]["content"] else "{}"

    with OpenAIStub(replies) as stub:
        client = LlmClient(stub.base_url, "stub-model", max_retries=0)
        assert categorise(questions, client) == [O, S]
    with OpenAIStub(lambda request: json.dumps({"categories": ["speaker", "speaker"]})) as stub:
        # a reply with the wrong number of labels is not trusted either
        assert categorise(questions[:1], LlmClient(stub.base_url, "stub-model")) == [O]


def test_parse_reply_wants_exactly_n_known_categories():
    assert parse_reply('{"categories": ["emotion", "Other"]}', 2) == [E, O]
    assert parse_reply('Sure: {"categories": ["speaker"]}', 1) == [S]
    assert parse_reply('{"categories": ["emotion"]}', 2) is None
    assert parse_reply('{"categories": ["feelings"]}', 1) is None
    assert parse_reply("emotion", 1) is None
    assert request_for(["a?", "b?"])["response_format"]["json_schema"]["schema"]["properties"]["categories"]["minItems"] == 2


def test_the_llm_categorises_only_with_a_configured_endpoint(monkeypatch):
    from build.core.config import Config
    from build.models.categories import client_for, llm_model

    qa = Config().qa
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert llm_model("auto", qa) is None and client_for("auto", qa, None) is None  # the embedded server never categorises
    with pytest.raises(ValueError, match="categoriser=llm needs an endpoint"):
        client_for("llm", qa, None)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    assert llm_model("auto", qa) == "gpt-4o" and llm_model("llm", qa) == "gpt-4o"
    assert llm_model("embeddings", qa) is None and llm_model("rules", qa) is None  # "rules": the old name
    assert client_for("auto", qa, None).model == "gpt-4o" and client_for("embeddings", qa, None) is None
    with pytest.raises(ValueError, match="must be one of"):
        llm_model("keywords", qa)


def test_preflight_accepts_every_categoriser_mode():
    from build.commands.preflight import check_config
    from build.core.config import Config

    assert MODES == ("auto", "llm", "embeddings", "rules")
    for mode in MODES:
        assert check_config(Config().with_overrides([f"postfilter.categoriser={mode}"])) == []
    assert check_config(Config().with_overrides(["postfilter.categoriser=keywords"])) == [
        "config value postfilter.categoriser = 'keywords' is not one of auto, llm, embeddings, rules: "
        "fix it with --set postfilter.categoriser=... or in --config"
    ]
