"""`python cpqa.py demo` end to end against a loopback OpenAI-compatible server, then `evaluate` on its output."""

import json

import pytest
from openai_stub import OpenAIStub

import cpqa

SECRET = "sk-test-never-written-anywhere"
PAIRS = [
    {"question": "How does the speaker feel?", "answer": "Afraid."},
    {"question": "How is the speaker feeling?", "answer": "Scared."},  # near-duplicate of the first
    {"question": "What does the transcript say first?", "answer": "Kids are talking."},  # presupposes a transcript
    {"question": "Is the speaker male or female?", "answer": "Male."},
    {"question": "Why does the speaker sound afraid?", "answer": "The dogs by the door worry him."},
]


def is_empathy(request):
    return request.get("response_format", {}).get("json_schema", {}).get("name") == "empathetic_response"


def reply(request):
    """QA pairs for QA requests; for empathy requests a reply that uses the strategy the schema allows."""
    if not is_empathy(request):
        return json.dumps({"pairs": PAIRS})
    strategy = request["response_format"]["json_schema"]["schema"]["properties"]["strategy"]["enum"][0]
    return json.dumps({"strategy": strategy, "emotion_awareness": "They sound tense about it.", "response": "That sounds like a lot to deal with."})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    with OpenAIStub(reply) as stub, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_BASE_URL", stub.base_url)
        mp.setenv("OPENAI_API_KEY", SECRET)
        import io
        from contextlib import redirect_stdout

        printed = io.StringIO()
        with redirect_stdout(printed):
            assert cpqa.main(["demo", "--out", str(out)]) == 0
        requests = [r for r in stub.requests if not is_empathy(r)]  # QA requests
        empathy_requests = [r for r in stub.requests if is_empathy(r)]
    return out, printed.getvalue(), requests, empathy_requests


def test_demo_prints_the_funnel_and_how_to_open_the_result(demo):
    out, printed, requests, _ = demo
    lines = printed.splitlines()
    assert lines[0] == "cpqa build: 8 recordings in"
    assert "      dropped: 4 shorter than 30 s" in lines  # the Apollo radio excerpt
    n = len(requests)  # one request per condensed segment
    assert f"  {'QA pairs generated':<30} {5 * n:>6}" in lines
    assert f"  {'QA pairs kept':<30} {3 * n:>6}" in lines
    assert f"      dropped: {n} near-duplicate question" in lines
    assert f"      dropped: {n} presupposes a transcript" in lines
    assert "recordings: 7 kept, 1 dropped, 0 failed" in lines
    assert "  apollo11: dropped at length: shorter than 30 s (x4)" in lines
    assert f"QA categories: contextual paralinguistic reasoning {n}, emotion {n}, speaker {n}" in lines
    assert lines[-1].startswith(f'open with: datasets.load_dataset("{out}", split="test")')


def test_demo_dataset_loads_with_exact_rows(demo):
    from datasets import load_dataset

    out, _, requests, empathy_requests = demo
    qa = load_dataset(str(out), split="test")
    segments = load_dataset(str(out), "segments", split="test")
    assert len(segments) == len(requests) == 7
    assert len(qa) == 3 * len(segments)
    assert qa["instruction"][:3] == ["How does the speaker feel?", "Is the speaker male or female?", "Why does the speaker sound afraid?"]
    assert qa["category"][:3] == ["emotion", "speaker", "contextual paralinguistic reasoning"]
    assert set(qa["prompt_version"]) == {"qa_v2"} and set(qa["aligner"]) == {"faster-whisper"}
    assert qa["emotion_models"][0] == ["local:emotion2vec_tiny_0", "local:emotion2vec_tiny_1", "local:emotion2vec_tiny_2"]
    assert qa["asr_model"][0] == "bundled:tiny.en"
    first = segments[0]
    assert first["n_pairs"] == 3 and first["transcript"].strip()
    assert all(w["emotion"] is not None for w in first["words"] if w["start"] is not None)
    empathy = load_dataset(str(out), "empathy", split="test")
    assert len(empathy) == len(empathy_requests) and 0 < len(empathy) <= len(segments)  # clips without a target send nothing
    assert set(empathy["prompt_version"]) == {"empathy_v1"}
    assert {r["text"] for r in empathy["desired_response"]} == {"That sounds like a lot to deal with."}
    ledger = [json.loads(line) for line in (out / "recordings.jsonl").read_text().splitlines()]
    assert len(ledger) == 8 and sum(e["status"] == "kept" for e in ledger) == 7


def test_the_api_key_never_reaches_outputs_or_the_cache(demo):
    out, *_ = demo
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_rerun_pays_for_no_llm_request(demo, tmp_path):
    out, *_ = demo
    with OpenAIStub(reply) as stub, pytest.MonkeyPatch.context() as mp:
        mp.setenv("OPENAI_BASE_URL", stub.base_url)
        import io
        from contextlib import redirect_stdout

        with redirect_stdout(io.StringIO()):
            assert cpqa.main(["demo", "--out", str(out)]) == 0
        assert stub.requests == []  # every reply came from OUT/work/llm-cache


def test_evaluate_judges_given_predictions_and_writes_table2(demo, tmp_path):
    out, *_ = demo
    from datasets import load_dataset

    qa = load_dataset(str(out), split="test")
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"question_id": q, "prediction": "He sounds afraid."}) + "\n" for q in qa["question_id"]))

    def grade(request):
        prompt = request["messages"][-1]["content"]
        return "Explanation: wrong focus.\nRating: 1" if "male or female" in prompt else "Explanation: matches.\nRating: 4"

    with OpenAIStub(grade) as judge:
        results_dir = tmp_path / "results"
        assert cpqa.main(["evaluate", str(out), "--judge", f"model=stub-judge,base_url={judge.base_url},name=stub", "--predictions", str(predictions), "--prompts", "audiobench", "--out", str(results_dir)]) == 0
    results = json.loads((results_dir / "results.json").read_text())
    summary = results["out"]["judges"]["stub"]["audiobench"]
    # a third of the questions are speaker questions rated 1, the rest 4: (1 + 4 + 4) / 3 x 20 = 60
    assert summary["score"] == pytest.approx(60.0)
    assert summary["by_category"]["speaker"]["score"] == pytest.approx(20.0)
    assert summary["success_rate"] == 1.0
    table = (results_dir / "results.md").read_text()
    assert "| stub | audiobench | 60.00 |" in table


def test_evaluate_two_qa_sets_reports_their_per_clip_correlation(demo, tmp_path):
    out, *_ = demo
    from datasets import load_dataset

    qa = load_dataset(str(out), split="test")
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps({"question_id": q, "prediction": f"He sounds afraid [{s}]."}) + "\n" for q, s in zip(qa["question_id"], qa["segment_id"])))
    clips = sorted(set(qa["segment_id"]))
    rating = {sid: i % 6 for i, sid in enumerate(clips)}  # each clip its own rating, in both sets

    def grade(request):
        prompt = request["messages"][-1]["content"]
        clip = next(sid for sid in clips if f"[{sid}]" in prompt)
        return f"Rating: {rating[clip]}"

    with OpenAIStub(grade) as judge:
        results_dir = tmp_path / "two"
        argv = ["evaluate", str(out), str(out), "--labels", "llm", "human", "--judge", f"model=stub-judge,base_url={judge.base_url},name=stub", "--predictions", str(predictions), "--prompts", "audiobench", "--out", str(results_dir)]
        assert cpqa.main(argv) == 0
    table = (results_dir / "results.md").read_text()
    assert "## Per-clip correlation, llm vs human" in table
    assert f"| stub | audiobench | {len(clips)} | 1.000 | 1.000 |" in table


@pytest.mark.embedded_llm
def test_the_readme_demo_runs_offline_with_the_embedded_llm(tmp_path, monkeypatch):
    """The README's first command as it is: no endpoint configured, so the SmolLM2 server is started."""
    import io
    from contextlib import redirect_stdout

    from datasets import load_dataset

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    out = tmp_path / "demo"
    printed = io.StringIO()
    with redirect_stdout(printed):
        assert cpqa.main(["demo", "--out", str(out)]) == 0
    lines = printed.getvalue().splitlines()
    assert lines[0] == "starting the embedded LLM server (llama.cpp, SmolLM2-135M-Instruct) ..."
    assert "cpqa build: 8 recordings in" in lines
    qa = load_dataset(str(out), split="test")
    assert len(qa) >= 1 and qa.column_names[:4] == ["context", "instruction", "answer", "category"]
    assert set(qa["llm_model"]) == {"bundled:smollm2-135m-instruct"} and set(qa["prompt_version"]) == {"qa_v2"}
    assert all(q.strip() and a.strip() for q, a in zip(qa["instruction"], qa["answer"]))
