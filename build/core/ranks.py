"""Which process this is, through ``accelerate``: the same code for one process and for N on M machines.

``accelerate launch --multi_gpu --num_processes N cpqa.py build ...`` (or ``torchrun``, or any launcher
that sets the usual ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables) starts N copies of the build;
``PartialState`` joins them into one process group (NCCL on GPUs, gloo on a machine without CUDA; on a
CPU-only machine ``--multi_gpu`` only selects accelerate's torchrun launcher). A plain
``python cpqa.py build`` is the one-process case and initialises nothing.

- rank r takes tasks r, r + N, r + 2N, ... of every per-shard stage (``Ranks.mine``);
- its device is ``cuda:<local rank>`` (or the CPU), chosen by ``devices.device_for``;
- rank 0 runs the global steps (ingest plan, balanced sampling, export) between barriers
  (``Ranks.barrier``: accelerate's ``wait_for_everyone``, once the report files below show every
  rank there).

A lost process must not stall the others, and its failure must reach rank 0's log:

- With more than one process each rank keeps ``OUT/work/ranks/<rank>.json`` current
  (``RankReports``): ``running`` (with the stage and shard), ``waiting`` (at barrier k), ``failed``
  (with the error), ``stopped`` (SIGTERM, Ctrl-C) or ``done``, with its process id and host. Each
  record carries a token rank 0 draws and broadcasts at start, so files an earlier launch left are
  never read as news.
- A rank at a barrier reads the others' files while it waits. A rank that failed, was stopped or
  whose process is gone (checked on the same host) ends the wait at once with ``RankFailure``
  naming that rank, its stage and shard; so does a rank still missing after ``timeout_s``
  (``runtime.barrier_timeout_s``, 6 hours by default), named with what it last reported. The
  process group's own timeout is the same value, so no collective waits longer.
- SIGTERM, which torchrun sends to every process once one of them fails, ends a rank with one line
  on stderr that names the ranks that failed or died, instead of a silent exit.
- A launcher restart (``--max_restarts``) keeps the launcher's store, which still holds the previous
  attempt's addresses (torch's static rendezvous creates it once): a restarted process group is
  formed under a prefix named after the attempt, so that no process connects to a dead peer.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from .errors import first_line

T = TypeVar("T")
_LAUNCHER_VARIABLES = ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
DEFAULT_BARRIER_TIMEOUT_S = 6 * 3600.0
_POLL_S = (0.05, 2.0)  # first and longest pause between two reads of the report files
_ENDED = ("failed", "stopped", "done")
_ACTIVE: list[RankReports] = []  # reports opened by the build running in this process (reports_failures)


class RankFailure(RuntimeError):
    """Another rank failed, died or did not reach a barrier in time; the message names it."""


@dataclass(frozen=True)
class Ranks:
    index: int = 0  # global rank
    world: int = 1  # number of processes
    local: int = 0  # rank on this machine: picks the GPU
    timeout_s: float = DEFAULT_BARRIER_TIMEOUT_S  # how long a barrier waits for a rank that has not come
    launch: str = ""  # the same token on every rank of one launch
    reports: RankReports | None = field(default=None, compare=False, repr=False)

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def mine(self, items: list[T]) -> list[T]:
        """This process's share: every ``world``-th item from its own index on."""
        return items[self.index :: self.world]

    def reporting(self, folder: str | Path) -> Ranks:
        """These ranks, each keeping ``folder/<rank>.json`` current (one process keeps no file)."""
        if self.world == 1:
            return self
        reports = RankReports(Path(folder), self.index, self.world, self.launch)
        reports.update(status="running")
        reports.stop_on_sigterm()
        _ACTIVE.append(reports)
        return dataclasses.replace(self, reports=reports)

    def working(self, stage: str, shard: str | None = None) -> None:
        """Report what this rank works on (its report file says it if a failure or a kill follows)."""
        if self.reports is not None:
            self.reports.update(status="running", stage=stage, shard=shard)

    def barrier(self) -> None:
        if self.world > 1:
            if self.reports is not None:
                self.reports.wait_for_others(self.timeout_s)
            from accelerate import PartialState

            PartialState().wait_for_everyone()


class RankReports:
    """This rank's state in ``folder/<rank>.json``; the other ranks' states read from theirs."""

    def __init__(self, folder: Path, rank: int, world: int, launch: str):
        self.folder, self.rank, self.world, self.launch = folder, rank, world, launch
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.state: dict = {"status": "running", "stage": None, "shard": None, "barrier": 0, "error": None}
        self._previous_handler = None

    def update(self, **changes) -> None:
        self.state.update(changes)
        record = {
            "launch": self.launch,
            "rank": self.rank,
            "host": self.host,
            "pid": self.pid,
            "time": time.time(),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{self.rank}.json"
        temporary = path.with_name(f".{path.name}.{self.pid}.tmp")
        temporary.write_text(json.dumps({**record, **self.state}) + "\n")
        os.replace(temporary, path)

    def read(self, rank: int) -> dict | None:
        """What ``rank`` last reported in this launch; None when it has not (or its file is older)."""
        try:
            record = json.loads((self.folder / f"{rank}.json").read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("launch") == self.launch else None

    def wait_for_others(self, timeout_s: float) -> None:
        """Mark this rank at its next barrier and wait until every other rank's file shows it there.

        Raises ``RankFailure`` as soon as a missing rank failed, was stopped, ended or is gone, and
        after ``timeout_s`` seconds when one is still missing."""
        barrier = self.state["barrier"] + 1
        self.update(status="waiting", stage=None, shard=None, barrier=barrier)
        deadline = time.monotonic() + timeout_s
        pause = _POLL_S[0]
        while True:
            records = {r: self.read(r) for r in range(self.world) if r != self.rank}
            missing = {r: rec for r, rec in records.items() if rec is None or rec.get("barrier", 0) < barrier}
            if not missing:
                self.update(status="running")
                return
            lost = [describe(r, rec) for r, rec in missing.items() if rec is not None and self.gone(rec)]
            if lost:
                raise RankFailure(f"rank {self.rank} stops at barrier {barrier}: " + "; ".join(lost))
            if time.monotonic() >= deadline:
                waited = "; ".join(describe(r, rec) for r, rec in missing.items())
                raise RankFailure(
                    f"rank {self.rank} waited {timeout_s:g} s at barrier {barrier} for the other ranks: "
                    f"{waited}. Run the same command again (finished shards are kept), or raise "
                    "runtime.barrier_timeout_s if those ranks are only slow"
                )
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 1.5, _POLL_S[1])

    def gone(self, record: dict) -> bool:
        """Whether the rank of ``record`` has ended: it said so, or its process on this host is gone."""
        if record.get("status") in _ENDED:
            return True
        return record.get("host") == self.host and not _alive(record.get("pid"))

    def ended(self, exc: BaseException | None) -> None:
        """The build ended: done (``exc`` None), stopped (Ctrl-C, SIGTERM) or failed with ``exc``."""
        if exc is None:
            self.update(status="done", stage=None, shard=None)
        elif self.state["status"] != "stopped":  # the SIGTERM handler has said it already
            stopped = isinstance(exc, (KeyboardInterrupt, SystemExit))
            self.update(status="stopped" if stopped else "failed", error=first_line(exc))
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def stop_on_sigterm(self) -> None:
        """On SIGTERM: report this rank stopped, print one line naming the ranks that ended, exit.
        Processes forked from this one (decoders) keep the default action."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread

        def handler(signum, frame):
            if os.getpid() != self.pid:
                signal.signal(signum, signal.SIG_DFL)
                os.kill(os.getpid(), signum)
                return
            self.update(status="stopped", error=f"stopped by {signal.Signals(signum).name}")
            print(
                f"cpqa build: {self.stop_message(signal.Signals(signum).name)}", file=sys.stderr, flush=True
            )
            raise SystemExit(128 + signum)

        self._previous_handler = signal.signal(signal.SIGTERM, handler)

    def stop_message(self, cause: str) -> str:
        where = _where(self.state)
        ended = [
            describe(r, rec)
            for r in range(self.world)
            if r != self.rank and (rec := self.read(r)) and self.gone(rec)
        ]
        others = (
            "; ".join(ended)
            if ended
            else "no other rank reported a failure (the launcher or the scheduler stopped it)"
        )
        return f"rank {self.rank} stopped by {cause}{where}: {others}"


def describe(rank: int, record: dict | None) -> str:
    """One rank's state in words: ``rank 1 died in label shard r00001 (process 123 on node3 is gone)``."""
    if record is None:
        return f"rank {rank} has not reported in this launch"
    where, status = _where(record), record.get("status")
    if status == "failed":
        return f"rank {rank} failed{where}: {record.get('error')}"
    if status == "stopped":
        return f"rank {rank} was stopped{where} ({record.get('error')})"
    if status == "done":
        return f"rank {rank} ended its build without reaching this barrier"
    process = f"process {record.get('pid')} on {record.get('host')}"
    if record.get("host") == socket.gethostname() and not _alive(record.get("pid")):
        return f"rank {rank} died{where} ({process} is gone)"
    at = f" at barrier {record['barrier']}" if status == "waiting" else where
    age = time.time() - record.get("time", 0)
    return f"rank {rank} is {status}{at} (last report {age:.0f} s ago, {process})"


def _where(state: dict) -> str:
    if state.get("shard"):
        return f" in {state.get('stage')} shard {state['shard']}"
    return f" in {state['stage']}" if state.get("stage") else ""


def _alive(pid) -> bool:
    """Whether process ``pid`` of this host runs (a zombie, killed but not yet reaped, does not)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill()
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def reports_failures(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorates the build: the report files it opened (``Ranks.reporting``) end as done, or failed
    with its error, or stopped, so that the ranks waiting at a barrier can name this one."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        depth = len(_ACTIVE)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            for reports in _ACTIVE[depth:]:
                reports.ended(exc)
            raise
        finally:
            opened = _ACTIVE[depth:]
            del _ACTIVE[depth:]
        for reports in opened:
            reports.ended(None)
        return result

    return wrapper


def launched() -> bool:
    """True when a distributed launcher started this process (more than one process may exist)."""
    return any(os.environ.get(name) for name in _LAUNCHER_VARIABLES) and int(os.environ.get("WORLD_SIZE", "1")) > 1


def current(timeout_s: float = DEFAULT_BARRIER_TIMEOUT_S) -> Ranks:
    """This process's ranks; joins the process group on first call when a launcher started us.
    ``timeout_s`` bounds every wait for the other processes (barriers and the group's collectives)."""
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"runtime.barrier_timeout_s must be a number of seconds > 0, got {timeout_s!r}")
    if not launched():
        return Ranks(timeout_s=timeout_s)
    import torch
    from accelerate import PartialState

    # accelerate only forms a CPU (gloo) group when asked to: on a machine without CUDA, or with --cpu.
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    timeout = timedelta(seconds=timeout_s)
    _join_restarted_group("gloo" if cpu else "nccl", timeout)
    state = PartialState(cpu=cpu, timeout=timeout)
    return Ranks(
        index=state.process_index, world=state.num_processes, local=max(0, state.local_process_index),
        timeout_s=timeout_s, launch=_launch_token(state.process_index),
    )  # fmt: skip


def _join_restarted_group(backend: str, timeout: timedelta) -> None:
    """After a launcher restart, form the process group under a store prefix named after the attempt.

    torchrun's static rendezvous keeps one store for every attempt, and the processes of attempt 0
    left their addresses in it: a restarted process that reads a dead peer's address fails to
    connect, or hangs. accelerate's ``PartialState`` then uses the group formed here."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT") or 0)
    if attempt == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    import torch.distributed as dist

    if dist.is_initialized():
        return
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timeout
    )
    prefixed = dist.PrefixStore(f"cpqa/attempt-{attempt}", store)
    dist.init_process_group(backend, store=prefixed, rank=rank, world_size=world, timeout=timeout)


def _launch_token(rank: int) -> str:
    """A token rank 0 draws and every rank receives: it tells this launch's report files from older ones."""
    import torch.distributed as dist

    token = [uuid.uuid4().hex if rank == 0 else None]
    dist.broadcast_object_list(token, src=0)
    return str(token[0])
