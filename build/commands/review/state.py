"""What the action log means now: each annotator's decisions, the queues, progress and final verdicts.

Rules (the log itself is never changed, ``build.commands.review.store``):
- an annotator's latest action on a target supersedes their earlier ones (a changed mind);
- a human pair stays until its own author withdraws it (or its clip is no longer in the build);
- a clip is *done* by an annotator when they have a verdict on each of its LLM pairs, answered its
  label check, and (when it has one) decided its empathy sample;
- a clip's *annotators* are those with any action on it; with ``overlap`` K, an annotator's queue holds
  the clips they have not done that they already work on or that fewer than K annotators work on,
  in table order;
- the final verdict on an LLM pair (or empathy sample) over its reviewers: kept when more of them kept
  it (accept or edit) than rejected it, a tie rejects; a kept item takes the text of the latest edit
  among those who kept it (``edited``), else stays as built.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .folder import Build, Clip
from .store import ACCEPT, EDIT, EMPATHY, HUMAN, LABEL, PAIR, REJECT, WITHDRAW, Action, human_pair_id


@dataclass(frozen=True)
class Final:
    """The outcome of one reviewed LLM pair or empathy sample."""

    target: str
    kept: bool
    edit: Action | None  # the edit whose text the kept item takes
    reviewed_by: list[str]  # sorted
    verdicts: dict[str, Action]  # annotator -> their latest verdict


def latest(actions: list[Action], kind: str) -> dict[str, dict[str, Action]]:
    """target -> annotator -> their latest action of ``kind`` on it (targets in order of first action)."""
    out: dict[str, dict[str, Action]] = {}
    for action in actions:
        if action.kind == kind:
            out.setdefault(action.target if kind != LABEL else action.segment_id, {})[action.annotator] = (
                action
            )
    return out


def human_pairs(actions: list[Action]) -> list[Action]:
    """Pairs people wrote and their authors have not withdrawn, in the order written."""
    withdrawn = {(a.annotator, a.target) for a in actions if a.kind == WITHDRAW}
    return [a for a in actions if a.kind == HUMAN and (a.annotator, human_pair_id(a)) not in withdrawn]


def final(target: str, verdicts: dict[str, Action]) -> Final:
    keepers = [a for a in verdicts.values() if a.verdict in (ACCEPT, EDIT)]
    kept = len(keepers) > len(verdicts) - len(keepers)
    edits = sorted((a for a in keepers if a.verdict == EDIT), key=lambda a: a.id)
    return Final(target, kept, edits[-1] if kept and edits else None, sorted(verdicts), verdicts)


class ReviewState:
    """The derived state of one build's review, from its actions (recompute after each action)."""

    def __init__(self, build: Build, actions: list[Action]):
        self.build = build
        self.actions = actions
        self.pairs = latest(actions, PAIR)
        self.empathy = latest(actions, EMPATHY)
        self.labels = latest(actions, LABEL)
        clips = {c.segment_id for c in build.clips}
        self.human = [a for a in human_pairs(actions) if a.segment_id in clips]  # a rebuild may drop a clip
        self._by_clip: dict[str, set[str]] = {}
        for action in actions:
            self._by_clip.setdefault(action.segment_id, set()).add(action.annotator)

    def annotators(self) -> list[str]:
        return sorted({a.annotator for a in self.actions})

    def annotators_of(self, segment_id: str) -> set[str]:
        return self._by_clip.get(segment_id, set())

    def done(self, clip: Clip, annotator: str) -> bool:
        pairs_done = all(
            annotator in self.pairs.get(p.question_id, {}) for p in self.build.pairs_of(clip.segment_id)
        )
        sample = self.build.empathy.get(clip.segment_id)
        empathy_done = sample is None or annotator in self.empathy.get(sample.id, {})
        return pairs_done and empathy_done and annotator in self.labels.get(clip.segment_id, {})

    def queue(self, annotator: str, overlap: int) -> list[Clip]:
        """The clips left for ``annotator`` (see the module's rules)."""
        out = []
        for clip in self.build.clips:
            others = self.annotators_of(clip.segment_id)
            if not self.done(clip, annotator) and (annotator in others or len(others) < overlap):
                out.append(clip)
        return out

    def next_clip(self, annotator: str, overlap: int, after: int | None = None) -> Clip | None:
        """The first clip of the queue after position ``after`` (wrapping round), or None when it is empty."""
        queue = self.queue(annotator, overlap)
        later = [c for c in queue if after is None or c.index > after]
        return (later or queue or [None])[0]

    def progress(self, annotator: str | None, overlap: int) -> dict[str, int]:
        """``total`` clips, ``mine`` (done by ``annotator``), ``complete`` (done by ``overlap`` annotators),
        ``started`` (done by at least one)."""
        done_by = Counter()
        for clip in self.build.clips:
            done_by[clip.segment_id] = sum(self.done(clip, a) for a in self.annotators_of(clip.segment_id))
        mine = sum(self.done(c, annotator) for c in self.build.clips) if annotator else 0
        return {
            "total": len(self.build.clips),
            "mine": mine,
            "complete": sum(n >= overlap for n in done_by.values()),
            "started": sum(n > 0 for n in done_by.values()),
        }

    def pair_finals(self) -> dict[str, Final]:
        """question_id -> final verdict, for every reviewed LLM pair of the build (build order)."""
        return {qid: final(qid, self.pairs[qid]) for qid in self.build.pairs if qid in self.pairs}

    def empathy_finals(self) -> dict[str, Final]:
        ids = [s.id for s in self.build.empathy.values()]
        return {sid: final(sid, self.empathy[sid]) for sid in ids if sid in self.empathy}

    def reviews_by_verdict(self) -> Counter:
        """Every annotator's latest verdict on an LLM pair: ``accept``, ``edit``, ``reject: <reason>``."""
        out = Counter()
        for verdicts in self.pairs.values():
            for a in verdicts.values():
                out[a.verdict if a.verdict != REJECT else f"reject: {a.reason}"] += 1
        return out

    def reviewed_clips(self) -> int:
        """Clips done by at least one annotator."""
        return sum(any(self.done(c, a) for a in self.annotators_of(c.segment_id)) for c in self.build.clips)
