"""The review log: every annotator action, append-only, in ``OUT/review/review.sqlite``.

One table, ``actions``, one row per action, never updated or deleted (triggers refuse both):

- ``id`` (increasing: the order of actions), ``at`` (UTC, ISO 8601 with milliseconds), ``annotator``,
  ``segment_id`` (the clip), ``kind``, ``target``, ``source`` (``app`` or ``import:<file name>``);
- ``kind`` = ``pair``: a verdict on an LLM pair (``target`` = its ``question_id``): ``verdict`` accept,
  edit (``question``, ``answer``, ``category``: the new text; the build keeps the original) or reject
  (``reason`` from ``REJECT_REASONS``; ``other`` needs a ``note``);
- ``empathy``: the same verdicts on the clip's empathy sample (``target`` = its id); an edit gives
  ``answer`` (the new response) and ``strategy``;
- ``label``: the label check (``target`` = the clip): ``verdict`` yes, or no with the ``emotion``
  (one of the nine emotion2vec classes) and ``gender`` the annotator hears;
- ``human``: a pair the annotator wrote (``question``, ``answer``, ``category``; ``target`` null);
  its id is ``<segment_id>-h<action id>``;
- ``withdraw``: the annotator takes back a pair they wrote (``target`` = that pair's id).

A later action of the same annotator on the same target supersedes an earlier one (``build.commands.review.state``);
nothing is lost. The database runs in WAL mode with ``synchronous=FULL``: ``record`` returns only after
the row is on disk, so a ``kill -9`` or a power cut after it loses nothing. Each call opens its own
connection, so any number of threads and processes can write at once (SQLite serialises them).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from ...core.schema import EMOTION_LABELS, FAMILIES, GENDER_LABELS
from ...models.categories import CATEGORIES

PAIR, EMPATHY, LABEL, HUMAN, WITHDRAW = "pair", "empathy", "label", "human", "withdraw"
KINDS = (PAIR, EMPATHY, LABEL, HUMAN, WITHDRAW)
ACCEPT, EDIT, REJECT = "accept", "edit", "reject"
VERDICTS = (ACCEPT, EDIT, REJECT)
YES, NO = "yes", "no"
OTHER_REASON = "other"
REJECT_REASONS = (
    "wrong answer",
    "not answerable from the recording",
    "presupposes a transcript",
    "duplicate",
    "not about paralinguistics or content",
    "garbled",
    OTHER_REASON,
)
STRATEGIES = tuple(s for family in FAMILIES.values() for s in family)
DB_NAME = "review.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    annotator TEXT NOT NULL,
    segment_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT,
    verdict TEXT,
    reason TEXT,
    note TEXT,
    question TEXT,
    answer TEXT,
    category TEXT,
    emotion TEXT,
    gender TEXT,
    strategy TEXT,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_by_clip ON actions (segment_id);
CREATE TRIGGER IF NOT EXISTS actions_no_update BEFORE UPDATE ON actions
BEGIN SELECT RAISE(ABORT, 'review actions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS actions_no_delete BEFORE DELETE ON actions
BEGIN SELECT RAISE(ABORT, 'review actions are append-only'); END;
"""


@dataclass(frozen=True)
class Action:
    """One row of ``actions`` (``id`` and ``at`` are set by ``Store.record``)."""

    annotator: str
    segment_id: str
    kind: str
    target: str | None = None
    verdict: str | None = None
    reason: str | None = None
    note: str | None = None
    question: str | None = None
    answer: str | None = None
    category: str | None = None
    emotion: str | None = None
    gender: str | None = None
    strategy: str | None = None
    source: str = "app"
    id: int | None = None
    at: str | None = None


COLUMNS = tuple(f.name for f in fields(Action))


def _text(value: str | None) -> str:
    return (value or "").strip()


def _check_verdict(action: Action) -> str | None:
    """Why a pair or empathy verdict is incomplete, or None."""
    if action.verdict not in VERDICTS:
        return f"verdict must be one of {', '.join(VERDICTS)}"
    if action.verdict == REJECT:
        if action.reason not in REJECT_REASONS:
            return "a reject needs a reason: " + ", ".join(REJECT_REASONS)
        if action.reason == OTHER_REASON and not _text(action.note):
            return "reason 'other' needs a note"
    if action.verdict == EDIT and action.kind == PAIR:
        return _check_pair_text(action)
    if action.verdict == EDIT and not _text(action.answer):
        return "an edited response cannot be empty"
    if action.verdict == EDIT and action.strategy not in STRATEGIES:
        return f"unknown response strategy {action.strategy!r}"
    return None


def _check_pair_text(action: Action) -> str | None:
    if not _text(action.question):
        return "the question is empty"
    if not _text(action.answer):
        return "the answer is empty"
    if action.category not in CATEGORIES:
        return f"unknown category {action.category!r}: one of {', '.join(CATEGORIES)}"
    return None


def problem(action: Action) -> str | None:
    """Why ``action`` cannot be recorded (one line), or None when it is complete."""
    if not _text(action.annotator):
        return "no annotator name"
    if action.kind not in KINDS:
        return f"unknown kind {action.kind!r}"
    if action.kind in (PAIR, EMPATHY, WITHDRAW) and not action.target:
        return f"a {action.kind} action needs a target"
    if action.kind in (PAIR, EMPATHY):
        return _check_verdict(action)
    if action.kind == HUMAN:
        return _check_pair_text(action)
    if action.kind == LABEL:
        if action.verdict not in (YES, NO):
            return "the label check is yes or no"
        if action.verdict == NO and action.emotion not in EMOTION_LABELS:
            return "say which emotion you hear: " + ", ".join(EMOTION_LABELS)
        if action.verdict == NO and action.gender not in GENDER_LABELS:
            return "say which gender you hear: " + ", ".join(GENDER_LABELS)
    return None


def _clean(action: Action) -> Action:
    """Trimmed text; fields a verdict does not use are left empty."""
    keep_text = action.kind == HUMAN or action.verdict == EDIT
    return Action(
        annotator=_text(action.annotator),
        segment_id=action.segment_id,
        kind=action.kind,
        target=action.target,
        verdict=action.verdict,
        reason=action.reason if action.verdict == REJECT else None,
        note=_text(action.note) or None if action.verdict == REJECT else None,
        question=_text(action.question) if keep_text and action.kind != EMPATHY else None,
        answer=_text(action.answer) if keep_text else None,
        category=action.category if keep_text and action.kind != EMPATHY else None,
        emotion=action.emotion if action.verdict == NO else None,
        gender=action.gender if action.verdict == NO else None,
        strategy=action.strategy if action.kind == EMPATHY and action.verdict == EDIT else None,
        source=action.source,
    )


class Store:
    """The action log of one built folder."""

    def __init__(self, out_dir: str | Path):
        self.path = Path(out_dir) / "review" / DB_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def record(self, action: Action) -> Action:
        """Append one action and commit it; returns it with ``id`` and ``at``. An incomplete action is a
        ``ValueError`` (nothing written)."""
        return self.record_all([action])[0]

    def record_all(self, actions: list[Action]) -> list[Action]:
        """Append several actions in one transaction: all are committed, or none."""
        for action in actions:
            why = problem(action)
            if why:
                raise ValueError(why)
        stamped = []
        at = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                for action in map(_clean, actions):
                    row = {**asdict(action), "at": at}
                    del row["id"]
                    cursor = db.execute(
                        f"INSERT INTO actions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()),
                    )
                    stamped.append(Action(**{**row, "id": cursor.lastrowid}))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return stamped

    def actions(self, segment_id: str | None = None) -> list[Action]:
        """Every action in the order recorded (of one clip when ``segment_id`` is given)."""
        where, args = ("WHERE segment_id = ?", (segment_id,)) if segment_id is not None else ("", ())
        with closing(self._connect()) as db:
            rows = db.execute(
                f"SELECT {', '.join(COLUMNS)} FROM actions {where} ORDER BY id", args
            ).fetchall()
        return [Action(**dict(zip(COLUMNS, row))) for row in rows]


def human_pair_id(action: Action) -> str:
    """The id of a pair written by a person: ``<segment_id>-h<action id>`` (unique, stable)."""
    return f"{action.segment_id}-h{action.id:05d}"
