"""Empathetic-response samples: target span, history, emotions, strategies, validation, generation."""

import hashlib
import json

import numpy as np
import pytest
from openai_stub import OpenAIStub, Reply

from build.core import devices
from build.core.config import EmpathyConfig, QaConfig
from build.core.schema import EMOTION_LABELS
from build.publishing import licences
from build.stages import empathy
from build.stages.empathy import (
    FAMILIES,
    context_turns,
    family_of,
    generate_empathy,
    parse_reply,
    pick_demos,
    prepare_sample,
    rejection_reason,
    seeded_strategy,
    select_target,
    sentence_spans,
    target_emotions,
)


def words_of(*sentences, start=10.0, step=0.5, speaker=None):
    """Words 0.4 s long every ``step`` s; ``sentences`` are (emotion, text) pairs."""
    words, t = [], start
    for emotion, text in sentences:
        for token in text.split():
            word = {"word": " " + token, "start": round(t, 2), "end": round(t + 0.4, 2), "score": 0.9, "emotion": emotion, "gender": "female"}
            if speaker:
                word["speaker"] = speaker
            words.append(word)
            t += step
    return words


def texts(words, spans):
    return [" ".join(words[i]["word"].strip() for i in span) for span in spans]


# ---------------------------------------------------------------- sentence spans and the target
def test_sentences_end_at_final_punctuation_but_not_at_abbreviations():
    words = words_of(("sad", 'I met Mr. Jones. He said "no!" Why? Fine…'))
    assert texts(words, sentence_spans(words, pause_s=0.7)) == ["I met Mr. Jones.", 'He said "no!"', "Why?", "Fine…"]


def test_without_punctuation_sentences_split_at_pauses():
    words = words_of(("sad", "so we waited"), start=10.0) + words_of(("sad", "and nobody came"), start=11.9)
    # "waited" ends at 11.4; "and" starts at 11.9: a 0.5 s gap
    assert texts(words, sentence_spans(words, pause_s=0.5)) == ["so we waited", "and nobody came"]
    assert texts(words, sentence_spans(words, pause_s=0.6)) == ["so we waited and nobody came"]


def test_untimed_words_stay_in_their_sentence():
    words = words_of(("sad", "I paid"), ("sad", "dollars."), ("sad", "Gone."))
    words.insert(2, {"word": " 40", "start": None, "end": None, "score": None, "emotion": "sad", "gender": "female"})
    assert texts(words, sentence_spans(words, pause_s=0.7)) == ["I paid 40 dollars.", "Gone."]


def test_the_target_is_the_last_sentence_carrying_the_primary_emotion():
    words = words_of(("angry", "They lost my order."), ("angry", "Again and again."), ("happy", "But my sister helped."))
    span = select_target(words, "angry", pause_s=0.7)
    assert texts(words, [span]) == ["Again and again."]
    assert select_target(words, "happy", pause_s=0.7) == [7, 8, 9, 10]
    assert select_target(words, "sad", pause_s=0.7) is None


def test_carrying_needs_a_strict_majority_of_the_words():
    words = words_of(("sad", "Two sad"), ("neutral", "two neutral."))  # 2 of 4: not a majority
    assert select_target(words, "sad", pause_s=0.7) is None
    words = words_of(("sad", "Three sad words"), ("neutral", "two neutral."))
    assert select_target(words, "sad", pause_s=0.7) == [0, 1, 2, 3, 4]


def test_a_sentence_without_any_timed_word_cannot_be_the_target():
    words = words_of(("sad", "I cried."), ("sad", "Then."))
    words[-1] = {**words[-1], "start": None, "end": None}
    assert texts(words, [select_target(words, "sad", pause_s=0.7)]) == ["I cried."]


# ---------------------------------------------------------------- history, emotions, the sample
def test_history_turns_follow_speakers_and_default_to_speaker():
    assert context_turns(words_of(("sad", "one two"), ("sad", "three"))) == [{"speaker": "Speaker", "text": "one two three"}]
    mixed = words_of(("sad", "hi there"), speaker="A") + words_of(("sad", "hello"), speaker="B", start=20) + words_of(("sad", "bye"), speaker="B", start=21)
    assert context_turns(mixed) == [{"speaker": "A", "text": "hi there"}, {"speaker": "B", "text": "hello bye"}]
    assert context_turns([]) == []


def window(start, emotion, consistent=True):
    return {"start": start, "end": start + 2.0, "emotion": emotion if consistent else "unknown", "raw_emotion": emotion, "consistent": consistent}


def test_secondary_is_the_next_most_frequent_consistent_label_over_the_target():
    windows = [window(0, "happy"), window(2, "sad"), window(4, "angry"), window(6, "sad"), window(8, "angry"), window(10, "angry"), window(12, "fearful")]
    # target 3-11 overlaps the windows at 2..10: sad x2, angry x3 (primary), none at 12
    assert target_emotions(windows, 3.0, 11.0, "angry") == {"primary": "angry", "secondary": "sad"}
    # a tie goes to the label whose first window is earlier
    assert target_emotions([window(0, "sad"), window(2, "fearful"), window(4, "fearful"), window(6, "sad")], 0.5, 7.5, "angry")["secondary"] == "sad"
    # inconsistent windows, "unknown" and "other" never count
    only_noise = [window(0, "sad", consistent=False), window(2, "other"), window(4, "angry")]
    assert target_emotions(only_noise, 0.0, 6.0, "angry") == {"primary": "angry", "secondary": None}


def clip_row(segment_id="call-0003", sentences=None, **extra):
    sentences = sentences or [
        ("sad", "Nobody called me back."),
        ("angry", "I told them twice and they still lost it."),
        ("neutral", "Anyway."),
    ]
    words = words_of(*sentences, start=12.0)
    windows = [window(11.5 + 2 * i, w) for i, w in enumerate(["sad", "fearful", "angry", "fearful", "angry", "angry", "neutral", "neutral"])]
    return {"segment_id": segment_id, "recording_id": segment_id.rsplit("-", 1)[0], "start": 11.5, "end": 42.5, "tagged_words": words, "emotion_windows": windows, "primary_emotion": "angry", "gender": "female", **extra}


def test_a_sample_has_history_target_and_times_relative_to_its_audio():
    sample, reason = prepare_sample(clip_row(), pause_s=0.7)
    assert reason is None
    # words every 0.5 s from 12.0: the target is words 4..12 (14.0 to 18.4); it overlaps the windows
    # fearful 13.5-15.5, angry 15.5-17.5, fearful 17.5-19.5 (sad 11.5-13.5 lies before it)
    assert sample["text_context"] == [{"speaker": "Speaker", "text": "Nobody called me back."}]
    assert sample["target_utterance"] == {"text": "I told them twice and they still lost it.", "start": 2.5, "end": 6.9, "emotions": {"primary": "angry", "secondary": "fearful"}}
    assert (sample["clip_start"], sample["clip_end"]) == (11.5, 18.7)  # target end 18.4 + 0.3 s


def test_the_audio_never_runs_past_the_clip_and_clips_without_target_or_words_are_named():
    row = clip_row(sentences=[("angry", "Enough!")])
    row["end"] = 12.5
    assert prepare_sample(row, pause_s=0.7)[0]["clip_end"] == 12.5
    assert prepare_sample(clip_row(primary_emotion="happy"), pause_s=0.7) == (None, empathy.NO_TARGET)
    assert prepare_sample({**clip_row(), "tagged_words": []}, pause_s=0.7) == (None, empathy.NO_WORDS)


# ---------------------------------------------------------------- families and strategies
EXPECTED_FAMILY = {
    "angry": "negative", "disgusted": "negative", "fearful": "negative", "sad": "negative",
    "happy": "positive",
    "neutral": "neutral or mixed", "surprised": "neutral or mixed", "other": "neutral or mixed", "unknown": "neutral or mixed",
}  # fmt: skip


@pytest.mark.parametrize("label", EMOTION_LABELS)
def test_every_label_has_a_family_and_a_seeded_strategy_from_it(label):
    assert family_of(label) == EXPECTED_FAMILY[label]
    strategies = FAMILIES[EXPECTED_FAMILY[label]]
    picks = {seeded_strategy(f"rec-{i:04d}", label) for i in range(200)}
    assert picks == set(strategies)  # every strategy of the family is drawn, no other
    digest = int(hashlib.sha256(b"rec-0007").hexdigest(), 16)
    assert seeded_strategy("rec-0007", label) == strategies[digest % len(strategies)] == seeded_strategy("rec-0007", label)


def test_the_families_are_the_design_s_lists():
    assert FAMILIES["negative"] == ("validation", "empathetic response", "problem-solving", "redirection", "de-escalation", "normalisation")
    assert FAMILIES["positive"] == ("celebration", "inquiry", "gratitude", "reciprocal enthusiasm", "future-oriented discussion")
    assert FAMILIES["neutral or mixed"] == ("clarification", "open-ended questioning", "mindful presence", "summarisation")
    with pytest.raises(ValueError, match="unknown emotion label 'joy'"):
        family_of("joy")


def test_demonstrations_match_the_emotion_and_put_the_assigned_strategy_first():
    demos = pick_demos("sad", "redirection", "call-0003", 3)
    assert len(demos) == 3 and {d["emotion"] for d in demos} == {"sad"}
    assert demos[0]["strategy"] == "redirection"
    assert pick_demos("sad", "redirection", "call-0003", 3) == demos
    assert {d["emotion"] for d in pick_demos("unknown", None, "x", 2)} == {"neutral"}
    for label in ("angry", "disgusted", "fearful", "happy", "neutral", "sad", "surprised"):
        assert len(pick_demos(label, None, "x", 3)) >= 2, label


# ---------------------------------------------------------------- parse and validate
def test_replies_parse_from_json_fenced_json_and_labelled_lines():
    expected = {"strategy": "validation", "awareness": "They feel let down.", "response": "That sounds exhausting."}
    as_json = json.dumps({"strategy": "validation", "emotion_awareness": "They feel let down.", "response": "That sounds exhausting."})
    assert parse_reply(as_json) == expected
    assert parse_reply(f"Here you go:\n```json\n{as_json}\n```") == expected
    assert parse_reply("**Strategy:** validation\nAwareness: They feel\nlet down.\nResponse: That sounds exhausting.") == expected
    assert parse_reply("I cannot help with that.") is None
    assert parse_reply("") is None


GOOD = {"strategy": "validation", "awareness": "They are worn out by being ignored.", "response": "Being ignored twice would wear anyone down."}


@pytest.mark.parametrize(
    "change, assigned, reason",
    [
        ({}, "validation", None),
        ({}, None, None),
        ({"strategy": "Problem solving"}, None, None),  # spelled loosely, still the family's
        ({"strategy": ""}, "validation", None),  # seeded: the assigned strategy stands
        ({"strategy": ""}, None, empathy.NO_STRATEGY),
        ({"strategy": "celebration"}, None, empathy.OUTSIDE_FAMILY),
        ({"strategy": "being nice"}, None, empathy.OUTSIDE_FAMILY),
        ({"strategy": "redirection"}, "validation", empathy.NOT_ASSIGNED),
        ({"response": " ... "}, None, empathy.EMPTY_RESPONSE),
        ({"response": "a" * 61}, None, empathy.LONG_RESPONSE),
        ({"awareness": ""}, None, empathy.NO_AWARENESS),
        ({"response": "The classifier says you are angry, I hear you."}, None, empathy.NAMES_LABELS),
        ({"response": "emotion2vec thinks so too."}, None, empathy.NAMES_LABELS),
        ({"response": "[angry] I hear you."}, None, empathy.NAMES_LABELS),
        ({"response": "I hear you (sad)."}, None, empathy.NAMES_LABELS),
        ({"awareness": "Emotion: angry."}, None, empathy.NAMES_LABELS),
        ({"awareness": "The detected emotion is anger."}, None, empathy.NAMES_LABELS),
        ({"response": "Your label as a troublemaker is unfair."}, None, empathy.NAMES_LABELS),
        ({"response": "You sound angry, and sad too."}, None, None),  # plain words are fine
    ],
)
def test_validation(change, assigned, reason):
    assert rejection_reason({**GOOD, **change}, "negative", assigned, max_response_chars=60) == reason


def test_an_unparseable_reply_is_rejected():
    assert rejection_reason(None, "negative", None, 400) == empathy.UNPARSEABLE


# ---------------------------------------------------------------- generation against a loopback server
@pytest.fixture(autouse=True)
def fresh_clients():
    devices.clear_cache()
    yield
    devices.clear_cache()


def batch_of(rows):
    return {key: [row[key] for row in rows] for key in rows[0]}


def run(stub, rows, tmp_path, **overrides):
    kwargs = dict(
        base_url=stub.base_url, model="stub-model", api_key_env="CPQA_NO_KEY", cache_dir=str(tmp_path / "cache"), strategy="seeded",
        demos_per_sample=2, max_response_chars=200, pause_s=0.7, temperature=0.7, max_tokens=300, structured_output="text",
        concurrency=2, max_retries=0, timeout_s=10,
    )  # fmt: skip
    return generate_empathy(batch_of(rows), **sections(**{**kwargs, **overrides}))


def sections(*, base_url, cache_dir, model, api_key_env, concurrency, max_retries, timeout_s, **empathy) -> dict:
    """generate_empathy's arguments from flat settings: the empathy section, the QA section's endpoint."""
    qa = QaConfig(model=model, api_key_env=api_key_env, concurrency=concurrency, max_retries=max_retries, timeout_s=timeout_s)
    return {"empathy": EmpathyConfig(**empathy), "qa": qa, "base_url": base_url, "cache_dir": cache_dir}


def test_generation_writes_exact_rows_and_records_every_failure(tmp_path):
    def reply(body):
        user = body["messages"][-1]["content"]
        if "lost it" in user:
            strategy = user.split('Response strategy: use "')[1].split('"')[0]
            return f"Strategy: {strategy}\nAwareness: They are fed up with being let down.\nResponse: Twice? That would make anyone furious."
        return Reply(500, "model overloaded")

    rows = [clip_row("call-0003"), clip_row("call-0004", primary_emotion="happy"), clip_row("dial-0001", sentences=[("angry", "You never listen!")])]
    with OpenAIStub(reply) as stub:
        out = run(stub, rows, tmp_path)
    assert len(stub.requests) == 2  # call-0004 has no target: nothing is sent for it
    strategy = seeded_strategy("call-0003", "angry")
    assert out["desired_response"] == [
        {"text": "Twice? That would make anyone furious.", "response_strategy": strategy, "emotion_awareness": "They are fed up with being let down."},
        None,
        None,
    ]
    assert out["empathy_error"][1] == empathy.NO_TARGET
    assert out["empathy_error"][2].startswith("HTTP 500") and "model overloaded" in out["empathy_error"][2]
    assert out["empathy_error"][0] is None and out["empathy_raw"][0].startswith(f"Strategy: {strategy}")
    assert out["target_utterance"][0]["text"] == "I told them twice and they still lost it."
    assert out["target_utterance"][2] == {"text": "You never listen!", "start": 0.5, "end": 1.9, "emotions": {"primary": "angry", "secondary": "sad"}}
    assert out["text_context"] == [[{"speaker": "Speaker", "text": "Nobody called me back."}], [], []]
    assert out["clip_start"] == [11.5, None, 11.5] and out["clip_end"] == [18.7, None, 13.7]
    assert out["prompt_version"] == ["empathy_v1"] * 3 and out["llm_model"] == ["stub-model"] * 3
    # the prompt holds the history, the utterance, the closed lists and demonstrations of the same emotion
    request = next(r for r in stub.requests if "lost it" in r["messages"][-1]["content"])
    user = request["messages"][-1]["content"]
    assert "Speaker: Nobody called me back." in user and '"I told them twice and they still lost it."' in user
    assert "mostly angry, with a touch of fearful" in user and user.count("They said:") == 2
    assert "neutral, other" not in user and "angry, disgusted, fearful, happy, neutral, sad, surprised" in request["messages"][0]["content"]


def test_llm_mode_offers_the_family_in_the_schema_and_rejects_a_strategy_outside_it(tmp_path):
    answers = {"call-0003": "problem-solving", "call-0005": "celebration"}

    def reply(body):
        clip = "call-0005" if "never again" in body["messages"][-1]["content"] else "call-0003"
        return json.dumps({"strategy": answers[clip], "emotion_awareness": "They are angry about being ignored.", "response": "Let's work out who to call next."})

    rows = [clip_row("call-0003"), clip_row("call-0005", sentences=[("angry", "Not this shop, never again.")])]
    with OpenAIStub(reply) as stub:
        out = run(stub, rows, tmp_path, strategy="llm", structured_output="json_schema")
    schema = stub.requests[0]["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["strategy"]["enum"] == list(FAMILIES["negative"])
    assert "choose the one that fits best from this closed list" in stub.requests[0]["messages"][-1]["content"]
    assert out["desired_response"][0]["response_strategy"] == "problem-solving"
    assert out["desired_response"][1] is None and out["empathy_error"][1] == empathy.OUTSIDE_FAMILY
    assert json.loads(out["empathy_raw"][1])["strategy"] == "celebration"  # the rejected reply is kept for the audit


def test_a_rerun_is_answered_from_the_cache(tmp_path):
    reply = "Strategy: {s}\nAwareness: They are fed up.\nResponse: That is maddening.".format(s=seeded_strategy("call-0003", "angry"))
    with OpenAIStub(lambda body: reply) as stub:
        first = run(stub, [clip_row()], tmp_path)
        devices.clear_cache()
        again = run(stub, [clip_row()], tmp_path)
    assert len(stub.requests) == 1 and again == first


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="empathy.strategy must be one of"):
        generate_empathy(batch_of([clip_row()]), **sections(base_url="http://x", model="m", api_key_env="K", cache_dir=None, strategy="random", demos_per_sample=1, max_response_chars=10, pause_s=0.7, temperature=0, max_tokens=1, structured_output="text", concurrency=1, max_retries=0, timeout_s=1))
    with pytest.raises(ValueError, match="demos_per_sample must be 1, 2 or 3, got 4"):
        generate_empathy(batch_of([clip_row()]), **sections(base_url="http://x", model="m", api_key_env="K", cache_dir=None, strategy="llm", demos_per_sample=4, max_response_chars=10, pause_s=0.7, temperature=0, max_tokens=1, structured_output="text", concurrency=1, max_retries=0, timeout_s=1))


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("empathy.strategy=random", "config value empathy.strategy = 'random' is not one of seeded, llm"),
        ("empathy.demos_per_sample=4", "config value empathy.demos_per_sample = 4 is not in [1, 3]"),
        ("empathy.max_response_chars=0", "config value empathy.max_response_chars = 0 is not in [1, inf)"),
        ("empathy.structured_output=yaml", "config value empathy.structured_output = 'yaml' is not one of auto, json_schema, text"),
    ],
)
def test_bad_empathy_settings_fail_the_preflight(tiny_config, override, problem):
    from build.commands import preflight

    key = override.split("=")[0]
    assert preflight.check_config(tiny_config.with_overrides([override])) == [f"{problem}: fix it with --set {key}=... or in --config"]


def test_the_empathy_config_follows_the_segments_splits_and_the_publication_mode(tmp_path):
    from conftest import AMI
    from datasets import Dataset, load_dataset

    from build.core import schema
    from build.core.config import ExportConfig
    from build.publishing import export, publish

    def sample(sid, rid, start):
        target = {"text": "Really?", "start": 1.0, "end": 1.5, "emotions": {"primary": "surprised", "secondary": None}}
        response = {"text": "Tell me more.", "response_strategy": "open-ended questioning", "emotion_awareness": "They sound taken aback."}
        return {"segment_id": sid, "recording_id": rid, "audio_path": str(AMI), "clip_start": start, "clip_end": start + 2.0, "text_context": [],
                "target_utterance": target, "desired_response": response, "empathy_raw": "", "prompt_version": "empathy_v1", "llm_model": "m"}  # fmt: skip

    rows = [sample("a-0000", "a", 1.0), sample("b-0000", "b", 5.0), sample("c-0000", "c", 9.0)]
    samples = Dataset.from_list(rows, features=schema.EMPATHY_SAMPLE)
    config = ExportConfig(splits={"train": 0.5, "test": 0.5})
    # a and b are in the segments config (a by clip, b by recording); c is split on its own
    export.write_empathy(samples, tmp_path, {"a-0000": "test"}, {"a": "test", "b": "train"}, config)
    written = {p.name.split("-")[0] for p in (tmp_path / "data" / "empathy").glob("*.parquet")}
    assert written <= {"train", "test"}
    by_split = {name: load_dataset("parquet", data_files=str(tmp_path / "data" / "empathy" / f"{name}-*.parquet"), split="train")["segment_id"] for name in written}
    assert "a-0000" in by_split["test"] and "b-0000" in by_split["train"]
    assert sum(len(v) for v in by_split.values()) == 3
    one = load_dataset("parquet", data_files=str(tmp_path / "data" / "empathy" / "test-*.parquet"), split="train")
    assert one.column_names[:5] == ["id", "audio", "text_context", "target_utterance", "desired_response"]

    export.write_empathy(samples, tmp_path, {}, {}, ExportConfig(publish="metadata-only"))
    bare = load_dataset("parquet", data_files=str(tmp_path / "data" / "empathy" / "*.parquet"), split="train")
    assert "audio" not in bare.column_names and sorted(bare["id"]) == ["a-0000-empathy", "b-0000-empathy", "c-0000-empathy"]
    assert set(bare["license"]) == {"other"} and set(bare["source_sha256"]) == {licences.source_sha256(str(AMI))}
    # rehydrate puts back exactly the audio a full build embeds
    report = publish.rehydrate(tmp_path, AMI.parent)  # into a copy beside tmp_path
    assert (report.rows, report.missing, report.changed) == (3, {}, {})
    restored_files = str(report.into / "data" / "empathy" / "*.parquet")
    restored = load_dataset("parquet", data_files=restored_files, split="train").sort("id")
    embedded = one.sort("id")  # the full build's rows of split "test" (clip a-0000)
    a_restored = restored[restored["id"].index("a-0000-empathy")]["audio"]["array"]
    assert np.array_equal(a_restored, embedded[0]["audio"]["array"])
    export.write_empathy(None, tmp_path, {}, {}, config)
    assert not (tmp_path / "data" / "empathy").exists()  # no sample: no config left from an earlier build
