"""Helpers over column dicts (``{name: [values]}``), the form every stage's map function takes and returns."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from datasets import Dataset, DatasetInfo, Features

from ..core import schema


def rows(columns: dict[str, list]) -> list[dict]:
    return [dict(zip(columns, values)) for values in zip(*columns.values())] if columns else []


def from_rows(items: list[dict], features: Features) -> dict[str, list]:
    return {name: [item.get(name) for item in items] for name in features}


def pick(columns: dict[str, list], indices: list[int]) -> dict[str, list]:
    return {name: [values[i] for i in indices] for name, values in columns.items()}


def batches(columns: dict[str, list], size: int) -> Iterator[dict[str, list]]:
    n = len(next(iter(columns.values()))) if columns else 0
    for lo in range(0, n, max(1, size)):
        yield {name: values[lo : lo + size] for name, values in columns.items()}


def split(
    stage: str, columns: dict[str, list], reasons: list[str | None], details: list | None = None
) -> tuple[list[int], list[dict]]:
    """The rows to keep (no reason), and a dropped row (``schema.DROPPED``) for each of the others."""
    keep, dropped = [], []
    for i, reason in enumerate(reasons):
        if reason is None:
            keep.append(i)
            continue
        row = {
            "stage": stage,
            "recording_id": columns["recording_id"][i],
            "segment_id": columns["segment_id"][i],
            "reason": reason,
            "detail": details[i] if details else None,
        }
        if "pair_index" in columns:
            row["pair_index"] = columns["pair_index"][i]
        dropped.append(row)
    return keep, dropped


def map_batches(columns: dict[str, list], fn, size: int, advance, *args, **kwargs) -> dict[str, list]:
    """A stage's batched function over ``columns`` in batches of ``size``; each batch's audio seconds
    go to ``advance``."""
    out: dict[str, list] = {}
    for batch in batches(columns, size):
        for name, values in fn(batch, *args, **kwargs).items():
            out.setdefault(name, []).extend(values)
        advance(sum(e - s for s, e in zip(batch["start"], batch["end"])))
    return out


def dataset(table: pa.Table, features: Features) -> Dataset:
    return Dataset(table.cast(features.arrow_schema), info=DatasetInfo(features=features))


def merged(*parts: Features, without: tuple[str, ...] = ()) -> Features:
    out: dict = {}
    for part in parts:
        out.update(part)
    return Features({k: v for k, v in out.items() if k not in without})


ASR_SEGMENT = merged(schema.CONDENSED_SEGMENT, schema.ASR_OUTPUT, without=("asr_error",))
QA_SEGMENT = merged(ASR_SEGMENT, schema.WORDS_OUTPUT, schema.QA_OUTPUT, without=("qa_error",))
VAD_RECORDING = merged(schema.PLANNED_RECORDING, schema.VAD_OUTPUT)
SAMPLE_MANIFEST = Features(
    {
        "segment_id": schema.SEGMENT["segment_id"],
        "shard": schema.PLANNED_RECORDING["shard"],
        "start": schema.SEGMENT["start"],
        "end": schema.SEGMENT["end"],
    }
)
