"""How errors are worded, once for every stage: a file and span named, then the first line of the cause."""

from __future__ import annotations

import json


def first_line(exc: BaseException, with_type: bool = True) -> str:
    """``ValueError: the first line of its message`` (or the message alone with ``with_type=False``)."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if with_type else lines[0]


def span_label(path: str, start: float, end: float) -> str:
    """``/data/a.wav [1.000-3.000 s]``: where in which file a window or segment lies."""
    return f"{path} [{start:.3f}-{end:.3f} s]"


class PreflightError(RuntimeError):
    """What a build cannot do without; one line per problem, the first one first."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        head = problems[0] if len(problems) == 1 else f"{problems[0]} [1 of {len(problems)} problems; --debug lists them all]"
        super().__init__("\n".join([head, *problems[1:]]))


def json_object(line: str, where: str) -> dict:
    """One JSONL line as a dict, or a ``ValueError`` starting with ``where`` (file and line)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: not a JSON object ({exc.msg})") from exc
    if not isinstance(record, dict):
        raise ValueError(f"{where}: not a JSON object (a JSON {type(record).__name__})")
    return record
