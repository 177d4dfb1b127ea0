"""The pipeline end to end on real audio with the tiny models: funnel, ledger, condensed rows."""

import json
import shutil
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from conftest import AMI, ravdess_recording

from build import pipeline
from build.core import schema
from build.core.config import PAPER_ALPHA
from build.core.windows import window_spans
from build.pipeline.columns import rows as rows_of
from build.sources.audio import decode_span


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    shutil.copy(ravdess_recording(1), folder / "actor01.flac")
    shutil.copy(AMI, folder / "meeting.flac")
    sf.write(folder / "silence.wav", np.zeros(16_000 * 40, dtype=np.float32), 16_000)
    sf.write(folder / "short.wav", decode_span(str(AMI), 0.0, 12.0), 16_000)
    (folder / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really audio")
    return folder


def _config(tiny_config, **condense):
    # α = 1 and x = y = 0 make every target-emotion window count, whatever the random weights say.
    config = tiny_config.with_overrides(["condense.x=0", "condense.y=0"])
    config.condense.alpha = {label: 1 for label in PAPER_ALPHA}
    for key, value in condense.items():
        setattr(config.condense, key, value)
    return config


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return tmp_path_factory.mktemp("out")


@pytest.fixture(scope="module")
def labelled(source, tiny_config, out):
    config = _config(tiny_config).with_overrides(["runtime.recordings_per_shard=2"])
    return pipeline.build(source, config, out, stop_after="condense", progress=False)


def test_every_recording_is_accounted_for(labelled, source):
    ledger = {entry["recording_id"]: entry for entry in labelled.ledger}
    assert sorted(ledger) == ["actor01", "corrupt", "meeting", "short", "silence"]
    assert ledger["corrupt"]["status"] == "failed" and ledger["corrupt"]["stage"] == "ingest"
    assert ledger["corrupt"]["reason"].startswith(f"{source / 'corrupt.wav'}: cannot open as audio")
    assert ledger["silence"] == {"recording_id": "silence", "status": "dropped", "stage": "vad", "reason": "no speech detected"}
    assert ledger["short"] == {"recording_id": "short", "status": "dropped", "stage": "length", "reason": "shorter than 30 s"}
    assert ledger["actor01"]["status"] == ledger["meeting"]["status"] == "kept"
    assert labelled.status == "condensed"


def test_funnel_counts(labelled):
    counts = labelled.funnel.counts
    assert list(counts) == ["ingest", "vad", "segments", "length", "label", "occurrence", "sampling"]
    assert counts["ingest"] == 5
    assert counts["vad"] == 3  # actor01, meeting, short
    assert counts["length"] == counts["sampling"] == 2
    assert labelled.funnel.drop_counts()["length"] == {"shorter than 30 s": counts["segments"] - 2}
    assert labelled.funnel.drop_counts()["ingest"] == {"unreadable audio": 1}
    assert labelled.report()["counts"]["recordings with speech"] == 3


def test_shards_and_task_files(labelled, out):
    plan = pq.read_table(out / "work" / "ingest" / "recordings.parquet").to_pydict()
    # sorted by id, two recordings a shard
    assert plan["recording_id"] == ["actor01", "corrupt", "meeting", "short", "silence"]
    assert plan["shard"] == ["r00000", "r00000", "r00001", "r00001", "r00002"]
    for stage in ("vad", "label", "condense"):
        names = sorted(p.name for p in (out / "work" / stage).glob("r*.parquet") if "dropped" not in p.name)
        assert names == ["r00000.parquet", "r00001.parquet", "r00002.parquet"], stage
        stats = json.loads((out / "work" / stage / "r00001.stats.json").read_text())
        assert stats["stage"] == stage and stats["audio_s"] > 60  # meeting (60 s) + short (12 s)
    assert pq.read_table(out / "work" / "sample" / "manifest.parquet").column("shard").to_pylist() == ["s00000", "s00000"]


def test_every_drop_is_kept_for_audit(labelled, out):
    dropped = out / "work" / "dropped"
    assert sorted(p.stem for p in dropped.glob("*.parquet")) == ["ingest", "length", "vad"]
    length = pq.read_table(dropped / "length.parquet").to_pylist()
    assert len(length) == labelled.funnel.counts["segments"] - 2
    assert {row["reason"] for row in length} == {"shorter than 30 s"} and all(row["segment_id"] for row in length)
    vad = pq.read_table(dropped / "vad.parquet").to_pylist()
    assert [(r["recording_id"], r["reason"], r["segment_id"]) for r in vad] == [("silence", "no speech detected", None)]


def test_condensed_rows_carry_windows_counts_and_labels(labelled):
    rows = {row["recording_id"]: row for row in labelled.segments}
    actor = rows["actor01"]
    assert actor["segment_id"] == "actor01-0000"
    assert 0.5 < actor["start"] < 1.5 and 55.0 < actor["end"] <= 57.2
    expected = window_spans(actor["start"], actor["end"], 2.0, 1.0)
    assert [(w["start"], w["end"]) for w in actor["emotion_windows"]] == [s[:2] for s in expected]
    assert len(actor["gender_windows"]) == len(window_spans(actor["start"], actor["end"], 2.0, 0.5))
    for row in rows.values():
        windows = row["emotion_windows"]
        assert all(len(w["emotion_scores"]) == 9 and abs(sum(w["emotion_scores"]) - 1) < 1e-4 for w in windows)
        assert all(w["emotion"] == (w["raw_emotion"] if w["consistent"] else "unknown") for w in windows)
        consistent = [w["emotion"] for w in windows if w["consistent"]]
        assert sum(row["emotion_counts"].values()) == len(consistent)
        assert row["emotions"] == [label for label in PAPER_ALPHA if label in consistent]
        assert row["primary_emotion"] in row["emotions"]
        assert row["gender"] in ("female", "male")


def _mtimes(out, stage):
    return {p.name: p.stat().st_mtime_ns for p in sorted((out / "work" / stage).glob("r*.parquet"))}


def test_a_rerun_recomputes_nothing_and_a_changed_value_only_what_it_affects(labelled, source, tiny_config, out):
    config = _config(tiny_config).with_overrides(["runtime.recordings_per_shard=2"])
    before = {stage: _mtimes(out, stage) for stage in ("vad", "label", "condense")}
    again = pipeline.build(source, config, out, stop_after="condense", progress=False)
    assert {stage: _mtimes(out, stage) for stage in before} == before
    assert again.segments["segment_id"] == labelled.segments["segment_id"]
    assert again.funnel == labelled.funnel

    stricter = pipeline.build(source, config.with_overrides(["condense.x=0.99"]), out, stop_after="condense", progress=False)
    assert _mtimes(out, "vad") == before["vad"] and _mtimes(out, "label") == before["label"]
    assert all(_mtimes(out, "condense")[name] != t for name, t in before["condense"].items())
    # x = 0.99: a positive window needs valence >= 0.99, a negative one <= 0.01
    for row in stricter.segments:
        for w in row["emotion_windows"]:
            if w["consistent"] and w["raw_emotion"] == "happy":
                assert w["valence"] >= np.float32(0.99)


def test_paper_alpha_and_quota_drops_are_counted(source, tiny_config, tmp_path):
    strict = pipeline.build(source, _config(tiny_config, alpha={"angry": 1000}), tmp_path / "strict", stop_after="condense", progress=False)
    assert strict.funnel.drop_counts()["occurrence"] == {"no emotion reached its occurrence threshold": 2}
    assert strict.status == "nothing condensed"
    ledger = {e["recording_id"]: e for e in strict.ledger}
    assert ledger["meeting"]["stage"] == "occurrence" and ledger["meeting"]["status"] == "dropped"
    quota = pipeline.build(source, _config(tiny_config, samples_per_category=0), tmp_path / "quota", stop_after="condense", progress=False)
    assert quota.funnel.drop_counts()["sampling"] == {"over the per-category quota": 2}
    assert len(quota.segments) == 0


def test_qa_failures_are_counted_and_recorded_per_recording(source, tiny_config, tmp_path):
    from openai_stub import OpenAIStub, Reply

    def reply(request):
        prompt = request["messages"][-1]["content"]
        return Reply(500, "model overloaded") if "by the door" in prompt else "I am not sure what you want me to write here."

    with OpenAIStub(reply) as stub:
        config = _config(tiny_config).with_overrides(["qa.max_retries=0", "qa.structured_output=text", f"qa.base_url={stub.base_url}"])
        result = pipeline.build(source, config, tmp_path, outputs=("qa",), progress=False)  # QA calls only
    assert result.status == "no pairs"
    assert result.funnel.drop_counts()["qa"] == {"LLM request failed": 1, "unparseable reply": 1}
    assert result.funnel.counts["qa"] == 0 and len(result.pairs) == 0
    ledger = {entry["recording_id"]: entry for entry in result.ledger}
    assert ledger["actor01"]["status"] == "failed" and ledger["actor01"]["stage"] == "qa"
    assert "500" in ledger["actor01"]["reason"] and "model overloaded" in ledger["actor01"]["reason"]
    assert ledger["meeting"] == {"recording_id": "meeting", "status": "failed", "stage": "qa", "reason": "unparseable reply"}
    assert ledger["silence"]["stage"] == "vad"  # earlier outcomes are unchanged
    qa_drops = pq.read_table(tmp_path / "work" / "dropped" / "qa.parquet").to_pylist()
    assert sorted(r["segment_id"] for r in qa_drops) == ["actor01-0000", "meeting-0000"]
    calls = result.report()["llm_calls"]
    assert (calls["requests"], calls["cached"], calls["sent"], calls["failed"], calls["failure_reasons"]) == (2, 0, 2, 1, {"HTTP 500": 1})
    assert pipeline.format_report(result).splitlines()[-1] == (
        "LLM calls this run: 2 requests: 0 from cache, 2 sent in 2 attempts; 0 retried; "
        "1 failed (HTTP 500 ×1); 0 tasks skipped as finished"
    )

    # The rerun sends the one request that failed; the other reply comes from the cache.
    with OpenAIStub(lambda request: "I am not sure what you want me to write here.") as stub:
        rerun = pipeline.build(source, config.with_overrides([f"qa.base_url={stub.base_url}"]), tmp_path, outputs=("qa",), progress=False)
    assert len(stub.requests) == 1 and "by the door" in stub.requests[0]["messages"][-1]["content"]
    assert rerun.funnel.drop_counts()["qa"] == {"unparseable reply": 2}
    calls = rerun.report()["llm_calls"]  # this run: the unfinished shard redone, one reply from the cache
    counted = (calls["requests"], calls["cached"], calls["sent"], calls["failed"], calls["tasks_skipped"])
    assert counted == (2, 1, 1, 0, 0)


def test_a_build_where_nothing_survives_still_accounts_for_everything(tmp_path, tiny_config):
    folder = tmp_path / "bad"
    folder.mkdir()
    sf.write(folder / "silence.wav", np.zeros(16_000 * 40, dtype=np.float32), 16_000)
    (folder / "empty.flac").write_bytes(b"")
    result = pipeline.build(folder, tiny_config, tmp_path / "out", progress=False)
    assert result.status == "nothing condensed"
    assert len(result.segments) == 0 and result.segments.features == schema.CONDENSED_SEGMENT
    assert [(e["recording_id"], e["status"], e["stage"]) for e in result.ledger] == [("empty", "failed", "ingest"), ("silence", "dropped", "vad")]


def test_a_removed_config_key_names_its_replacement(tiny_config):
    with pytest.raises(ValueError, match="accelerate launch --num_processes N"):
        tiny_config.with_overrides(["runtime.num_proc=2"])


def _empathy_reply(request):
    """The loopback LLM: one QA pair for a QA request; for an empathy request a valid reply that uses the strategy the prompt assigns."""
    user = request["messages"][-1]["content"]
    if 'Response strategy: use "' not in user:
        return "Q: How does the speaker sound?\nA: Calm and steady."
    strategy = user.split('Response strategy: use "')[1].split('"')[0]
    return f"Strategy: {strategy}\nAwareness: They sound caught up in what they describe.\nResponse: I hear you, and that makes sense."


def test_the_empathy_output_is_built_resumed_and_loads(labelled, source, tiny_config, out):
    from datasets import load_dataset
    from openai_stub import OpenAIStub

    from build.stages import empathy, words

    with OpenAIStub(_empathy_reply) as stub:
        config = _config(tiny_config).with_overrides(
            ["runtime.recordings_per_shard=2", "qa.structured_output=text", "qa.pairs_per_segment=1", "empathy.structured_output=text", f"qa.base_url={stub.base_url}"]
        )
        result = pipeline.build(source, config, out, progress=False)  # default outputs: qa and empathy
        first_requests = sum('Response strategy: use "' in r["messages"][-1]["content"] for r in stub.requests)
    # what the stage should keep follows from the transcribed clips and the target-span rule
    asr = pq.read_table(out / "work" / "asr" / "s00000.parquet").to_pydict()
    asr = {**asr, **words.tag_words(asr)}
    prepared = {sid: empathy.prepare_sample(row, config.empathy.pause_s) for sid, row in zip(asr["segment_id"], rows_of(asr))}
    expected = sorted(sid for sid, (sample, _) in prepared.items() if sample is not None)
    assert expected, "the bundled clips should yield at least one target utterance"
    assert first_requests == len(expected)
    written = pq.read_table(out / "work" / "empathy" / "s00000.parquet").to_pydict()
    assert sorted(written["segment_id"]) == expected
    assert result.status == "built" and result.funnel.counts["empathy"] == len(expected)
    assert result.report()["empathy_strategies"] == dict(Counter(r["response_strategy"] for r in result.empathy["desired_response"]))
    no_target = sorted(sid for sid, (_, reason) in prepared.items() if reason == empathy.NO_TARGET)
    assert result.funnel.drop_counts().get("empathy", {}) == ({empathy.NO_TARGET: len(no_target)} if no_target else {})
    if no_target:
        assert sorted(r["segment_id"] for r in pq.read_table(out / "work" / "dropped" / "empathy.parquet").to_pylist()) == no_target

    loaded = load_dataset(str(out), "empathy", split="test")
    assert loaded.column_names[:5] == ["id", "audio", "text_context", "target_utterance", "desired_response"]
    assert sorted(loaded["segment_id"]) == expected
    for row in loaded:
        sample, _ = prepared[row["segment_id"]]
        assert row["id"] == f"{row['segment_id']}-empathy"
        assert row["text_context"] == sample["text_context"] and row["target_utterance"] == sample["target_utterance"]
        assert (row["clip_start"], row["clip_end"]) == (sample["clip_start"], sample["clip_end"])
        assert row["desired_response"] == {
            "text": "I hear you, and that makes sense.",
            "response_strategy": empathy.seeded_strategy(row["segment_id"], sample["target_utterance"]["emotions"]["primary"]),
            "emotion_awareness": "They sound caught up in what they describe.",
        }
        decoded = row["audio"].get_all_samples()
        path = source / f"{row['recording_id']}.flac"
        reference = decode_span(str(path), row["clip_start"], row["clip_end"])
        assert decoded.sample_rate == 16_000 and abs(decoded.data.shape[-1] - len(reference)) <= 1
        assert row["target_utterance"]["end"] <= row["clip_end"] - row["clip_start"] + 1e-6
    card = (out / "README.md").read_text()
    assert f"Samples: {len(expected)}." in card and "| emotion family | primary emotion | response strategy | samples |" in card
    assert "config_name: empathy" in card and "config_name: qa" in card

    # a rerun sends nothing and rewrites nothing; another strategy mode recomputes the empathy stage only
    before = {stage: (out / "work" / stage / "s00000.parquet").stat().st_mtime_ns for stage in ("asr", "qa", "empathy")}
    with OpenAIStub(_empathy_reply) as stub:
        config = config.with_overrides([f"qa.base_url={stub.base_url}"])
        pipeline.build(source, config, out, progress=False)
        assert stub.requests == []
        assert {stage: (out / "work" / stage / "s00000.parquet").stat().st_mtime_ns for stage in before} == before
        pipeline.build(source, config.with_overrides(["empathy.demos_per_sample=1"]), out, progress=False)
        assert len(stub.requests) == len(expected)
    assert all((out / "work" / stage / "s00000.parquet").stat().st_mtime_ns == before[stage] for stage in ("asr", "qa"))
    assert (out / "work" / "empathy" / "s00000.parquet").stat().st_mtime_ns != before["empathy"]


def test_outputs_other_than_qa_and_empathy_are_refused(source, tiny_config, tmp_path):
    with pytest.raises(ValueError, match="outputs must be qa or qa,empathy, got qa,speech"):
        pipeline.build(source, tiny_config, tmp_path, outputs=("qa", "speech"), progress=False)
    with pytest.raises(ValueError, match="outputs must be qa or qa,empathy, got empathy"):
        pipeline.build(source, tiny_config, tmp_path, outputs=("empathy",), progress=False)
