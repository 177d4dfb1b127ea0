"""``cpqa.py review import OUT FILE``: human pairs written elsewhere, into the review's action log.

``FILE`` is a ``.csv`` (header row, UTF-8, a byte-order mark allowed) or a ``.jsonl`` (one object per
line; blank lines skipped) with the fields ``segment_id``, ``question``, ``answer``, ``category``
(one of the paper's Table 1 categories) and ``annotator``. Every row is checked first; each bad one
gives one line ``FILE:LINE: problem`` (the line where the row ends in the file), and a file with any
bad row imports nothing. Otherwise all rows are committed in one transaction, as ``human`` actions
with ``source`` = ``import:<file name>``, in file order.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ...models.categories import CATEGORIES
from .session import Review
from .store import HUMAN, Action

FIELDS = ("segment_id", "question", "answer", "category", "annotator")


class ImportErrors(ValueError):
    """Every problem of the file, one line each."""

    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def read_rows(path: Path) -> list[tuple[int, dict]]:
    """(line, row) of every record; a file that cannot be read as such is one ``ImportErrors`` line."""
    if path.suffix.lower() not in (".csv", ".jsonl"):
        raise ImportErrors([f"{path}: expected a .csv or .jsonl file"])
    if not path.is_file():
        raise ImportErrors([f"{path}: no such file"])
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImportErrors([f"{path}: not UTF-8 text ({error.reason} at byte {error.start})"]) from error
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        missing = [f for f in FIELDS if f not in (reader.fieldnames or [])]
        if missing:
            raise ImportErrors(
                [f"{path}:1: missing column(s) {', '.join(missing)} (need {', '.join(FIELDS)})"]
            )
        return [(reader.line_num, row) for row in reader]
    rows, errors = [], []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            errors.append(f"{path}:{n}: not JSON ({error.msg})")
            continue
        if not isinstance(row, dict):
            errors.append(f"{path}:{n}: expected a JSON object with {', '.join(FIELDS)}")
            continue
        rows.append((n, row))
    if errors:
        raise ImportErrors(errors)
    return rows


def row_problem(review: Review, row: dict) -> str | None:
    values = {f: row.get(f) for f in FIELDS}
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            return f"{name} must be text, got {type(value).__name__}"
    if review.build.clip(values["segment_id"] or "") is None:
        return f"unknown segment {values['segment_id']!r}"
    for name in ("question", "answer", "annotator"):
        if not (values[name] or "").strip():
            return f"empty {name}"
    if values["category"] not in CATEGORIES:
        return f"unknown category {values['category']!r} (one of: {', '.join(CATEGORIES)})"
    return None


def import_pairs(review: Review, file: str | Path) -> int:
    """Check every row, then commit them all; returns how many. ``ImportErrors`` lists every bad row."""
    path = Path(file)
    rows = read_rows(path)
    errors = [f"{path}:{n}: {why}" for n, row in rows if (why := row_problem(review, row))]
    if errors:
        raise ImportErrors(errors)
    if not rows:
        raise ImportErrors([f"{path}: no rows"])
    actions = [
        Action(
            annotator=row["annotator"],
            segment_id=row["segment_id"],
            kind=HUMAN,
            question=row["question"],
            answer=row["answer"],
            category=row["category"],
            source=f"import:{path.name}",
        )
        for _, row in rows
    ]
    return len(review.store.record_all(actions))
