"""Crash and resume, and two processes, through the CLI as a user runs it.

One uninterrupted build is the reference. A second build of the same sources is killed with SIGKILL
in the middle of labelling, then of ASR, then of QA generation, and rerun with the same command
after each kill; it must end with the same rows, recompute no finished shard and send no LLM request
that had completed. ``accelerate launch`` with two CPU processes (gloo) must build the same rows.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
from conftest import AMI, REPO, ravdess_recording
from openai_stub import OpenAIStub

PAIRS = [
    {"question": "How does the speaker feel?", "answer": "Afraid."},
    {"question": "Is the speaker male or female?", "answer": "Male."},
    {"question": "Why does the speaker sound afraid?", "answer": "The dogs by the door worry him."},
]
ALPHA = json.dumps({label: 1 for label in ("angry", "disgusted", "fearful", "happy", "sad", "surprised")})


def reply(request):
    return json.dumps({"pairs": PAIRS})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    shutil.copy(ravdess_recording(1), folder / "actor01.flac")
    shutil.copy(ravdess_recording(2), folder / "actor02.flac")
    shutil.copy(AMI, folder / "meeting.flac")
    return folder


def command(source, out, base_url) -> list[str]:
    sets = ["condense.x=0", "condense.y=0", f"condense.alpha={ALPHA}", "runtime.recordings_per_shard=1", "runtime.segments_per_shard=2", f"qa.base_url={base_url}"]
    # QA only: the empathy stage resumes the same way (tests/test_pipeline.py) and would double the requests counted here
    return ["build", str(source), "--out", str(out), "--profile", "tiny", "--quiet", "--outputs", "qa", *[a for s in sets for a in ("--set", s)]]


def environment() -> dict:
    # One OpenMP thread per process in every run, as torchrun gives each of its processes: Whisper's
    # int8 kernels (CTranslate2) round differently with another thread count.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OPENAI_API_KEY": "test", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run(args: list[str], log, launcher: list[str] | None = None) -> subprocess.Popen:
    prefix = launcher or [sys.executable]
    return subprocess.Popen([*prefix, str(REPO / "cpqa.py"), *args], cwd=REPO, env=environment(), stdout=log, stderr=subprocess.STDOUT)


def kill_when(process: subprocess.Popen, condition, log_path, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return
        if process.poll() is not None:
            pytest.fail(f"the build ended (exit {process.returncode}) before the kill point:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.02)
    process.kill()
    pytest.fail(f"kill point not reached in {timeout_s} s")


def finish(process: subprocess.Popen, log_path, timeout_s: float = 600) -> None:
    assert process.wait(timeout=timeout_s) == 0, log_path.read_text()[-3000:]


def published(out) -> dict:
    """Every published row (audio bytes included), the report and the ledger."""
    tables = {}
    for config in ("qa", "segments"):
        files = sorted((out / "data" / config).glob("*.parquet"))
        tables[config] = [row for f in files for row in pq.read_table(f).to_pylist()]
    report = json.loads((out / "report.json").read_text())
    # LLM call counts say how a build got there (a resumed one answers some requests from the cache);
    # what must match is how many requests the build needed and that none failed. Each run has its own id.
    report.pop("llm_calls"), report.pop("build_id")
    calls = report.pop("llm_calls_build")
    tables["report"] = {**report, "llm_requests": calls["requests"], "llm_failed": calls["failed"]}
    tables["ledger"] = (out / "recordings.jsonl").read_text()
    return tables


def mtimes(out, stage: str) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "work" / stage).glob("*.parquet")}


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    log_path = out.parent / "log.txt"
    with OpenAIStub(reply) as stub, open(log_path, "w") as log:
        finish(run(command(source, out, stub.base_url), log), log_path)
        n_requests = len(stub.requests)
    return out, published(out), n_requests


def test_reference_build_has_the_expected_shape(reference):
    out, tables, n_requests = reference
    assert n_requests == 3  # one QA request per condensed segment: actor01, actor02, meeting
    assert sorted({row["segment_id"] for row in tables["segments"]}) == ["actor01-0000", "actor02-0000", "meeting-0000"]
    assert len(tables["qa"]) == 3 * 3
    assert sorted(p.stem for p in (out / "work" / "label").glob("r*[0-9].parquet")) == ["r00000", "r00001", "r00002"]
    assert sorted(p.stem for p in (out / "work" / "asr").glob("s*[0-9].parquet")) == ["s00000", "s00001"]


def test_killed_in_labelling_asr_and_qa_the_rerun_equals_the_uninterrupted_build(source, reference, tmp_path):
    _, expected, _ = reference
    out = tmp_path / "out"
    log_path = tmp_path / "log.txt"
    work = out / "work"

    with OpenAIStub(reply) as stub, open(log_path, "a") as log:
        args = command(source, out, stub.base_url)
        # 1. killed once the first of three labelling shards is written
        kill_when(run(args, log), lambda: (work / "label" / "r00000.parquet").exists(), log_path)
        assert not (work / "label" / "r00002.parquet").exists() and not (work / "asr").exists()
        labelled = mtimes(out, "label")

        # 2. rerun, killed once the first of two ASR shards is written
        kill_when(run(args, log), lambda: (work / "asr" / "s00000.parquet").exists(), log_path)
        assert {k: v for k, v in mtimes(out, "label").items() if k in labelled} == labelled  # no finished shard redone
        assert not (work / "asr" / "s00001.parquet").exists()
        transcribed = mtimes(out, "asr")
        assert stub.requests == []

    # 3. rerun, killed while the second QA request of shard s00000 is on the wire
    second = threading.Event()
    release = threading.Event()

    def blocking(request):
        if len(blocking_stub.requests) >= 2:
            second.set()
            release.wait(60)
        return reply(request)

    with OpenAIStub(blocking) as blocking_stub, open(log_path, "a") as log:
        kill_when(run(command(source, out, blocking_stub.base_url), log), second.is_set, log_path)
        release.set()
        completed = json.dumps(blocking_stub.requests[0], sort_keys=True)
        assert not (work / "qa" / "s00000.parquet").exists()
    assert {k: v for k, v in mtimes(out, "asr").items() if k in transcribed} == transcribed

    # 4. rerun to the end: the completed request is answered from the cache, the others are sent
    with OpenAIStub(reply) as stub, open(log_path, "a") as log:
        finish(run(command(source, out, stub.base_url), log), log_path)
        sent = [json.dumps(r, sort_keys=True) for r in stub.requests]
    assert completed not in sent and len(sent) == 2
    # the printed line says what this run did: both QA shards computed, the completed reply from the cache
    said = [line for line in log_path.read_text().splitlines() if line.startswith("LLM calls")]
    assert said[-1] == (
        "LLM calls this run: 3 requests: 1 from cache, 2 sent in 2 attempts; 0 retried; 0 failed; "
        "0 tasks skipped as finished"
    )
    assert published(out) == expected


def test_two_processes_build_the_same_rows_as_one(source, reference, tmp_path):
    _, expected, _ = reference
    out = tmp_path / "out"
    log_path = tmp_path / "log.txt"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port)]  # fmt: skip
    with OpenAIStub(reply) as stub, open(log_path, "w") as log:
        finish(run(command(source, out, stub.base_url), log, launcher=launcher), log_path)
    stats = [json.loads(p.read_text()) for p in (out / "work" / "label").glob("*.stats.json")]
    assert sorted((s["shard"], s["rank"]) for s in stats) == [("r00000", 0), ("r00001", 1), ("r00002", 0)]
    assert published(out) == expected
