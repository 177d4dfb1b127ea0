"""Trustworthy numbers: bootstrap intervals over clips, K judge samples averaged, judge presets, and the
cell-level correlation between two QA sets, on fixed judge outputs with expected values computed here."""

import threading

import numpy as np
import pytest
from conftest import REPO
from openai_stub import OpenAIStub
from scipy.stats import spearmanr

import cpqa

METRIC_DIR = REPO / "metrics" / "cpqa"


@pytest.fixture(scope="module")
def metric():
    import evaluate

    return evaluate.load(str(METRIC_DIR), keep_in_memory=True)


def rating_judge(ratings: dict[str, int | None]):
    """A callable judge rating each answer text from a table (None: a reply without a rating)."""

    def judge(messages):
        answer = messages[-1]["content"].split("<answer>\n", 1)[1].split("\n</answer>", 1)[0]
        rating = ratings[answer]
        return "no idea" if rating is None else f"Explanation: fixed.\nRating: {rating}"

    return judge


def bootstrap_by_hand(ratings, clips, successful_only, reps=1000, seed=0):
    """The percentile bootstrap over clips, written out independently of scores.py."""
    names = list(dict.fromkeys(clips))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(names), size=(reps, len(names)))
    scores = []
    for draw in draws:
        picked = [r for k in draw for r, c in zip(ratings, clips) if c == names[k]]
        counted = [r for r in picked if r is not None] if successful_only else [r or 0 for r in picked]
        if counted:
            scores.append(20 * sum(counted) / len(counted))
    return list(np.percentile(scores, [2.5, 97.5]))


def test_every_table2_cell_has_a_bootstrap_interval_over_clips(metric):
    # five clips, one to three questions each; answer "aN" is rated N, "fail" gets no rating
    clips = ["c1", "c1", "c2", "c3", "c3", "c3", "c4", "c5"]
    answers = ["a5", "a4", "a0", "a3", "fail", "a5", "a1", "a2"]
    ratings = [5, 4, 0, 3, None, 5, 1, 2]
    table = {f"a{n}": n for n in range(6)} | {"fail": None}
    results = metric.compute(
        questions=[f"q{i}" for i in range(8)],
        references=["r"] * 8,
        predictions=answers,
        clip_ids=clips,
        categories=["emotion"] * 4 + ["speaker"] * 4,
        judges=[{"name": "fixed", "call": rating_judge(table)}],
        prompts=["audiobench"],
    )
    cell = results["judges"]["fixed"]["audiobench"]
    assert cell["score"] == pytest.approx(20 * 20 / 8)  # 50.0: the failure counts 0
    assert cell["ci95"] == pytest.approx(bootstrap_by_hand(ratings, clips, successful_only=False))
    assert cell["ci95_successful"] == pytest.approx(bootstrap_by_hand(ratings, clips, successful_only=True))
    assert cell["ci95"][0] < cell["score"] < cell["ci95"][1]
    speaker = cell["by_category"]["speaker"]
    assert speaker["ci95"] == pytest.approx(bootstrap_by_hand(ratings[4:], clips[4:], successful_only=False))

    from metrics.cpqa import report

    row = report.table2_markdown({"set": results}).splitlines()[2]
    low, high = cell["ci95"]
    assert row == f"| fixed | audiobench | 50.00 | [{low:.2f}, {high:.2f}] |"


def test_two_clips_at_the_extremes_give_the_whole_range(metric):
    # resamples of {100, 0}: 100, 50 or 0 with chances 1/4, 1/2, 1/4 -> 2.5th percentile 0, 97.5th 100
    results = metric.compute(
        questions=["q1", "q2"], references=["r", "r"], predictions=["a5", "a0"], clip_ids=["x", "y"],
        judges=[{"name": "fixed", "call": rating_judge({"a5": 5, "a0": 0})}], prompts=["audiobench"],
    )
    assert results["judges"]["fixed"]["audiobench"]["ci95"] == [0.0, 100.0]


def test_judge_samples_are_sent_with_their_own_seed_and_averaged(metric, tmp_path):
    by_seed = {0: 5, 1: 4, 2: 2}
    with OpenAIStub(lambda request: f"Rating: {by_seed[request['seed']]}") as stub:
        judge = {"name": "sampled", "model": "m", "base_url": stub.base_url, "samples": 3}
        kwargs = dict(questions=["q1", "q2"], references=["r", "r"], predictions=["p1", "p2"], judges=[judge],
                      prompts=["audiobench"], cache_dir=str(tmp_path / "cache"))
        results = metric.compute(**kwargs)
        assert sorted((r["seed"], r["temperature"]) for r in stub.requests) == sorted([(seed, 0.7) for seed in (0, 1, 2)] * 2)
        sent = len(stub.requests)
        again = metric.compute(**kwargs)
        assert len(stub.requests) == sent  # every sample came from the cache
    # (5 + 4 + 2) / 3 = 11/3 per answer -> x 20
    assert results["judges"]["sampled"]["audiobench"]["score"] == pytest.approx(20 * 11 / 3)
    assert again["judges"]["sampled"]["audiobench"]["score"] == pytest.approx(20 * 11 / 3)
    assert results["config"]["judges"][0]["samples"] == 3 and results["config"]["judges"][0]["params"]["temperature"] == 0.7


def test_a_failed_sample_is_left_out_of_the_mean(metric):
    replies = {"p": iter(["Rating: 5", "no rating here", "Rating: 2"])}
    lock = threading.Lock()

    def judge(messages):
        with lock:
            return next(replies["p"])

    results = metric.compute(questions=["q"], references=["r"], predictions=["p"], judges=[{"name": "k3", "call": judge, "samples": 3}],
                             prompts=["audiobench"])
    judgement = results["items"][0]["judgements"]["k3"]["audiobench"]
    assert judgement["rating"] == pytest.approx(3.5) and judgement["error"] is None
    assert results["judges"]["k3"]["audiobench"]["score"] == pytest.approx(70.0)


def test_samples_at_temperature_zero_are_refused(metric):
    with pytest.raises(ValueError, match="3 samples at temperature 0"):
        metric.compute(questions=["q"], references=["r"], predictions=["p"], prompts=["audiobench"],
                       judges=[{"model": "m", "base_url": "http://127.0.0.1:9/v1", "samples": 3, "temperature": 0}])


def test_judge_presets_name_the_papers_judges(monkeypatch):
    from metrics.cpqa.judge import make_judges

    monkeypatch.setenv("CPQA_LLAMA3_BASE_URL", "http://gpu-box:8000/v1")
    llama, gpt = make_judges([cpqa.parse_judge("llama3-70b-awq"), cpqa.parse_judge("gpt-4o")])
    assert (llama.name, llama.model, llama.base_url, llama.api_key_env) == (
        "llama3-70b-awq", "casperhansen/llama-3-70b-instruct-awq", "http://gpu-box:8000/v1", None
    )
    assert (gpt.name, gpt.model, gpt.base_url, gpt.api_key_env) == ("gpt-4o", "gpt-4o", "https://api.openai.com/v1", "OPENAI_API_KEY")
    assert llama.params["temperature"] == 0.0
    (moved,) = make_judges([cpqa.parse_judge("preset=llama3-70b-awq,base_url=http://other:9000/v1,samples=3")])
    assert (moved.base_url, moved.samples, moved.params["temperature"]) == ("http://other:9000/v1", 3, 0.7)
    with pytest.raises(ValueError, match="unknown judge preset 'gpt-5'"):
        make_judges([cpqa.parse_judge("gpt-5")])


def test_cell_level_correlation_between_two_qa_sets(metric):
    from metrics.cpqa import report

    categories = ["emotion", "emotion", "speaker", "speaker", "other", "other"]

    def run(answers):
        table = {f"a{n}": n for n in range(6)}
        return metric.compute(questions=[f"q{i}" for i in range(6)], references=["r"] * 6, predictions=answers,
                              categories=categories, judges=[{"name": "j", "call": rating_judge(table)}], prompts=["audiobench", "paralinguistic"])

    generated = run(["a5", "a3", "a1", "a2", "a4", "a4"])  # cells per category: 80, 30, 80 under both prompts
    human = run(["a4", "a4", "a0", "a1", "a5", "a2"])  # 80, 10, 70
    c = report.cell_correlation(generated, human)
    a, b = [80, 30, 80] * 2, [80, 10, 70] * 2
    assert c["n_cells"] == 6
    assert c["pearson"] == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert c["spearman"] == pytest.approx(spearmanr(a, b)[0])
    assert 0 < c["pearson"] < 1
