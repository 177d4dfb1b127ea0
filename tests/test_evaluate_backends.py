"""`cpqa.py evaluate` against a loopback audio model: the OpenAI-compatible backend with input_audio,
the answer cache and resume after a judge outage, AudioBench-format sets without ids or categories,
the controls, and the one-line preflight errors."""

import base64
import hashlib
import io
import json

import datasets
import numpy as np
import pytest
import soundfile as sf
from openai_stub import OpenAIStub, Reply

import cpqa

SR = 16_000
datasets.disable_progress_bars()  # as the CLI does before datasets is imported, so stderr holds only the error


class AudioModelStub(OpenAIStub):
    """A served audio model: reads the base64 WAV of each request and answers from it deterministically,
    '<seconds> s of <voice|silence> at <rate> Hz: <question>'."""

    def __init__(self):
        super().__init__(self.hear, model="audio-stub")

    @staticmethod
    def hear(request: dict) -> str:
        content = request["messages"][-1]["content"]
        (audio,) = [part["input_audio"] for part in content if part["type"] == "input_audio"]
        (question,) = [part["text"] for part in content if part["type"] == "text"]
        assert audio["format"] == "wav"
        samples, rate = sf.read(io.BytesIO(base64.b64decode(audio["data"])), dtype="int16")
        heard = "voice" if np.abs(samples).max() > 0 else "silence"
        return f"{len(samples) / rate:.1f} s of {heard} at {rate} Hz: {question}"


def judged_answer(request: dict) -> str:
    content = request["messages"][-1]["content"]
    return content.split("<answer>\n", 1)[1].split("\n</answer>", 1)[0]


def judge_and_text_llm(request: dict) -> str:
    """One endpoint for the judge and the text-only control: voice 4, transcript-only 2, silence 1."""
    content = request["messages"][-1]["content"]
    if "Transcript:" in content:
        return "From the words alone: " + content.split("Transcript:\n", 1)[1].split("\n", 1)[0]
    answer = judged_answer(request)
    rating = 4 if "of voice" in answer else 1 if "of silence" in answer else 2
    return f"Explanation: compared.\nRating: {rating}"


def tone(seconds: float, frequency: float = 220.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    swell = 0.1 + 0.2 * t / seconds  # louder towards the end, so a clip's first and last 30 s differ
    return (swell * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, SR, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


# three clips: 10 s (two questions), 45 s (answered on its first and last 30 s), 5 s
CLIPS = [wav_bytes(tone(10)), wav_bytes(tone(45, 330)), wav_bytes(tone(5, 440))]
ROWS = [
    (0, "How does the speaker feel?", "Calm.", "we will meet at noon"),
    (0, "Is the speaker male or female?", "Female.", "we will meet at noon"),
    (1, "How many people speak?", "Two.", "so the plan is settled"),
    (2, "Why does the speaker sound angry?", "The deadline.", "the deadline is today"),
]


def audiobench_set(folder, form: str = "parquet"):
    """An AudioBench-shaped set: context (audio bytes), instruction, answer, transcript; no ids, no category."""
    features = datasets.Features({"context": datasets.Audio(sampling_rate=SR), "instruction": datasets.Value("string"),
                                  "answer": datasets.Value("string"), "transcript": datasets.Value("string")})
    data = datasets.Dataset.from_dict(
        {
            "context": [{"bytes": CLIPS[c], "path": f"clip{c}.wav"} for c, *_ in ROWS],
            "instruction": [q for _, q, _, _ in ROWS],
            "answer": [a for _, _, a, _ in ROWS],
            "transcript": [t for *_, t in ROWS],
        },
        features=features,
    )
    if form == "parquet":
        folder.mkdir(parents=True)
        data.to_parquet(str(folder / "test-00000-of-00001.parquet"))
    else:
        datasets.DatasetDict({"test": data}).save_to_disk(str(folder))
    return folder


def evaluate(argv, capsys):
    capsys.readouterr()
    code = cpqa.main(["evaluate", *argv, "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_served_audio_model_answers_each_window_and_the_answers_are_published(tmp_path, capsys):
    source = audiobench_set(tmp_path / "set")
    out = tmp_path / "results"
    with AudioModelStub() as model, OpenAIStub(judge_and_text_llm) as judge:
        argv = [str(source), "--backend", "openai", "--model", "audio-stub", "--base-url", model.base_url,
                "--judge", f"model=judge,base_url={judge.base_url},name=stub", "--prompts", "audiobench", "--no-controls", "--out", str(out)]
        code, printed, err = evaluate(argv, capsys)
        assert code == 0, err
        answered = sorted(AudioModelStub.hear(r) for r in model.requests)
    assert answered == sorted([
        "10.0 s of voice at 16000 Hz: How does the speaker feel?",
        "10.0 s of voice at 16000 Hz: Is the speaker male or female?",
        "30.0 s of voice at 16000 Hz: How many people speak?",  # first 30 s of the 45 s clip
        "30.0 s of voice at 16000 Hz: How many people speak?",  # last 30 s
        "5.0 s of voice at 16000 Hz: Why does the speaker sound angry?",
    ])
    assert all(r["model"] == "audio-stub" and r["temperature"] == 0.0 for r in model.requests)
    assert "set: clips grouped by audio hash: 3 clips" in printed
    assert "set: no category column: categories from the Table-1 rules (build/categories.py)" in printed

    lines = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    audio_hash = [hashlib.sha256(CLIPS[c]).hexdigest() for c, *_ in ROWS]
    ids = ["q-" + hashlib.sha256(f"{h}\n{q}".encode()).hexdigest()[:16] for h, (_, q, _, _) in zip(audio_hash, ROWS)]
    assert [(r["question_id"], r["window"]) for r in lines] == [
        (ids[0], "full"), (ids[1], "full"), (ids[2], "first_30s"), (ids[2], "last_30s"), (ids[3], "full")
    ]
    assert lines[0]["answer"] == "10.0 s of voice at 16000 Hz: How does the speaker feel?" and lines[0]["error"] is None

    results = json.loads((out / "results.json").read_text())["set"]
    items = results["items"]
    assert [item["clip_id"] for item in items] == [f"clip-{h[:16]}" for h in audio_hash]
    assert len(set(item["clip_id"] for item in items)) == 3
    assert [item["category"] for item in items] == ["emotion", "speaker", "speaker", "contextual paralinguistic reasoning"]
    assert results["judges"]["stub"]["audiobench"]["score"] == 80.0  # every answer heard a voice: rating 4
    assert results["config"]["speech_llm"] == "audio-stub" and results["config"]["window_seconds"] == 30.0
    assert results["config"]["cpqa_version"] and results["config"]["prompt_version"]
    assert results["config"]["judges"][0]["params"]["temperature"] == 0.0


def test_published_predictions_are_judged_again_without_a_model(tmp_path, capsys):
    source = audiobench_set(tmp_path / "set")
    with AudioModelStub() as model, OpenAIStub(judge_and_text_llm) as judge:
        common = ["--judge", f"model=judge,base_url={judge.base_url},name=stub", "--prompts", "audiobench"]
        argv = [str(source), "--backend", "openai", "--model", "audio-stub", "--base-url", model.base_url, "--no-controls", "--out", str(tmp_path / "a")]
        assert evaluate(argv + common, capsys)[0] == 0
        published = tmp_path / "a" / "predictions.jsonl"
        code, printed, err = evaluate([str(source), "--predictions", str(published), "--out", str(tmp_path / "b")] + common, capsys)
        assert code == 0, err
        assert len(model.requests) == 5  # the second run asked the model nothing
    assert "set: silenced control skipped: answers come from a predictions file: no speech-LLM to ask" in printed
    first = json.loads((tmp_path / "a" / "results.json").read_text())["set"]
    second = json.loads((tmp_path / "b" / "results.json").read_text())["set"]
    assert [i["predictions"] for i in second["items"]] == [i["predictions"] for i in first["items"]]
    assert second["judges"]["stub"]["audiobench"]["score"] == 80.0
    assert second["controls"]["text_only"]["judges"]["stub"]["audiobench"]["score"] == 40.0
    assert second["config"]["speech_llm"] == f"predictions:{published}"


def test_whole_clip_sends_each_clip_once(tmp_path, capsys):
    source = audiobench_set(tmp_path / "set", form="save_to_disk")
    with AudioModelStub() as model, OpenAIStub(judge_and_text_llm) as judge:
        argv = [str(source), "--backend", "openai", "--model", "audio-stub", "--base-url", model.base_url, "--whole-clip",
                "--judge", f"model=judge,base_url={judge.base_url}", "--prompts", "audiobench", "--no-controls", "--out", str(tmp_path / "r")]
        assert evaluate(argv, capsys)[0] == 0
        heard = sorted(AudioModelStub.hear(r).split(":")[0] for r in model.requests)
    assert heard == ["10.0 s of voice at 16000 Hz"] * 2 + ["45.0 s of voice at 16000 Hz", "5.0 s of voice at 16000 Hz"]


def test_a_judge_outage_costs_no_generation_on_the_rerun(tmp_path, capsys):
    source = audiobench_set(tmp_path / "set")
    out = tmp_path / "results"
    judge_up = {"up": False}

    def flaky_judge(request):
        return judge_and_text_llm(request) if judge_up["up"] else Reply(500, "judge overloaded")

    with AudioModelStub() as model, OpenAIStub(flaky_judge) as judge:
        argv = [str(source), "--backend", "openai", "--model", "audio-stub", "--base-url", model.base_url,
                "--judge", f"model=judge,base_url={judge.base_url},name=stub,max_retries=0", "--prompts", "audiobench",
                "--no-controls", "--out", str(out)]
        code, _, err = evaluate(argv, capsys)
        assert code == 2
        assert err.count("\n") == 1 and "every judgement failed" in err and "judge overloaded" in err
        assert len(model.requests) == 5
        assert len((out / "predictions.jsonl").read_text().splitlines()) == 5  # saved before judging

        judge_up["up"] = True
        code, printed, err = evaluate(argv, capsys)
        assert code == 0, err
        assert len(model.requests) == 5  # every answer came from OUT/answer-cache
        assert "set: answer: 5 windows, 5 from the answer cache, 0 failed" in printed
    results = json.loads((out / "results.json").read_text())["set"]
    assert results["success_rate"] == 1.0 and results["judges"]["stub"]["audiobench"]["score"] == 80.0


def test_controls_answer_from_the_transcript_and_on_silence(tmp_path, capsys):
    source = audiobench_set(tmp_path / "set")
    out = tmp_path / "results"
    with AudioModelStub() as model, OpenAIStub(judge_and_text_llm) as judge:
        argv = [str(source), "--backend", "openai", "--model", "audio-stub", "--base-url", model.base_url,
                "--judge", f"model=judge,base_url={judge.base_url},name=stub", "--prompts", "audiobench", "--out", str(out)]
        code, printed, err = evaluate(argv, capsys)
        assert code == 0, err
        silenced = [AudioModelStub.hear(r) for r in model.requests if "of silence" in AudioModelStub.hear(r)]
        transcript_requests = [r for r in judge.requests if "Transcript:" in r["messages"][-1]["content"]]
    # the same windows again with every sample zero; the 45 s clip's first and last 30 s of silence are
    # one identical request, sent once
    assert len(model.requests) == 9 and sorted(silenced) == sorted(
        [f"{s} s of silence at 16000 Hz: {q}" for s, q in [("10.0", ROWS[0][1]), ("10.0", ROWS[1][1]), ("30.0", ROWS[2][1]), ("5.0", ROWS[3][1])]]
    )
    assert sorted(r["messages"][-1]["content"].split("Transcript:\n")[1].split("\n")[0] for r in transcript_requests) == sorted(t for *_, t in ROWS)

    results = json.loads((out / "results.json").read_text())["set"]
    controls = results["controls"]
    # voice 4 -> 80, transcript 2 -> 40, silence 1 -> 20, in every category
    assert controls["text_only"]["judges"]["stub"]["audiobench"]["score"] == 40.0
    assert controls["silenced"]["judges"]["stub"]["audiobench"]["score"] == 20.0
    assert [i["predictions"][0]["window"] for i in controls["text_only"]["items"]] == ["transcript"] * 4
    table = (out / "results.md").read_text()
    assert "| stub | audiobench | emotion | 80.00 | 40.00 | 20.00 | 40.00 |" in table
    assert "| stub | audiobench | speaker | 80.00 | 40.00 | 20.00 | 40.00 |" in table
    assert "| stub | audiobench | all | 80.00 | 40.00 | 20.00 | 40.00 |" in table


def test_controls_without_a_transcript_are_skipped_with_a_message(tmp_path, capsys):
    source = audiobench_set(tmp_path / "set")
    data = datasets.load_dataset(str(source), split="test").remove_columns(["transcript"])
    bare = tmp_path / "bare"
    bare.mkdir()
    data.to_parquet(str(bare / "test.parquet"))
    with AudioModelStub() as model, OpenAIStub(judge_and_text_llm) as judge:
        argv = [str(bare), "--backend", "openai", "--model", "audio-stub", "--base-url", model.base_url,
                "--judge", f"model=judge,base_url={judge.base_url},name=stub", "--prompts", "audiobench", "--out", str(tmp_path / "r")]
        code, printed, err = evaluate(argv, capsys)
    assert code == 0, err
    assert "bare: text_only control skipped: the set has no transcript or words column" in printed
    results = json.loads((tmp_path / "r" / "results.json").read_text())["bare"]
    assert results["controls"]["text_only"] == {"skipped": "the set has no transcript or words column"}
    assert results["controls"]["silenced"]["judges"]["stub"]["audiobench"]["score"] == 20.0


def test_missing_weights_end_in_one_line_before_any_audio(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    source = audiobench_set(tmp_path / "set")
    with OpenAIStub(judge_and_text_llm) as judge:
        argv = [str(source), "--model", "someone/absent-audio-model", "--judge", f"model=judge,base_url={judge.base_url}", "--out", str(tmp_path / "r")]
        code, _, err = evaluate(argv, capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("cpqa evaluate: speech-LLM 'someone/absent-audio-model': weights not found")
    assert "huggingface-cli download someone/absent-audio-model" in err
    assert not (tmp_path / "r").exists()  # nothing was answered


def test_unreachable_judge_ends_in_one_line(tmp_path, capsys):
    source = audiobench_set(tmp_path / "set")
    argv = [str(source), "--backend", "openai", "--base-url", "http://127.0.0.1:9/v1", "--judge", "model=judge,base_url=http://127.0.0.1:9/v1,name=down", "--out", str(tmp_path / "r")]
    code, _, err = evaluate(argv, capsys)
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("cpqa evaluate: judge 'down': cannot reach http://127.0.0.1:9/v1")


def test_a_set_without_the_audiobench_columns_is_named(tmp_path, capsys):
    folder = tmp_path / "odd"
    folder.mkdir()
    datasets.Dataset.from_dict({"question": ["q"], "answer": ["a"]}).to_parquet(str(folder / "test.parquet"))
    with OpenAIStub(judge_and_text_llm) as judge:
        argv = [str(folder), "--backend", "predictions", "--predictions", str(folder / "none.jsonl"), "--judge", f"model=judge,base_url={judge.base_url}"]
        code, _, err = evaluate(argv, capsys)
    assert code == 2
    assert f"{folder}: missing column(s) ['context', 'instruction']" in err


def test_the_metric_takes_a_served_model_as_a_dict(tmp_path):
    import evaluate
    from conftest import REPO

    metric = evaluate.load(str(REPO / "metrics" / "cpqa"), keep_in_memory=True)
    with AudioModelStub() as model:
        results = metric.compute(
            questions=["How many people speak?"], references=["Two."], audio=[(tone(45), SR)],
            model={"model": "audio-stub", "base_url": model.base_url}, answer_cache_dir=str(tmp_path / "answers"),
            judges=[lambda messages: "Rating: 3"], prompts=["audiobench"],
        )
    assert [(p["window"], p["text"]) for p in results["items"][0]["predictions"]] == [
        ("first_30s", "30.0 s of voice at 16000 Hz: How many people speak?"),
        ("last_30s", "30.0 s of voice at 16000 Hz: How many people speak?"),
    ]
    assert results["config"]["speech_llm"] == "audio-stub"


def test_a_two_set_predictions_file_keeps_each_sets_answers_apart(tmp_path, capsys):
    # two sets over the same clips and questions: the derived question ids are the same in both
    a, b = audiobench_set(tmp_path / "a"), audiobench_set(tmp_path / "b")
    audio_hash = [hashlib.sha256(CLIPS[c]).hexdigest() for c, *_ in ROWS]
    ids = ["q-" + hashlib.sha256(f"{h}\n{q}".encode()).hexdigest()[:16] for h, (_, q, _, _) in zip(audio_hash, ROWS)]
    heard = {"first": "30.0 s of voice", "second": "30.0 s of silence"}  # rated 4 and 1 by the stub judge
    lines = [{"qa_set": label, "question_id": q, "window": "full", "answer": f"{said}: {k}", "error": None}
             for label, said in heard.items() for k, q in enumerate(ids)]
    published = tmp_path / "predictions.jsonl"
    published.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with OpenAIStub(judge_and_text_llm) as judge:
        common = ["--predictions", str(published), "--judge", f"model=judge,base_url={judge.base_url},name=stub",
                  "--prompts", "audiobench", "--no-controls"]
        code, printed, err = evaluate([str(a), str(b), "--labels", "first", "second", "--out", str(tmp_path / "r")] + common, capsys)
        assert code == 0, err
        results = json.loads((tmp_path / "r" / "results.json").read_text())
        for label, said in heard.items():
            assert [i["predictions"] for i in results[label]["items"]] == [
                [{"window": "full", "text": f"{said}: {k}", "error": None}] for k in range(len(ROWS))
            ]
        assert results["first"]["judges"]["stub"]["audiobench"]["score"] == 80.0
        assert results["second"]["judges"]["stub"]["audiobench"]["score"] == 20.0
        # labels the file does not hold: one line naming the file and the labels it has
        code, printed, err = evaluate([str(a), "--labels", "other", "--out", str(tmp_path / "s")] + common, capsys)
    assert code != 0
    assert err == (f"cpqa evaluate: {published}: no prediction for 4 question(s) of other, e.g. {ids[0]} "
                   "(its qa_set labels: first, second; --labels names the sets) (--debug shows the traceback)\n")


def test_predictions_without_a_set_answer_every_set(tmp_path, capsys):
    a, b = audiobench_set(tmp_path / "a"), audiobench_set(tmp_path / "b")
    audio_hash = [hashlib.sha256(CLIPS[c]).hexdigest() for c, *_ in ROWS]
    ids = ["q-" + hashlib.sha256(f"{h}\n{q}".encode()).hexdigest()[:16] for h, (_, q, _, _) in zip(audio_hash, ROWS)]
    given = tmp_path / "given.jsonl"
    given.write_text("".join(json.dumps({"question_id": q, "prediction": [f"of voice {k}", f"of silence {k}"]}) + "\n"
                             for k, q in enumerate(ids)))
    with OpenAIStub(judge_and_text_llm) as judge:
        argv = [str(a), str(b), "--labels", "x", "y", "--predictions", str(given), "--judge", f"model=judge,base_url={judge.base_url},name=stub",
                "--prompts", "audiobench", "--no-controls", "--out", str(tmp_path / "r")]
        code, printed, err = evaluate(argv, capsys)
        assert code == 0, err
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    for label in ("x", "y"):
        assert [[p["text"] for p in i["predictions"]] for i in results[label]["items"]] == [
            [f"of voice {k}", f"of silence {k}"] for k in range(len(ROWS))
        ]
        assert results[label]["judges"]["stub"]["audiobench"]["score"] == 80.0  # the better window



# --- predictions files: one answer per set, question and window ----------------------------------


def derived_ids(rows=ROWS, clips=CLIPS) -> list[str]:
    audio_hash = [hashlib.sha256(clips[c]).hexdigest() for c, *_ in rows]
    pairs = [f"{h}\n{row[1]}" for h, row in zip(audio_hash, rows)]
    return ["q-" + hashlib.sha256(pair.encode()).hexdigest()[:16] for pair in pairs]


def stub_judge(judge) -> list[str]:
    spec = f"model=judge,base_url={judge.base_url},name=stub"
    return ["--judge", spec, "--prompts", "audiobench", "--no-controls"]


def test_a_predictions_file_appended_to_itself_is_refused_at_its_first_repeat(tmp_path, capsys):
    source = audiobench_set(tmp_path / "set")
    ids = derived_ids()
    lines = [{"qa_set": "set", "question_id": q, "window": "full", "answer": "5 s of silence", "error": None}
             for q in ids]
    published = tmp_path / "predictions.jsonl"
    published.write_text("".join(json.dumps(line) + "\n" for line in lines) * 4)  # appended to itself 3 times
    with OpenAIStub(judge_and_text_llm) as judge:
        argv = [str(source), "--predictions", str(published), "--out", str(tmp_path / "r")]
        code, _, err = evaluate(argv + stub_judge(judge), capsys)
        assert judge.requests == []
    assert code == 2
    assert err == (
        f"cpqa evaluate: {published}:5: a second answer for question {ids[0]!r} of set 'set', window 'full' "
        "(the first is on line 1); keep one line per question and window (--debug shows the traceback)\n"
    )
    assert not (tmp_path / "r" / "results.json").exists()


ASK_TEXT = "; give the answer text, or a list of window answers"
ONE_LINE_EACH = "; keep one line per question and window"
BAD_PREDICTION_LINES = [
    (b'{"question_id": "q1", "prediction": null}', 1, "prediction is null" + ASK_TEXT),
    (b'{"question_id": "q1", "prediction": []}', 1, "prediction is an empty list" + ASK_TEXT),
    (b'{"question_id": "q1", "prediction": 4}', 1, "prediction is a number" + ASK_TEXT),
    (b'{"question_id": "q1", "prediction": {"text": "a"}}', 1, "prediction is an object" + ASK_TEXT),
    (b'{"question_id": "q1", "prediction": [["a"], "b"]}', 1, "prediction[0] is a list, not text"),
    (b'{"question_id": "q1", "prediction": ["a", null]}', 1, "prediction[1] is null, not text"),
    (b'{"question_id": "q1", "prediction": "ok"}\n{"question_id": "q2", "prediction": "caf\xe9"}', 2,
     "not UTF-8 (byte 0xe9 at column 41)"),
    (b'{"question_id": "q1", "prediction": "a"}\n\n{"question_id": "q1", "prediction": "b"}', 3,
     "a second answer for question 'q1', window 'full' (the first is on line 1)" + ONE_LINE_EACH),
    (b'{"question_id": "q1", "prediction": ["a", "b"]}\n'
     b'{"question_id": "q1", "window": "window_1", "answer": "c"}', 2,
     "a second answer for question 'q1', window 'window_1' (the first is on line 1)" + ONE_LINE_EACH),
    (b'{"qa_set": "s", "question_id": "q1", "window": "last_30s", "answer": "a", "error": null}\n' * 2, 2,
     "a second answer for question 'q1' of set 's', window 'last_30s' (the first is on line 1)"
     + ONE_LINE_EACH),
    (b'{"question_id": "q1", "window": "full", "answer": null, "error": null}', 1,
     "answer is null without an error; give the answer text"),
    (b'{"question_id": "q1", "window": "full", "answer": 3}', 1, "answer is a number, not text"),
    (b'{"question_id": "q1", "window": "", "answer": "a"}', 1, "window must be a non-empty string, not ''"),
    (b'{"question_id": 7.5, "prediction": "a"}', 1,
     "question_id must be a non-empty string (or an integer), not 7.5"),
    (b'{"qa_set": 2, "question_id": "q1", "prediction": "a"}', 1, "qa_set is a number, not a set label"),
    (b'["q1", "a"]', 1, "a list, not an object with question_id and prediction"),
    (b'{"question_id": "q1"}', 1, "each line needs question_id and prediction (or window and answer)"),
]


@pytest.mark.parametrize(("content", "line", "problem"), BAD_PREDICTION_LINES)
def test_a_bad_predictions_line_is_one_error_naming_file_and_line(tmp_path, content, line, problem):
    from build.commands.evaluate import read_predictions

    path = tmp_path / "predictions.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:
        read_predictions(str(path))
    assert str(error.value) == f"{path}:{line}: {problem}"


def test_what_a_predictions_file_may_hold(tmp_path):
    from build.commands.evaluate import read_predictions

    path = tmp_path / "predictions.jsonl"
    lines = [
        {"qa_set": "a", "question_id": "q1", "window": "first_30s", "answer": "early", "error": None},
        {"qa_set": "a", "question_id": "q1", "window": "last_30s", "answer": None, "error": "HTTP 500: down"},
        {"qa_set": "b", "question_id": "q1", "window": "first_30s", "answer": "same id, other set"},
        {"question_id": "q2", "prediction": ""},  # an empty answer is an answer
        {"question_id": 3, "prediction": ["x", "y"]},
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())  # after a byte-order mark
    assert read_predictions(str(path)) == {
        ("a", "q1"): [("first_30s", "early", None), ("last_30s", None, "HTTP 500: down")],
        ("b", "q1"): [("first_30s", "same id, other set", None)],
        (None, "q2"): [("full", "", None)],
        (None, 3): [("window_0", "x", None), ("window_1", "y", None)],
    }


@pytest.mark.parametrize("limit", ["0", "-1"])
def test_a_limit_below_one_is_refused_before_anything_runs(tmp_path, capsys, limit):
    source = audiobench_set(tmp_path / "set")
    with OpenAIStub(judge_and_text_llm) as judge:
        argv = [str(source), "--backend", "openai", "--base-url", judge.base_url, "--limit", limit,
                "--out", str(tmp_path / "r"), *stub_judge(judge)]
        code, _, err = evaluate(argv, capsys)
        assert judge.requests == []
    assert code == 2
    assert err == (f"cpqa evaluate: --limit {limit}: give a positive number of questions per set (none: all) "
                   "(--debug shows the traceback)\n")
    assert not (tmp_path / "r").exists()


def test_the_same_question_twice_on_a_clip_gets_its_own_id_and_rejudges(tmp_path, capsys):
    again = (0, "How does the speaker feel?", "Relaxed.", "we will meet at noon")  # another annotator's pair
    rows = ROWS + [again]
    source = qa_set_folder(tmp_path / "set", rows)
    ids = derived_ids(rows)
    assert ids[4] == ids[0]
    with AudioModelStub() as model, OpenAIStub(judge_and_text_llm) as judge:
        served = ["--backend", "openai", "--model", "audio-stub", "--base-url", model.base_url]
        argv = [str(source), *served, "--out", str(tmp_path / "a")]
        code, printed, err = evaluate(argv + stub_judge(judge), capsys)
        assert code == 0, err
        published = tmp_path / "a" / "predictions.jsonl"
        argv = [str(source), "--predictions", str(published), "--out", str(tmp_path / "b")]
        code, _, err = evaluate(argv + stub_judge(judge), capsys)
        assert code == 0, err
    note = "question ids derived from the clip audio and the question"
    assert f"set: {note} (1 repeated question(s) on one clip numbered -2, -3, ...)" in printed.splitlines()
    written = [json.loads(line)["question_id"] for line in published.read_text().splitlines()]
    assert written == [ids[0], ids[1], ids[2], ids[2], ids[3], ids[0] + "-2"]
    first = json.loads((tmp_path / "a" / "results.json").read_text())["set"]
    second = json.loads((tmp_path / "b" / "results.json").read_text())["set"]
    assert [i["predictions"] for i in second["items"]] == [i["predictions"] for i in first["items"]]
    assert [len(i["predictions"]) for i in second["items"]] == [1, 1, 2, 1, 1]


def test_a_repeated_question_id_column_is_refused(tmp_path, capsys):
    source = qa_set_folder(tmp_path / "set", ROWS[:2], extra={"question_id": ["same", "same"]})
    with OpenAIStub(judge_and_text_llm) as judge:
        argv = [str(source), "--predictions", str(tmp_path / "p.jsonl"), "--out", str(tmp_path / "r")]
        code, _, err = evaluate(argv + stub_judge(judge), capsys)
    assert code == 2
    assert err == (f"cpqa evaluate: {source}: question_id 'same' is on rows 0 and 1; "
                   "each question needs its own id (--debug shows the traceback)\n")


# --- two sets over the same audio ----------------------------------------------------------------


def qa_set_folder(folder, rows, clips=CLIPS, extra=None, form="parquet"):
    """A set of ``rows`` (clip index, question, answer, transcript) over ``clips``, with ``extra`` columns."""
    columns = {
        "context": [{"bytes": clips[c], "path": f"clip{c}.wav"} for c, *_ in rows],
        "instruction": [q for _, q, _, _ in rows],
        "answer": [a for _, _, a, _ in rows],
        "transcript": [t for *_, t in rows],
        **(extra or {}),
    }
    text = datasets.Value("string")
    features = {name: datasets.Audio(sampling_rate=SR) if name == "context" else text for name in columns}
    data = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    if form == "parquet":
        folder.mkdir(parents=True)
        data.to_parquet(str(folder / "test-00000-of-00001.parquet"))
    else:
        datasets.DatasetDict({"test": data}).save_to_disk(str(folder))
    return folder


def test_two_sets_over_the_same_audio_pair_their_clips_by_its_hash(tmp_path, capsys):
    clips = CLIPS + [wav_bytes(tone(20, 550))]  # 10 s, 45 s, 5 s, 20 s
    built_rows = ROWS + [(3, "What is said last?", "Goodbye.", "goodbye then")]
    built = qa_set_folder(tmp_path / "built", built_rows, clips, extra={
        "segment_id": ["seg-a", "seg-a", "seg-b", "seg-c", "seg-d"],  # a built set names clips by segment
        "question_id": [f"q{k}" for k in range(5)], "category": ["emotion"] * 5,
    })
    human_rows = [(0, "Is she calm?", "Yes.", ""), (1, "Who speaks?", "A man.", ""), (2, "Why?", "Late.", "")]
    human = qa_set_folder(tmp_path / "elsewhere" / "human", human_rows, clips, form="save_to_disk")

    def by_length(request):  # rated by what the model heard: 10 s 4, 30 s windows 2, 5 s 1, 20 s 5
        heard = judged_answer(request).split(" s of")[0]
        return f"Rating: {({'10.0': 4, '30.0': 2, '5.0': 1, '20.0': 5})[heard]}"

    with AudioModelStub() as model, OpenAIStub(by_length) as judge:
        served = ["--backend", "openai", "--model", "audio-stub", "--base-url", model.base_url]
        argv = [str(built), str(human), "--labels", "built", "human", *served, "--out", str(tmp_path / "r")]
        code, printed, err = evaluate(argv + stub_judge(judge), capsys)
    assert code == 0, err
    shared = ("built and human share 3 clip(s) by audio (sha256); built holds 4, human 3: "
              "the per-clip correlation covers the shared ones only.")
    assert shared in printed.splitlines()
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    hashes = [hashlib.sha256(clip).hexdigest() for clip in clips]
    assert [i["audio_sha256"] for i in results["human"]["items"]] == hashes[:3]
    assert [i["clip_id"] for i in results["built"]["items"]][:2] == ["seg-a", "seg-a"]  # its own ids stay
    table = (tmp_path / "r" / "results.md").read_text()
    # per clip, in both sets: 80 (10 s), 40 (45 s: both windows 2), 20 (5 s); the 20 s clip is built's only
    correlation = ("| judge | prompt | clips | Pearson | Spearman |\n|---|---|---|---|---|\n"
                   "| stub | audiobench | 3 | 1.000 | 1.000 |")
    assert f"{shared}\n\n{correlation}" in table
