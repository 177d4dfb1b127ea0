"""A build interrupted and run again: the same rows, bit for bit, and a log that says what happened.

- in process: labelling stopped in the middle of its second shard (as by a kill), then the same
  build again: a warning names the rank and the shard it redoes, and every row equals those of an
  uninterrupted build;
- the report files of ``build.core.ranks``: a rank waiting at a barrier names the rank that failed, died,
  was stopped or never came, with its stage and shard; SIGTERM ends a rank with one such line;
- a decoding process dies with the rank that started it;
- for real: ``accelerate launch`` with two CPU processes, one killed with SIGKILL while it labels a
  shard; the other ends with a line naming it, and a plain rerun ends with the uninterrupted rows.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import AMI, REPO, ravdess_recording

from build import pipeline
from build.core.devices import torch_threads
from build.core.ranks import RankFailure, RankReports, Ranks, current, describe, reports_failures
from build.core.work import WorkDir, interruption
from build.stages import label

SETTINGS = ["condense.x=0", "condense.y=0", "runtime.recordings_per_shard=1"]
SHARDS = ["r00000", "r00001", "r00002"]
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("source")
    shutil.copy(ravdess_recording(1), folder / "actor01.flac")
    shutil.copy(ravdess_recording(2), folder / "actor02.flac")
    shutil.copy(AMI, folder / "meeting.flac")
    return folder


def rows(out: Path) -> dict[str, list]:
    """Every row the labelling and condensation tasks wrote, by task."""
    work = out / "work"
    return {
        f"{stage}/{s}": pq.read_table(work / stage / f"{s}.parquet").to_pylist()
        for stage in ("label", "condense")
        for s in SHARDS
    }


@pytest.fixture(scope="module")
def reference(source, tiny_config, tmp_path_factory):
    """An uninterrupted build, one torch thread (as every process the launcher starts)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    with torch_threads(1):
        pipeline.build(
            source, tiny_config.with_overrides(SETTINGS), out, stop_after="condense", progress=False
        )
    return rows(out)


def test_labelling_interrupted_mid_shard_resumes_to_the_same_rows_and_says_so(
    source, tiny_config, reference, tmp_path, monkeypatch, caplog
):
    config = tiny_config.with_overrides(SETTINGS)
    out = tmp_path / "out"
    real = label.label_segments
    calls = []

    def stop(seconds):
        raise KeyboardInterrupt  # what a kill does to the task: nothing after this point runs

    def second_shard_stops(segments, config, **kwargs):
        calls.append(segments["segment_id"])
        return real(
            segments, config, **{**kwargs, "on_segment_done": stop if len(calls) == 2 else kwargs["on_segment_done"]}
        )

    monkeypatch.setattr(label, "label_segments", second_shard_stops)
    with torch_threads(1), pytest.raises(KeyboardInterrupt):
        pipeline.build(source, config, out, stop_after="condense", progress=False)
    monkeypatch.undo()
    label_dir = out / "work" / "label"
    assert calls == [["actor01-0000"], ["actor02-0000"]]
    assert (label_dir / "r00000.parquet").exists() and not (label_dir / "r00001.parquet").exists()
    marker = json.loads((label_dir / "r00001.started.json").read_text())
    assert (marker["rank"], marker["pid"], marker["host"]) == (0, os.getpid(), HOST)
    (label_dir / f".r00001.parquet.{os.getpid()}.tmp").write_bytes(
        b"PAR1 torn"
    )  # what a kill mid-write leaves
    finished = (label_dir / "r00000.parquet").stat().st_mtime_ns

    with torch_threads(1), caplog.at_level(logging.WARNING, logger="build.pipeline"):
        pipeline.build(source, config, out, stop_after="condense", progress=False)
    assert [r.getMessage() for r in caplog.records if r.name == "build.pipeline"] == [
        "rank 0: label shard r00001 was interrupted in an earlier run "
        f"(started by rank 0, process {os.getpid()} on {HOST}); redoing it"
    ]
    assert rows(out) == reference  # bit for bit
    assert (label_dir / "r00000.parquet").stat().st_mtime_ns == finished  # a finished shard is not redone
    written = sorted(f"{s}.{kind}" for s in SHARDS for kind in ("parquet", "stats.json", "dropped.parquet"))
    assert sorted(p.name for p in label_dir.iterdir()) == written  # no start marker, no temporary file left
    assert not (out / "work" / "ranks").exists()  # one process keeps no report file

    caplog.clear()
    with torch_threads(1), caplog.at_level(logging.WARNING, logger="build.pipeline"):
        pipeline.build(source, config, out, stop_after="condense", progress=False)  # into the used folder
    assert [r for r in caplog.records if r.name == "build.pipeline"] == []
    assert (label_dir / "r00000.parquet").stat().st_mtime_ns == finished


def test_a_damaged_start_marker_still_counts_as_an_interruption(tmp_path):
    work = WorkDir(tmp_path)
    assert work.mark_started("label", "r00004", 1) is None  # a first start
    work.started_path("label", "r00004").write_text("{not json")
    assert work.mark_started("label", "r00004", 1) == {}
    work.started_path("label", "r00004").write_text("[1, 2]")
    assert work.mark_started("label", "r00004", 1) == {}
    assert (
        interruption("label", "r00004", 1, {})
        == "rank 1: label shard r00004 was interrupted in an earlier run; redoing it"
    )
    assert json.loads(work.started_path("label", "r00004").read_text())["rank"] == 1


# ---------------------------------------------------------------- report files and barriers
def pair(folder: Path, launch: str = "launch-1") -> tuple[RankReports, RankReports]:
    return RankReports(folder, 0, 2, launch), RankReports(folder, 1, 2, launch)


def finished_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_barrier_passes_once_every_rank_reached_it(tmp_path):
    rank0, rank1 = pair(tmp_path)
    rank1.update(status="waiting", barrier=1)
    rank0.wait_for_others(timeout_s=5)
    assert json.loads((tmp_path / "0.json").read_text())["status"] == "running"
    assert json.loads((tmp_path / "0.json").read_text())["barrier"] == 1


def test_a_failed_rank_ends_the_wait_at_once_with_its_shard_and_error(tmp_path):
    rank0, rank1 = pair(tmp_path)
    rank1.update(status="running", stage="label", shard="r00001")
    rank1.ended(RuntimeError("CUDA out of memory\nsecond line"))
    with pytest.raises(RankFailure) as caught:
        rank0.wait_for_others(timeout_s=3600)
    assert (
        str(caught.value)
        == "rank 0 stops at barrier 1: rank 1 failed in label shard r00001: RuntimeError: CUDA out of memory"
    )


def test_a_rank_whose_process_is_gone_ends_the_wait(tmp_path):
    rank0, rank1 = pair(tmp_path)
    rank1.pid = finished_pid()
    rank1.update(status="running", stage="label", shard="r00001")
    with pytest.raises(RankFailure) as caught:
        rank0.wait_for_others(timeout_s=3600)
    assert (
        str(caught.value)
        == "rank 0 stops at barrier 1: "
        f"rank 1 died in label shard r00001 (process {rank1.pid} on {HOST} is gone)"
    )


def test_a_rank_missing_at_the_timeout_is_named_with_what_it_last_said(tmp_path):
    rank0, rank1 = pair(tmp_path)
    rank1.host, rank1.pid = "node7", 4242  # another machine: its process cannot be checked from here
    rank1.update(status="running", stage="asr", shard="s00003")
    RankReports(tmp_path, 2, 3, "an-older-launch").update(status="failed", error="old news")
    rank0.world = 3
    with pytest.raises(RankFailure) as caught:
        rank0.wait_for_others(timeout_s=0.3)
    assert re.fullmatch(
        r"rank 0 waited 0\.3 s at barrier 1 for the other ranks: "
        r"rank 1 is running in asr shard s00003 \(last report \d+ s ago, process 4242 on node7\); "
        r"rank 2 has not reported in this launch\. Run the same command again \(finished shards are kept\), "
        r"or raise runtime\.barrier_timeout_s if those ranks are only slow",
        str(caught.value),
    ), str(caught.value)


def test_a_rank_that_ended_its_build_is_not_waited_for(tmp_path):
    rank0, rank1 = pair(tmp_path)
    rank1.ended(None)
    assert describe(1, rank1.read(1)) == "rank 1 ended its build without reaching this barrier"
    with pytest.raises(RankFailure, match="^rank 0 stops at barrier 1: rank 1 ended its build"):
        rank0.wait_for_others(timeout_s=3600)


def test_the_build_reports_its_end_and_restores_sigterm(tmp_path):
    before = signal.getsignal(signal.SIGTERM)

    @reports_failures
    def build(fail: bool):
        ranks = Ranks(index=1, world=2, launch="launch-1").reporting(tmp_path)
        assert signal.getsignal(signal.SIGTERM) is not before
        ranks.working("vad", "r00003")
        if fail:
            raise ValueError("cannot open /data/a.wav")
        return "built"

    with pytest.raises(ValueError):
        build(True)
    record = json.loads((tmp_path / "1.json").read_text())
    assert {k: record[k] for k in ("launch", "rank", "status", "stage", "shard", "error")} == {
        "launch": "launch-1", "rank": 1, "status": "failed", "stage": "vad", "shard": "r00003",
        "error": "ValueError: cannot open /data/a.wav",
    }  # fmt: skip
    assert signal.getsignal(signal.SIGTERM) is before
    assert build(False) == "built"
    assert json.loads((tmp_path / "1.json").read_text())["status"] == "done"
    assert Ranks().reporting(tmp_path / "one") == Ranks() and not (tmp_path / "one").exists()


SIGTERMED = """
import os, signal, sys, time
from pathlib import Path
from build.core.ranks import RankReports
folder, dead = Path(sys.argv[1]), int(sys.argv[2])
other = RankReports(folder, 1, 2, "L")
other.pid = dead
other.update(status="running", stage="label", shard="r00001")
me = RankReports(folder, 0, 2, "L")
me.update(status="running", stage="label", shard="r00002")
me.stop_on_sigterm()
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(30)
"""


def test_sigterm_ends_a_rank_with_one_line_naming_the_rank_that_died(tmp_path):
    dead = finished_pid()
    done = subprocess.run(
        [sys.executable, "-c", SIGTERMED, str(tmp_path), str(dead)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 128 + signal.SIGTERM
    assert (
        done.stderr
        == "cpqa build: rank 0 stopped by SIGTERM in label shard r00002: "
        f"rank 1 died in label shard r00001 (process {dead} on {HOST} is gone)\n"
    )
    record = json.loads((tmp_path / "0.json").read_text())
    assert (record["status"], record["error"], record["shard"]) == ("stopped", "stopped by SIGTERM", "r00002")


# ---------------------------------------------------------------- decoding processes
ORPHANS = """
import os, sys, time
import numpy as np
from torch.utils.data import get_worker_info
from build.stages.label import _decoded_segments
folder = sys.argv[1]

class Big:  # items far larger than a pipe: the decoders block writing them ahead
    def __len__(self):
        return 64
    def __getitem__(self, i):
        open(os.path.join(folder, f"{os.getpid()}.pid"), "w").close()
        return i, np.zeros(4_000_000, dtype=np.float32), None

segments = _decoded_segments(Big(), 2)
next(segments)
time.sleep(3)
open(os.path.join(folder, "ready"), "w").close()
time.sleep(600)
"""


def test_decoding_processes_die_with_the_rank(tmp_path):
    rank = subprocess.Popen([sys.executable, "-c", ORPHANS, str(tmp_path)], cwd=REPO)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "ready").exists() and rank.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        decoders = [int(p.stem) for p in tmp_path.glob("*.pid")]
        assert rank.poll() is None and len(decoders) == 2
        rank.send_signal(signal.SIGKILL)
        rank.wait()
        deadline = time.monotonic() + 30  # the decoders' own check for a dead parent runs every 5 s
        while any(alive(pid) for pid in decoders) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [pid for pid in decoders if alive(pid)] == []
    finally:
        rank.kill()
        for pid in [int(p.stem) for p in tmp_path.glob("*.pid")]:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


# ---------------------------------------------------------------- two processes, one killed
def test_a_rank_killed_mid_shard_is_named_and_the_restart_gives_the_same_rows(source, reference, tmp_path):
    out, log_path = tmp_path / "out", tmp_path / "log.txt"
    args = [
        str(REPO / "cpqa.py"),
        "build",
        str(source),
        "--out",
        str(out),
        "--profile",
        "tiny",
        "--quiet",
        "--stop-after",
        "condense",
    ]
    args += [a for s in SETTINGS for a in ("--set", s)]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # one restart: the launcher stops the other process and starts both again, as after a lost node
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                "--main_process_port", str(port), "--max_restarts", "1"]  # fmt: skip
    with open(log_path, "w") as log:
        launch = subprocess.Popen([*launcher, *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        marker = out / "work" / "label" / "r00001.started.json"  # rank 1 starts its labelling shard
        deadline = time.monotonic() + 300
        while not marker.exists() and launch.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert launch.poll() is None, log_path.read_text()[-3000:]
        victim = json.loads(marker.read_text())["pid"]
        os.kill(victim, signal.SIGKILL)
        # before, the restarted processes could read the dead ones' addresses and hang or fail
        assert launch.wait(timeout=600) == 0, log_path.read_text()[-3000:]
    lines = log_path.read_text().splitlines()
    # rank 0 stops at a barrier, or by the launcher's SIGTERM, naming rank 1 and its shard
    named = f"rank 1 died in label shard r00001 (process {victim} on {HOST} is gone)"
    stop = re.compile(
        rf"cpqa build: rank 0 (stops at barrier \d|stopped by SIGTERM[^:]*): {re.escape(named)}"
    )
    assert any(stop.fullmatch(line) for line in lines), "\n".join(lines[-40:])
    redo = (
        "rank 1: label shard r00001 was interrupted in an earlier run "
        f"(started by rank 1, process {victim} on {HOST}); redoing it"
    )
    assert f"WARNING:build.pipeline:{redo}" in lines, "\n".join(lines[-40:])
    assert rows(out) == reference  # one process in the reference: the same rows for any process count
    assert not list((out / "work" / "label").glob("*.started.json"))


def test_the_funasr_guard_gives_back_the_log_handlers_levels():
    # under a launcher, importing ModelScope (through FunASR) sets the root stderr handler to ERROR:
    # every rank's warnings, the restart warning among them, then vanished
    from build.models.base import funasr_side_effects_contained

    handler = logging.StreamHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with funasr_side_effects_contained():
            handler.setLevel(logging.ERROR)
        assert handler.level == logging.NOTSET
    finally:
        root.removeHandler(handler)


@pytest.mark.parametrize("value", [0, -1, "6h", True, None])
def test_a_barrier_timeout_that_is_not_a_positive_number_is_refused(value):
    with pytest.raises(ValueError) as caught:
        current(value)
    assert str(caught.value) == f"runtime.barrier_timeout_s must be a number of seconds > 0, got {value!r}"
    assert current(0.5) == Ranks(timeout_s=0.5)  # one process: nothing to join
