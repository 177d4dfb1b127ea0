"""The pipeline end to end on real audio with the tiny models: funnel, ledger, condensed rows."""

import shutil

import numpy as np
import pytest
import soundfile as sf

from build import pipeline
from build.audio import decode_span
from build.config import PAPER_ALPHA
from build.windows import window_spans
from conftest import AMI, ravdess_recording


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
def labelled(source, tiny_config, tmp_path_factory):
    return pipeline.run_labelling(source, _config(tiny_config), tmp_path_factory.mktemp("work"))


def test_every_recording_is_accounted_for(labelled, source):
    ledger = {entry["recording_id"]: entry for entry in labelled.ledger}
    assert sorted(ledger) == ["actor01", "corrupt", "meeting", "short", "silence"]
    assert ledger["corrupt"]["status"] == "failed" and ledger["corrupt"]["stage"] == "ingest"
    assert ledger["corrupt"]["reason"].startswith(f"{source / 'corrupt.wav'}: cannot open as audio")
    assert ledger["silence"] == {"recording_id": "silence", "status": "dropped", "stage": "vad", "reason": "no speech detected"}
    assert ledger["short"] == {"recording_id": "short", "status": "dropped", "stage": "length", "reason": "shorter than 30 s"}
    assert ledger["actor01"]["status"] == ledger["meeting"]["status"] == "kept"


def test_funnel_counts(labelled):
    counts = labelled.funnel.counts
    assert counts["recordings"] == 5
    assert counts["recordings with speech"] == 3  # actor01, meeting, short
    assert counts["segments within length"] == counts["condensed segments"] == 2
    assert labelled.funnel.drop_counts()["length"] == {"shorter than 30 s": counts["segments"] - 2}


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
        consistent = [w["emotion"] for w in windows if w["consistent"]]
        assert sum(row["emotion_counts"].values()) == len(consistent)
        assert row["emotions"] == [label for label in PAPER_ALPHA if label in consistent]
        assert row["primary_emotion"] in row["emotions"]
        assert row["gender"] in ("female", "male")


def test_paper_alpha_and_quota_drops_are_counted(source, tiny_config, tmp_path):
    strict = pipeline.run_labelling(source, _config(tiny_config, alpha={"angry": 1000}), tmp_path)
    assert strict.funnel.drop_counts()["occurrence"] == {"no emotion reached its occurrence threshold": 2}
    ledger = {e["recording_id"]: e for e in strict.ledger}
    assert ledger["meeting"]["stage"] == "occurrence" and ledger["meeting"]["status"] == "dropped"
    quota = pipeline.run_labelling(source, _config(tiny_config, samples_per_category=0), tmp_path)
    assert quota.funnel.drop_counts()["sampling"] == {"over the per-category quota": 2}
    assert len(quota.segments) == 0


def test_qa_failures_are_counted_and_recorded_per_recording(labelled, tiny_config, tmp_path):
    import dataclasses

    from openai_stub import OpenAIStub, Reply

    def reply(request):
        prompt = request["messages"][-1]["content"]
        return Reply(500, "model overloaded") if "by the door" in prompt else "I am not sure what you want me to write here."

    config = tiny_config.with_overrides(["qa.max_retries=0", "qa.structured_output=text"])
    result = dataclasses.replace(labelled, funnel=dataclasses.replace(labelled.funnel, drops=list(labelled.funnel.drops), counts=dict(labelled.funnel.counts)))
    with OpenAIStub(reply) as stub:
        result = pipeline.run_qa(result, config, tmp_path, stub.base_url)
    assert result.funnel.drop_counts()["qa"] == {"LLM request failed": 1, "unparseable reply": 1}
    assert result.funnel.counts["segments with QA pairs"] == 0 and len(result.pairs) == 0
    ledger = {entry["recording_id"]: entry for entry in result.ledger}
    assert ledger["actor01"]["status"] == "failed" and ledger["actor01"]["stage"] == "qa"
    assert "500" in ledger["actor01"]["reason"] and "model overloaded" in ledger["actor01"]["reason"]
    assert ledger["meeting"] == {"recording_id": "meeting", "status": "failed", "stage": "qa", "reason": "unparseable reply"}
    assert ledger["silence"]["stage"] == "vad"  # earlier outcomes are unchanged


def test_a_build_where_nothing_survives_still_accounts_for_everything(tmp_path, tiny_config):
    folder = tmp_path / "bad"
    folder.mkdir()
    sf.write(folder / "silence.wav", np.zeros(16_000 * 40, dtype=np.float32), 16_000)
    (folder / "empty.flac").write_bytes(b"")
    result = pipeline.run_labelling(folder, tiny_config, tmp_path / "work")
    assert len(result.segments) == 0 and result.segments.features == pipeline.schema.CONDENSED_SEGMENT
    assert [(e["recording_id"], e["status"], e["stage"]) for e in result.ledger] == [("empty", "failed", "ingest"), ("silence", "dropped", "vad")]
