"""Which process this is, through ``accelerate``: the same code for one process and for N on M machines.

``accelerate launch --multi_gpu --num_processes N cpqa.py build ...`` (or ``torchrun``, or any launcher
that sets the usual ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` variables) starts N copies of the build;
``PartialState`` joins them into one process group (NCCL on GPUs, gloo on a machine without CUDA; on a
CPU-only machine ``--multi_gpu`` only selects accelerate's torchrun launcher). A plain
``python cpqa.py build`` is the one-process case and initialises nothing.

- rank r takes tasks r, r + N, r + 2N, ... of every per-shard stage (``Ranks.mine``);
- its device is ``cuda:<local rank>`` (or the CPU), chosen by ``devices.device_for``;
- rank 0 runs the global steps (ingest plan, balanced sampling, export) between barriers
  (``Ranks.barrier`` is accelerate's ``wait_for_everyone``).

Barriers wait as long as the slowest process needs for its shards: the process group is created with
a timeout of a week, not torch's 30 minutes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")
_LAUNCHER_VARIABLES = ("WORLD_SIZE", "LOCAL_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")


@dataclass(frozen=True)
class Ranks:
    index: int = 0  # global rank
    world: int = 1  # number of processes
    local: int = 0  # rank on this machine: picks the GPU

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def mine(self, items: list[T]) -> list[T]:
        """This process's share: every ``world``-th item from its own index on."""
        return items[self.index :: self.world]

    def barrier(self) -> None:
        if self.world > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()


def launched() -> bool:
    """True when a distributed launcher started this process (more than one process may exist)."""
    return any(os.environ.get(name) for name in _LAUNCHER_VARIABLES) and int(os.environ.get("WORLD_SIZE", "1")) > 1


def current(timeout_s: float = 7 * 24 * 3600) -> Ranks:
    """This process's ranks; joins the process group on first call when a launcher started us."""
    if not launched():
        return Ranks()
    import torch
    from accelerate import PartialState

    # accelerate only forms a CPU (gloo) group when asked to: on a machine without CUDA, or with --cpu.
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu, timeout=timedelta(seconds=timeout_s))
    return Ranks(index=state.process_index, world=state.num_processes, local=max(0, state.local_process_index))
