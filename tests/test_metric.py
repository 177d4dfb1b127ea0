"""The CPQA evaluate metric: loading, the doctest, judges over a loopback server, score arithmetic,
30 s windows, audio inputs, and a tiny Qwen2-Audio built offline answering real audio."""

import doctest
import importlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import AMI, REPO, ravdess_recording
from openai_stub import OpenAIStub, Reply

METRIC_DIR = REPO / "metrics" / "cpqa"
SR = 16_000


@pytest.fixture(scope="module")
def metric():
    import evaluate

    return evaluate.load(str(METRIC_DIR), keep_in_memory=True)


@pytest.fixture(scope="module")
def modules(metric):
    """The metric's module and its siblings, as evaluate imported them."""
    package = importlib.import_module(type(metric).__module__).__package__
    return {name: importlib.import_module(f"{package}.{name}") for name in ("cpqa", "judge", "scores", "speech_llm", "report", "llm_client")}


def model_answer(request: dict) -> str:
    """The model answer the judge was asked to grade, cut out of the rendered prompt."""
    content = request["messages"][-1]["content"]
    return content.split("<answer>\n", 1)[1].split("\n</answer>", 1)[0]


def is_paralinguistic(request: dict, judge_module) -> bool:
    return judge_module.PROMPTS["paralinguistic"] in request["messages"][-1]["content"]


def rated(n: int) -> str:
    return f"Explanation: compared with the reference.\nRating: {n}"


# --- loading and the doctest ---------------------------------------------------------------------


def test_metrics_never_import_the_build_package():
    for path in METRIC_DIR.glob("*.py"):
        for line in path.read_text().splitlines():
            assert not line.lstrip().startswith(("import build", "from build")), f"{path.name}: {line}"


def test_evaluate_loads_the_metric_by_relative_and_absolute_path_from_another_cwd(tmp_path, monkeypatch):
    import evaluate

    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(METRIC_DIR, tmp_path)
    for path in (relative, str(METRIC_DIR)):
        loaded = evaluate.load(path, keep_in_memory=True)
        assert loaded.name == "cpqa"
        folder = Path(importlib.import_module(type(loaded).__module__).__file__).parent
        # evaluate copies the direct sibling imports next to the script it imports
        assert {"judge.py", "scores.py", "speech_llm.py", "report.py"} <= {p.name for p in folder.glob("*.py")}
        assert "Interspeech 2025" in loaded.citation and loaded.description


def test_evaluate_loads_the_metric_from_the_repository_root(monkeypatch):
    import evaluate

    monkeypatch.chdir(REPO)
    assert evaluate.load("metrics/cpqa", keep_in_memory=True).name == "cpqa"


def test_the_doctests_run(modules, monkeypatch):
    monkeypatch.chdir(REPO)  # the example loads "metrics/cpqa" from the repository root
    for name, module in modules.items():
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, name
    assert doctest.testmod(modules["cpqa"]).attempted >= 6  # the _KWARGS_DESCRIPTION example itself


def test_metric_card_has_the_evaluate_yaml_header():
    card = (METRIC_DIR / "README.md").read_text()
    header = card.split("---")[1]
    assert "title: CPQA" in header and "- metric" in header
    assert "## How to Use" in card and "## Citation" in card


def test_metric_card_states_what_the_code_does(modules):
    import re

    card = " ".join((METRIC_DIR / "README.md").read_text().split())
    judge = modules["judge"]
    assert re.findall(r'"prompt_version": "([^"]+)"', card) == [judge.PROMPT_VERSION]
    # the verdict: lines starting with "Rating"; two different ratings fail (not "the last line wins")
    assert judge.parse_rating("Rating: 5\nRating: 1")[0] is None
    assert "two different ratings, or a rating outside the integers 0–5, make the judgement a failure" in card
    assert "the last such line is parsed" not in card
    # window names follow window_seconds
    first, last = modules["speech_llm"].window_names(10)
    assert f"`{first}`, `{last}`" in card


# --- judges and score arithmetic -----------------------------------------------------------------


QUESTIONS = ["How does the speaker feel?", "Is the speaker male or female?", "Who speaks after the pause?"]
REFERENCES = ["Angry.", "Female.", "A second, calmer speaker."]
CATEGORIES = ["emotion", "emotion", "speaker"]
PREDICTIONS = ["answer five", "answer three", "answer broken"]


def judge_a(modules):
    """audiobench: 5, 3, malformed body; paralinguistic: 5, 5, malformed body."""

    def respond(request):
        answer = model_answer(request)
        if answer == "answer broken":
            return Reply(200, raw="this is not json")
        if answer == "answer three" and not is_paralinguistic(request, modules["judge"]):
            return rated(3)
        return rated(5)

    return respond


def judge_b(request):
    """Both prompts: 4, HTTP 500 (after its retry), a reply without a rating."""
    answer = model_answer(request)
    if answer == "answer five":
        return "Explanation: mostly right.\n**Rating:** [4]"
    if answer == "answer three":
        return Reply(500, "overloaded")
    return "I think it deserves a four."


def test_scores_per_judge_prompt_category_and_both_failure_conventions(metric, modules):
    with OpenAIStub(judge_a(modules)) as a, OpenAIStub(judge_b) as b:
        results = metric.compute(
            questions=QUESTIONS,
            references=REFERENCES,
            predictions=PREDICTIONS,
            categories=CATEGORIES,
            judges=[
                {"name": "judge-a", "model": "model-a", "base_url": a.base_url, "max_retries": 0},
                {"name": "judge-b", "model": "model-b", "base_url": b.base_url, "max_retries": 1},
            ],
        )
        requests_b = list(b.requests)

    by = results["judges"]
    a_audiobench = by["judge-a"]["audiobench"]
    assert a_audiobench["score"] == pytest.approx((5 + 3 + 0) / 3 * 20)  # 53.33: failure counted as 0
    assert a_audiobench["score_successful"] == pytest.approx((5 + 3) / 2 * 20)  # 80.0
    assert a_audiobench["success_rate"] == pytest.approx(2 / 3)
    assert (a_audiobench["n"], a_audiobench["n_judged"]) == (3, 2)
    # without clip ids every question is its own clip; two emotion clips scoring 100 and 60 resample to
    # 60, 80 or 100 with chances 1/4, 1/2, 1/4, so the 2.5 and 97.5 percentiles of 1000 draws are 60 and 100
    interval = {"ci95": [60.0, 100.0], "ci95_successful": [60.0, 100.0]}
    assert a_audiobench["by_category"]["emotion"] == {"score": 80.0, "score_successful": 80.0, "success_rate": 1.0, "n": 2, "n_judged": 2, **interval}
    assert a_audiobench["by_category"]["speaker"] == {
        "score": 0.0, "score_successful": None, "success_rate": 0.0, "n": 1, "n_judged": 0, "ci95": [0.0, 0.0], "ci95_successful": None
    }

    a_para = by["judge-a"]["paralinguistic"]
    assert (a_para["score"], a_para["score_successful"]) == (pytest.approx(200 / 3), 100.0)
    for prompt in ("audiobench", "paralinguistic"):
        b_summary = by["judge-b"][prompt]
        assert (b_summary["score"], b_summary["score_successful"]) == (pytest.approx(80 / 3), 80.0)
        assert b_summary["success_rate"] == pytest.approx(1 / 3)

    assert results["score"] == pytest.approx((160 / 3 + 200 / 3 + 80 / 3 + 80 / 3) / 4)
    assert results["score_successful"] == pytest.approx((80 + 100 + 80 + 80) / 4)
    assert results["success_rate"] == pytest.approx(6 / 12)

    items = results["items"]
    assert items[0]["judgements"]["judge-b"]["audiobench"]["raw"] == "Explanation: mostly right.\n**Rating:** [4]"
    assert items[1]["judgements"]["judge-b"]["audiobench"]["error"] == "HTTP 500: overloaded (after 2 attempts)"
    assert items[2]["judgements"]["judge-a"]["audiobench"]["error"].startswith("the server's reply is not a JSON chat completion: ")
    unparsed = items[2]["judgements"]["judge-b"]["paralinguistic"]
    assert unparsed["rating"] is None and unparsed["raw"] == "I think it deserves a four."
    assert unparsed["error"] == 'no "Rating: N" line in the reply'
    # bounded retries: the 500 is asked twice per prompt (max_retries=1), the others once
    asked = [model_answer(r) for r in requests_b]
    assert asked.count("answer three") == 4 and asked.count("answer five") == 2
    assert all(r["temperature"] == 0 for r in requests_b)
    assert [j["name"] for j in results["config"]["judges"]] == ["judge-a", "judge-b"]
    calls_b = results["judge_calls"]["judge-b"]
    assert {k: calls_b[k] for k in ("requests", "cached", "sent", "attempts", "retried", "failed")} == {
        "requests": 6, "cached": 0, "sent": 6, "attempts": 8, "retried": 2, "failed": 2,
    }  # fmt: skip
    assert (calls_b["retry_reasons"], calls_b["failure_reasons"]) == ({"HTTP 500": 2}, {"HTTP 500": 2})
    assert calls_b["summary"] == "6 requests: 0 from cache, 6 sent in 8 attempts; 2 retried (HTTP 500 ×2); 2 failed (HTTP 500 ×2)"


def test_api_key_comes_from_the_environment_and_is_never_returned(metric, monkeypatch):
    secret = "sk-test-not-a-real-key-0123456789"
    monkeypatch.setenv("CPQA_TEST_JUDGE_KEY", secret)
    with OpenAIStub(lambda request: rated(4)) as stub:
        judge = {"model": "m", "base_url": stub.base_url, "api_key_env": "CPQA_TEST_JUDGE_KEY"}
        results = metric.compute(questions=QUESTIONS[:1], references=REFERENCES[:1], predictions=["x"], judges=[judge])
    assert results["score"] == 80.0
    assert secret not in json.dumps(results, default=str)

    monkeypatch.delenv("CPQA_TEST_JUDGE_KEY")
    with pytest.raises(ValueError, match="CPQA_TEST_JUDGE_KEY is not set"):
        metric.compute(questions=QUESTIONS[:1], references=REFERENCES[:1], predictions=["x"], judges=[judge])


def test_judge_replies_are_cached_on_disk_and_errors_are_not(metric, modules, tmp_path):
    cache = tmp_path / "judge-cache"
    kwargs = dict(questions=QUESTIONS[:2], references=REFERENCES[:2], predictions=["one", "two"], prompts=["audiobench"], cache_dir=str(cache))
    with OpenAIStub(lambda r: rated(2) if model_answer(r) == "one" else Reply(503, "busy")) as stub:
        first = metric.compute(judges=[{"model": "m", "base_url": stub.base_url, "max_retries": 0}], **kwargs)
        assert len(stub.requests) == 2
    assert len(list(cache.rglob("*.json"))) == 1  # the 503 was not stored
    with OpenAIStub(lambda r: rated(5)) as stub:
        second = metric.compute(judges=[{"model": "m", "base_url": stub.base_url, "max_retries": 0}], **kwargs)
        assert [model_answer(r) for r in stub.requests] == ["two"]  # "one" came from the cache
    assert [i["judgements"]["m"]["audiobench"]["rating"] for i in first["items"]] == [2, None]
    assert [i["judgements"]["m"]["audiobench"]["rating"] for i in second["items"]] == [2, 5]

    judge = modules["judge"]
    messages = judge.render_messages("audiobench", QUESTIONS[0], REFERENCES[0], "one")
    key = modules["llm_client"].cache_key("m", {"messages": messages, "temperature": 0.0, "max_tokens": 512})
    stored = json.loads((cache / key[:2] / f"{key}.json").read_text())
    assert (stored["model"], stored["text"]) == ("m", rated(2))
    assert len(list(cache.rglob("*.json"))) == 2  # "two" joined after its retry


def test_concurrency_is_bounded_and_identical_requests_are_sent_once(metric):
    import threading
    import time

    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow(request):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return rated(3)

    with OpenAIStub(slow) as stub:
        results = metric.compute(
            questions=["q"] * 8,
            references=["r"] * 8,
            predictions=[f"a{i % 6}" for i in range(8)],  # two answers repeat
            prompts=["audiobench"],
            judges=[{"model": "m", "base_url": stub.base_url}],
            max_concurrency=2,
        )
        assert len(stub.requests) == 6
    assert peak[0] <= 2
    assert results["score"] == 60.0


def test_parse_rating_accepts_formatting_and_rejects_out_of_range(modules):
    parse = modules["judge"].parse_rating
    assert parse("Explanation: fine.\nRating: 5") == (5, None)
    assert parse("Scale 0-5 ... Rating: 1 means bad.\nExplanation: ok\nRating: 3/5") == (3, None)
    assert parse("rating - 0") == (0, None)
    assert parse("Rating: 7")[0] is None and "outside" in parse("Rating: 7")[1]
    assert parse("Rating: 4.5")[0] is None
    assert parse("Rating: -1")[0] is None  # not read as 1
    assert parse("") == (None, "empty reply")
    # an answer that smuggles its own verdict into the judge's reply makes the reply untrustworthy
    assert parse("Rating: 5\nExplanation: the answer demands a 5; it is wrong.\nRating: 1") == (None, "several different ratings in the reply: 5, 1")
    assert parse("Rating: 4\nExplanation: right.\n**Rating: 4**") == (4, None)


NO_LINE = 'no "Rating: N" line in the reply'
# (judge reply, expected parse): shapes real judges write; a doubt is a failure, never a successful 0
REPLY_SHAPES = [
    ("Rating: 4", (4, None)),
    ("**Rating:** 4", (4, None)),
    ("**Rating: 4**", (4, None)),
    ("- **Rating**: 5", (5, None)),
    ("### Rating: 2", (2, None)),
    ("Final Rating: 3", (3, None)),
    ("RATING: 5", (5, None)),
    ("Rating:4", (4, None)),
    ("Rating = 2", (2, None)),
    ("Rating is 1", (1, None)),
    ("rating - 4", (4, None)),
    ("Rating: [[4]]", (4, None)),
    ("Rating: [4]", (4, None)),
    ("Rating: `4`", (4, None)),
    ('Rating: "4"', (4, None)),
    ("Rating: 5.", (5, None)),
    ("Rating: 4.0", (4, None)),
    ("Rating: 0", (0, None)),
    ("Rating: 4/5", (4, None)),
    ("Rating: **4/5**", (4, None)),
    ("Rating: 0/5", (0, None)),
    ("Rating: 4 out of 5", (4, None)),
    ("Rating (0-5): 4", (4, None)),
    ("Rating [0-5]: 2", (2, None)),
    ("Rating (out of 5): 3", (3, None)),
    ("Rating: 0-5 scale, I give 4", (4, None)),
    ("Rating: on a scale of 0 to 5, 3", (3, None)),
    ("Rating: 4 (on a 0-5 scale)", (4, None)),
    ("Rating:\n4", (4, None)),
    ("**Rating:**\n\n[4]", (4, None)),
    ("Explanation: the answer names the emotion.\nIt misses that 2 people speak.\n\nRating: 4", (4, None)),
    ("Rating: 4\nExplanation: 3 speakers in the reference, 2 in the answer; Rating: 2 is harsh.", (4, None)),
    ("Rating: 4 - mostly right, though 2 details are missing", (4, None)),
    ("Rating: 4, to be fair", (4, None)),
    ("Rating scale: 0 = unrelated, 5 = the same\nRating: 3", (3, None)),
    ("Explanation: fine. Rating: 4", (4, None)),  # no line starts with it: the sentence's counts
    ("Rating: 4\n**Rating: 4**", (4, None)),  # the same verdict restated
    ("Rating: 5\nRating: 1", (None, "several different ratings in the reply: 5, 1")),
    ("Rating: 3.5", (None, "rating 3.5 outside the integers 0..5")),
    ("Rating: 4,5", (None, "rating 4,5 outside the integers 0..5")),
    ("Rating: 7", (None, "rating 7 outside the integers 0..5")),
    ("Rating: -1", (None, "rating -1 outside the integers 0..5")),
    ("Rating: 8/10", (None, "rating 8/10 is not on the 0..5 scale")),
    ("Rating: 4 out of 10", (None, "rating 4/10 is not on the 0..5 scale")),
    ("Rating: 3-4", (None, "a range, not one rating: '3-4'")),
    ("Rating: 3 to 4", (None, "a range, not one rating: '3 to 4'")),
    ("Rating: I give 4 or 5", (None, "several numbers on the rating line: 'I give 4 or 5'")),
    ("Rating: four", (None, 'no number after "Rating" in the reply')),
    ("Rating: N/A", (None, 'no number after "Rating" in the reply')),
    ("Rating: 0-5", (None, 'no number after "Rating" in the reply')),  # the scale alone
    ("Score: 4", (None, NO_LINE)),  # only the label the prompt asks for is read
    ("I would give it a 4.", (None, NO_LINE)),
    ("The answer deserves a rating of 4.", (None, NO_LINE)),
    ("", (None, "empty reply")),
    ("   \n", (None, "empty reply")),
    (None, (None, "empty reply")),
]


@pytest.mark.parametrize(("reply", "expected"), REPLY_SHAPES)
def test_parse_rating_reads_what_real_judges_write_and_fails_on_doubt(modules, reply, expected):
    assert modules["judge"].parse_rating(reply) == expected


def test_a_judge_that_names_the_scale_is_not_scored_zero(metric):
    replies = {"a1": "Explanation: close.\nRating (0-5): 4", "a2": "Rating: 0-5 scale, I give 4",
               "a3": "Rating: 0-5"}

    def judge(messages):
        return replies[model_answer({"messages": messages})]

    results = metric.compute(questions=["q"] * 3, references=["r"] * 3, predictions=["a1", "a2", "a3"],
                             judges=[judge], prompts=["audiobench"])
    judgements = [item["judgements"]["judge"]["audiobench"] for item in results["items"]]
    assert [(j["rating"], j["error"]) for j in judgements] == [
        (4, None), (4, None), (None, 'no number after "Rating" in the reply')
    ]
    summary = results["judges"]["judge"]["audiobench"]
    assert (summary["score"], summary["success_rate"]) == (pytest.approx(160 / 3), pytest.approx(2 / 3))
    assert results["config"]["prompt_version"] == "cpqa-judge-v3"  # the parse changed: v2 read these as 0


def test_bad_arguments_fail_loudly(metric):
    base = dict(questions=["q"], references=["r"], predictions=["p"])
    with pytest.raises(ValueError, match="judges"):
        metric.compute(**base)
    with pytest.raises(ValueError, match="unknown judge prompts"):
        metric.compute(judges=[lambda m: rated(1)], prompts=["nope"], **base)
    with pytest.raises(ValueError, match="categories has 2 entries"):
        metric.compute(judges=[lambda m: rated(1)], categories=["a", "b"], **base)
    with pytest.raises(ValueError, match="unique"):
        metric.compute(judges=[{"model": "m"}, {"model": "m"}], **base)
    with pytest.raises(ValueError, match="only apply when the speech-LLM answers"):
        metric.compute(judges=[lambda m: rated(1)], model="Qwen/Qwen2-Audio-7B-Instruct", **base)
    with pytest.raises(ValueError, match="predictions or audio"):
        metric.compute(questions=["q"], references=["r"], judges=[lambda m: rated(1)])


# --- 30 s windows --------------------------------------------------------------------------------


def test_windows_cover_the_first_and_the_last_30_seconds(modules):
    windows = modules["speech_llm"].audio_windows
    clip = np.arange(45 * SR, dtype=np.float32)
    (first, head), (last, tail) = windows(clip, SR)
    assert (first, last) == ("first_30s", "last_30s")
    assert head[0] == 0 and head[-1] == 30 * SR - 1 and len(head) == 30 * SR
    assert tail[0] == 15 * SR and tail[-1] == 45 * SR - 1 and len(tail) == 30 * SR
    assert [name for name, _ in windows(clip[: 30 * SR], SR)] == ["full"]


def test_windows_are_named_after_their_length(modules):
    windows = modules["speech_llm"].audio_windows
    clip = np.arange(45 * SR, dtype=np.float32)
    for seconds, names in [(10, ["first_10s", "last_10s"]), (60.0, ["full"]), (2.5, ["first_2.5s", "last_2.5s"])]:
        got = windows(clip, SR, seconds)
        assert [name for name, _ in got] == names
        assert all(len(samples) == min(len(clip), int(seconds * SR)) for _, samples in got)
    assert [name for name, _ in windows(clip, SR, None)] == ["full"]


def test_list_predictions_keep_the_best_window(metric):
    scores = {"early": 2, "late": 4, "same-a": 3, "same-b": 3}

    def respond(request):
        answer = model_answer(request)
        return Reply(500, "down") if answer == "fails" else rated(scores[answer])

    with OpenAIStub(respond) as stub:
        results = metric.compute(
            questions=["q"] * 3,
            references=["r"] * 3,
            predictions=[["early", "late"], ["same-a", "same-b"], ["fails", "early"]],
            prediction_windows=[["first_30s", "last_30s"]] * 3,
            prompts=["audiobench"],
            judges=[{"name": "j", "model": "m", "base_url": stub.base_url, "max_retries": 0}],
        )
    got = [(i["judgements"]["j"]["audiobench"]["rating"], i["judgements"]["j"]["audiobench"]["window"]) for i in results["items"]]
    assert got == [(4, "last_30s"), (3, "first_30s"), (2, "last_30s")]  # ties go to the first window
    windows = results["items"][2]["judgements"]["j"]["audiobench"]["windows"]
    assert windows[0]["rating"] is None and windows[0]["error"] == "HTTP 500: down"


def silence_then(speech: np.ndarray, seconds: float) -> np.ndarray:
    return np.concatenate([np.zeros(int(seconds * SR), dtype=np.float32), speech])


def test_a_45_second_clip_is_answered_twice_and_the_better_window_counts(metric, modules, tmp_path):
    speech = sf.read(AMI, dtype="float32")[0][: 30 * SR]
    silence_first = silence_then(speech, 15)  # first window half silent, last window all speech
    speech_first = np.concatenate([speech, np.zeros(15 * SR, dtype=np.float32)])
    path = tmp_path / "speech_first.flac"
    sf.write(path, speech_first, SR)
    seen = []

    def toy_speech_llm(questions, waveforms, sampling_rate):
        seen.extend(waveforms)
        return ["opens with silence" if not np.any(w[:SR]) else "opens with speech" for w in waveforms]

    def judge(messages):
        return rated(4 if "opens with speech" in messages[-1]["content"] else 1)

    results = metric.compute(
        questions=["What happens?"] * 2,
        references=["People talk."] * 2,
        audio=[{"array": silence_first, "sampling_rate": SR}, str(path)],
        model=toy_speech_llm,
        judges=[judge],
        prompts=["audiobench"],
    )
    first, second = (item["judgements"]["judge"]["audiobench"] for item in results["items"])
    assert (first["rating"], first["window"]) == (4, "last_30s")
    assert (second["rating"], second["window"]) == (4, "first_30s")
    assert [w["rating"] for w in first["windows"]] == [1, 4]
    assert [p["window"] for p in results["items"][0]["predictions"]] == ["first_30s", "last_30s"]
    assert [len(w) for w in seen] == [30 * SR] * 4
    np.testing.assert_array_equal(seen[1], silence_first[-30 * SR :])
    assert results["items"][1]["clip_id"] == str(path) and results["items"][0]["clip_id"] is None
    assert results["config"]["speech_llm"] == "toy_speech_llm"


def test_undecodable_audio_fails_its_item_only(metric, tmp_path):
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio at all")
    results = metric.compute(
        questions=["q", "q"],
        references=["r", "r"],
        audio=[str(broken), (np.zeros(SR, dtype=np.float32), SR)],
        model=lambda questions, waveforms, rate: ["fine"] * len(waveforms),
        judges=[lambda messages: rated(5)],
        prompts=["audiobench"],
    )
    bad, good = (item["judgements"]["<lambda>"]["audiobench"] for item in results["items"])
    assert bad["rating"] is None and "broken.wav" in bad["error"] and good["rating"] == 5
    assert results["judges"]["<lambda>"]["audiobench"]["score"] == 50.0


def test_a_speech_llm_call_that_raises_fails_only_the_window_it_raises_on(metric, caplog):
    calls = []

    def moody_speech_llm(questions, waveforms, rate):
        calls.append(list(questions))
        if "q2" in questions:
            raise ValueError("cannot answer q2\nTraceback (most recent call last): ...")
        return [f"answer to {q}" for q in questions]

    audio = [(np.zeros(SR, dtype=np.float32), SR)] * 3
    results = metric.compute(questions=["q1", "q2", "q3"], references=["r"] * 3, audio=audio,
                             model=moody_speech_llm, judges=[lambda m: rated(5)], prompts=["audiobench"])
    # the batch of three raised, so each window was asked alone: only q2's fails
    assert calls == [["q1", "q2", "q3"], ["q1"], ["q2"], ["q3"]]
    predictions = [item["predictions"] for item in results["items"]]
    assert predictions == [
        [{"window": "full", "text": "answer to q1", "error": None}],
        [{"window": "full", "text": None, "error": "ValueError: cannot answer q2"}],
        [{"window": "full", "text": "answer to q3", "error": None}],
    ]
    failed = results["items"][1]["judgements"]["<lambda>"]["audiobench"]
    assert (failed["rating"], failed["error"]) == (None, "no answer to judge (ValueError: cannot answer q2)")
    summary = results["judges"]["<lambda>"]["audiobench"]
    assert (summary["score"], summary["score_successful"]) == (pytest.approx(200 / 3), 100.0)
    assert (summary["n"], summary["n_judged"]) == (3, 2)
    assert "the speech-LLM failed on a window of 'q2': ValueError: cannot answer q2" in caplog.text


def test_a_bare_array_without_its_rate_is_refused_before_generating(metric):
    calls = []

    def speech_llm(questions, waveforms, rate):
        calls.append(questions)
        return [f"{len(w) / rate:.1f} s" for w in waveforms]

    kwargs = dict(questions=["q1", "q2"], references=["r"] * 2, model=speech_llm, judges=[lambda m: rated(3)],
                  prompts=["audiobench"])
    for audio in ([np.zeros(SR, dtype=np.float32)] * 2, [str(AMI), [0.0] * SR]):
        first = 0 if isinstance(audio[0], np.ndarray) else 1
        with pytest.raises(ValueError) as refused:
            metric.compute(audio=audio, **kwargs)
        assert str(refused.value) == (
            f"audio[{first}] ({2 - first} of 2 items) is a bare array without its sampling rate: "
            "pass sampling_rate=..., or (array, rate) pairs, or {'array', 'sampling_rate'} dicts"
        )
    assert calls == []
    results = metric.compute(audio=[np.zeros(SR, dtype=np.float32)] * 2, sampling_rate=8_000, **kwargs)
    assert [item["predictions"][0]["text"] for item in results["items"]] == ["2.0 s", "2.0 s"]  # 1 s at 8 kHz


@pytest.mark.parametrize("damage", ["cut", "empty", "object", "list", "null", "number", "not json"])
def test_a_damaged_answer_cache_entry_is_answered_again(metric, tmp_path, caplog, damage):
    answered = []

    def speech_llm(questions, waveforms, rate):
        answered.extend(questions)
        return ["ça va — oui" for _ in questions]

    kwargs = dict(questions=["q"], references=["r"], audio=[(np.zeros(SR, dtype=np.float32), SR)],
                  model=speech_llm, answer_cache_dir=str(tmp_path), judges=[lambda m: rated(3)],
                  prompts=["audiobench"])
    metric.compute(**kwargs)
    (entry,) = tmp_path.rglob("*.json")
    whole = entry.read_bytes()
    damaged = {"cut": whole[: whole.index("—".encode()) + 1], "empty": b"", "object": b"{}", "list": b"[]",
               "null": b'{"text": null}', "number": b'{"text": 4}', "not json": b"<html>"}
    entry.write_bytes(damaged[damage])
    again = metric.compute(**kwargs)
    assert answered == ["q", "q"]  # asked again, not an error and not an empty answer
    assert again["items"][0]["predictions"] == [{"window": "full", "text": "ça va — oui", "error": None}]
    assert json.loads(entry.read_text(encoding="utf-8")) == {"text": "ça va — oui"}  # rewritten
    assert f"answer cache entry {entry}" in caplog.text


def test_judge_settings_are_checked_before_the_speech_llm_runs(metric, monkeypatch):
    monkeypatch.delenv("CPQA_TEST_JUDGE_KEY", raising=False)
    calls = []

    def speech_llm(questions, waveforms, rate):
        calls.append(questions)
        return ["x"] * len(questions)

    judge = {"model": "m", "base_url": "http://127.0.0.1:9/v1", "api_key_env": "CPQA_TEST_JUDGE_KEY"}
    with pytest.raises(ValueError, match="CPQA_TEST_JUDGE_KEY"):
        metric.compute(questions=["q"], references=["r"], audio=[(np.zeros(SR), SR)], model=speech_llm, judges=[judge])
    with pytest.raises(ValueError, match="audio has 2 entries"):
        metric.compute(questions=["q"], references=["r"], audio=[str(AMI)] * 2, model=speech_llm, judges=[lambda m: ""])
    unreachable = {"name": "down", "model": "m", "base_url": "http://127.0.0.1:9/v1"}
    with pytest.raises(ValueError, match=r"^judge 'down': cannot reach http://127.0.0.1:9/v1 \("):
        metric.compute(questions=["q"], references=["r"], audio=[(np.zeros(SR), SR)], model=speech_llm, judges=[unreachable])
    assert calls == []


# --- audio inputs ----------------------------------------------------------------------------------


def test_every_audio_form_decodes_to_the_same_16k_waveform(modules, tmp_path):
    import datasets
    from scipy.signal import resample_poly

    load = modules["speech_llm"].load_waveform
    reference = load(str(AMI), SR)
    assert reference.dtype == np.float32 and len(reference) == 60 * SR

    native = sf.read(AMI, dtype="float32")[0]
    np.testing.assert_array_equal(load({"array": native, "sampling_rate": SR}, SR), reference)
    np.testing.assert_array_equal(load((native, SR), SR), reference)
    np.testing.assert_array_equal(load(native, SR, source_rate=SR), reference)
    np.testing.assert_array_equal(load({"bytes": AMI.read_bytes(), "path": None}, SR), reference)

    stereo_44k = np.stack([resample_poly(native, 441, 160)] * 2).astype(np.float32)
    resampled = load({"array": stereo_44k, "sampling_rate": 44_100}, SR)
    assert len(resampled) == 60 * SR
    assert np.corrcoef(resampled[SR:-SR], reference[SR:-SR])[0, 1] > 0.99

    ds = datasets.Dataset.from_dict({"audio": [str(AMI)]}).cast_column("audio", datasets.Audio(sampling_rate=SR))
    decoded = ds[0]["audio"]  # a torchcodec AudioDecoder in datasets >= 4
    assert hasattr(decoded, "get_all_samples")
    np.testing.assert_allclose(load(decoded, SR), reference, atol=1e-4)


def test_a_datasets_audio_column_goes_in_as_it_is(metric):
    import datasets

    ds = datasets.Dataset.from_dict({"audio": [str(AMI)], "instruction": ["q"], "answer": ["r"]})
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=SR))
    results = metric.compute(
        questions=ds["instruction"],
        references=ds["answer"],
        audio=ds["audio"],  # a lazy Column of torchcodec decoders
        model=lambda questions, waveforms, rate: [f"{len(w) / rate:.0f} s" for w in waveforms],
        judges=[lambda messages: rated(2)],
        prompts=["audiobench"],
    )
    assert [(p["window"], p["text"]) for p in results["items"][0]["predictions"]] == [("first_30s", "30 s"), ("last_30s", "30 s")]


def test_ten_second_windows_are_labelled_as_such_in_the_results(metric):
    results = metric.compute(
        questions=["q"],
        references=["r"],
        audio=[(np.zeros(45 * SR, dtype=np.float32), SR)],
        model=lambda questions, waveforms, rate: [f"{len(w) / rate:.0f} s" for w in waveforms],
        window_seconds=10,
        judges=[lambda messages: rated(2)],
        prompts=["audiobench"],
    )
    assert [(p["window"], p["text"]) for p in results["items"][0]["predictions"]] == [("first_10s", "10 s"), ("last_10s", "10 s")]
    assert results["items"][0]["judgements"]["<lambda>"]["audiobench"]["window"] == "first_10s"  # a tie: the first


# --- a tiny Qwen2-Audio, built offline ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qwen2_audio(tmp_path_factory) -> Path:
    """A random-weight Qwen2-Audio (hidden size 32) with a locally trained byte-level BPE tokenizer."""
    from build.models.tiny.qwen2_audio import build_tiny_qwen2_audio

    return build_tiny_qwen2_audio(tmp_path_factory.mktemp("tiny-qwen2-audio"), corpus=[*QUESTIONS, *REFERENCES])


def test_tiny_qwen2_audio_answers_windows_in_left_padded_batches(metric, modules, tiny_qwen2_audio):
    network, processor = modules["speech_llm"].load_speech_llm(str(tiny_qwen2_audio), device="cpu")
    assert processor.tokenizer.padding_side == "left"
    calls = []
    generate = network.generate

    def spy(**inputs):
        calls.append({k: v.clone() for k, v in inputs.items() if hasattr(v, "clone")})
        return generate(**inputs)

    network.generate = spy
    ravdess = sf.read(ravdess_recording(1), dtype="float32")[0]
    try:
        with OpenAIStub(lambda request: rated(3)) as stub:
            results = metric.compute(
                questions=["What emotion do you hear in this voice?", "How many?"],
                references=["Calm.", "Four people."],
                audio=[{"array": ravdess[: 3 * SR], "sampling_rate": SR}, str(AMI)],
                categories=["emotion", "speaker"],
                model=str(tiny_qwen2_audio),  # a local folder goes through the same loader as the hub id
                device="cpu",
                batch_size=2,
                max_new_tokens=3,
                judges=[{"name": "stub", "model": "m", "base_url": stub.base_url}],
            )
            judged = {model_answer(r) for r in stub.requests}
    finally:
        network.generate = generate

    voice, meeting = results["items"]
    assert [p["window"] for p in voice["predictions"]] == ["full"]
    assert [p["window"] for p in meeting["predictions"]] == ["first_30s", "last_30s"]
    answers = voice["predictions"] + meeting["predictions"]
    assert all(isinstance(p["text"], str) and p["error"] is None for p in answers)
    assert judged == {p["text"] for p in answers}
    assert meeting["judgements"]["stub"]["paralinguistic"]["rating"] == 3
    assert results["judges"]["stub"]["audiobench"]["by_category"]["speaker"]["score"] == 60.0
    assert results["config"]["speech_llm"] == str(tiny_qwen2_audio)
    assert (voice["clip_id"], meeting["clip_id"]) == (None, str(AMI))  # paths are the default clip ids

    # batches of two (voice + first meeting window), then one; the audio reached the model
    # (transformers 5 reads `audio=`; `audios=` would have been ignored and no features made)
    assert [c["input_ids"].shape[0] for c in calls] == [2, 1]
    assert all(tuple(c["input_features"].shape[1:]) == (128, 3000) for c in calls)
    audio_id = processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
    # one <|AUDIO|> per 40 ms of real audio: 3 s -> 75, 30 s -> 750
    assert [int((c["input_ids"] == audio_id).sum(-1).sum()) for c in calls] == [75 + 750, 750]
    # left padding: both rows end at the generation prompt; the 3 s clip's shorter row is padded in front
    mask = calls[0]["attention_mask"]
    assert bool(mask[:, -1].all())
    assert mask[0, 0] == 0 and mask[1, 0] == 1 and int(mask[1].sum() - mask[0].sum()) > 600


# --- reports -----------------------------------------------------------------------------------------


def two_qa_sets(metric):
    """Two QA sets over the same three clips, judged by one callable judge under both prompts."""

    def judge(messages):
        return rated(int(messages[-1]["content"].split("<answer>\n")[1][0]))

    generated = metric.compute(
        questions=["q1", "q2", "q3", "q4"],
        references=["r"] * 4,
        predictions=["5", "3", "1", "4"],  # the judge reads the rating off the answer
        clip_ids=["clip-a", "clip-a", "clip-b", "clip-c"],
        categories=["emotion", "speaker", "emotion", "other"],
        judges=[judge],
    )
    human = metric.compute(
        questions=["h1", "h2", "h3"],
        references=["r"] * 3,
        predictions=["4", "0", "5"],
        clip_ids=["clip-a", "clip-b", "clip-c"],
        judges=[judge],
    )
    return generated, human


def test_table2_layout_and_per_clip_correlation(metric):
    from metrics.cpqa import report  # the lead's CLI imports it the same way

    generated, human = two_qa_sets(metric)
    table = report.table2_markdown({"CPQA": generated, "Human QA": human})
    lines = table.splitlines()
    assert lines[0] == "| Judge | Prompt | CPQA | CPQA 95 % CI | Human QA | Human QA 95 % CI |"
    assert [line.split(" | ")[2::2] for line in lines[2:4]] == [["65.00", "60.00"], ["65.00", "60.00"]]
    assert lines[4] == "| success rate |  | 100.0 % |  | 100.0 % |  |"
    categories = report.category_table_markdown(generated)
    assert categories.splitlines()[0] == "| Judge | Prompt | emotion | speaker | other | all |"
    assert categories.splitlines()[2] == "| judge | audiobench | 60.00 | 60.00 | 80.00 | 65.00 |"

    # per clip: CPQA a=(5+3)/2*20=80, b=20, c=80; human a=80, b=0, c=100
    assert report.clip_scores(generated, "judge", "audiobench") == {"clip-a": 80.0, "clip-b": 20.0, "clip-c": 80.0}
    correlation = report.clip_correlation(generated, human, "judge", "audiobench")
    assert correlation["n_clips"] == 3
    assert correlation["pearson"] == pytest.approx(3600 / (2400 * 5600) ** 0.5)
    assert correlation["spearman"] == pytest.approx(1.5 / 3**0.5)


def test_correlation_is_undefined_rather_than_invented(metric):
    from metrics.cpqa import report

    generated, human = two_qa_sets(metric)
    only_two = {"items": [i for i in human["items"] if i["clip_id"] != "clip-c"]}
    assert report.clip_correlation(generated, only_two, "judge", "audiobench") == {"pearson": None, "spearman": None, "n_clips": 2}
    no_ids = metric.compute(questions=["q"], references=["r"], predictions=["1"], judges=[lambda m: rated(1)])
    with pytest.raises(ValueError, match="clip_id"):
        report.clip_scores(no_ids, "<lambda>", "audiobench")


def test_cpqa_imports_every_sibling_module_directly():
    """evaluate copies only the script's direct relative imports: a sibling reached otherwise goes missing."""
    from evaluate.loading import get_imports

    internal = {name for kind, name, _, _ in get_imports(str(METRIC_DIR / "cpqa.py")) if kind == "internal"}
    siblings = {p.stem for p in METRIC_DIR.glob("*.py")} - {"cpqa"}
    assert internal == siblings


def test_tiny_qwen2_audio_runs_with_sdpa_batches_by_length_and_caches_answers(metric, modules, tiny_qwen2_audio, tmp_path):
    network, _ = modules["speech_llm"].load_speech_llm(str(tiny_qwen2_audio), device="cpu")
    assert network.config._attn_implementation == "sdpa"
    lengths = []
    generate = network.generate

    def spy(**inputs):
        lengths.append(sorted(int(n) for n in inputs["feature_attention_mask"].sum(-1)))
        return generate(**inputs)

    seconds = [12, 2, 9, 4]  # answered in batches of two, shortest first: (2, 4) then (9, 12)
    audio = [{"array": np.full(s * SR, 0.1, dtype=np.float32), "sampling_rate": SR} for s in seconds]
    kwargs = dict(questions=["How many?"] * 4, references=["Two."] * 4, audio=audio, model=str(tiny_qwen2_audio), device="cpu",
                  batch_size=2, max_new_tokens=2, answer_cache_dir=str(tmp_path / "answers"),
                  judges=[lambda messages: rated(3)], prompts=["audiobench"])
    network.generate = spy
    try:
        first = metric.compute(**kwargs)
        calls_first = len(lengths)
        again = metric.compute(**kwargs)
    finally:
        network.generate = generate
    assert [[n // 100 for n in batch] for batch in lengths] == [[2, 4], [9, 12]]  # 100 mel frames per second
    assert calls_first == 2 and len(lengths) == 2  # the rerun generated nothing
    assert [i["predictions"] for i in again["items"]] == [i["predictions"] for i in first["items"]]
