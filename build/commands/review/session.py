"""One review of one built folder: the build, its action log and the overlap, with checked actions.

``Review.act(action)`` checks that the action names this build's clip and (for a verdict) a pair or an
empathy sample of that clip, that a withdrawn pair is the annotator's own, then commits it
(``Store.record``) and returns it as recorded; every refusal is a ``ValueError`` of one line and writes
nothing.
"""

from __future__ import annotations

from pathlib import Path

from .folder import Build, open_build
from .state import ReviewState
from .store import EMPATHY, PAIR, WITHDRAW, Action, Store, human_pair_id


class Review:
    def __init__(self, build: Build, overlap: int = 1):
        if overlap < 1:
            raise ValueError(f"--overlap {overlap}: each clip needs at least one annotator")
        self.build = build
        self.store = Store(build.out)
        self.overlap = overlap

    @classmethod
    def open(
        cls, out_dir: str | Path, audio_root: str | Path | None = None, overlap: int = 1, audio: bool = True
    ) -> Review:
        """``audio`` False: for work without clip audio (export, import), even on a metadata-only build."""
        return cls(open_build(out_dir, audio_root, audio), overlap)

    def state(self) -> ReviewState:
        return ReviewState(self.build, self.store.actions())

    def problem(self, action: Action) -> str | None:
        """Why ``action`` does not fit this build (one line), or None."""
        clip = self.build.clip(action.segment_id)
        if clip is None:
            return f"unknown segment {action.segment_id!r}"
        if action.kind == PAIR:
            pair = self.build.pairs.get(action.target or "")
            if pair is None or pair.segment_id != clip.segment_id:
                return f"no LLM pair {action.target!r} on clip {clip.segment_id}"
        if action.kind == EMPATHY:
            sample = self.build.empathy.get(clip.segment_id)
            if sample is None or sample.id != action.target:
                return f"no empathy sample {action.target!r} on clip {clip.segment_id}"
        if action.kind == WITHDRAW:
            own = {human_pair_id(a) for a in self.state().human if a.annotator == action.annotator.strip()}
            if action.target not in own:
                return f"{action.target!r} is not a pair {action.annotator.strip()} wrote"
        return None

    def act(self, action: Action) -> Action:
        """Check and commit one action; returns it as recorded (with ``id`` and ``at``)."""
        why = self.problem(action)
        if why:
            raise ValueError(why)
        return self.store.record(action)
