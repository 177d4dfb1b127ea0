"""Which device a process uses, and a load-once cache for models.

Map functions receive ``rank`` from ``Dataset.map(with_rank=True)``; with ``num_proc`` equal to the
number of GPUs each worker process then owns one GPU. Models are built by a loader function the first
time a (kind, model id, device) is asked for in a process and reused afterwards, so ``fn_kwargs``
only ever carry names and numbers and the datasets fingerprint stays stable.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

_CACHE: dict[tuple, Any] = {}
_LOCK = threading.Lock()


def device_for(rank: int | None, requested: str = "auto") -> str:
    """``auto`` maps rank r to ``cuda:(r mod n_gpus)`` when CUDA is present, else ``cpu``."""
    if requested != "auto":
        return requested
    import torch

    if torch.cuda.is_available():
        return f"cuda:{(rank or 0) % torch.cuda.device_count()}"
    return "cpu"


def cached(key: tuple, loader: Callable[[], Any]) -> Any:
    """Return the object stored under ``key``, building it with ``loader()`` on first use."""
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = loader()
        return _CACHE[key]


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


@contextlib.contextmanager
def torch_threads(count: int | None = None) -> Iterator[None]:
    """Run with ``count`` torch threads (None: as they are); the process's count is restored afterwards,
    whatever the body set (CTranslate2 sets OpenMP's count for the whole process when it loads)."""
    import torch

    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
