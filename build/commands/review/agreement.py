"""How good the pseudo-labels are, and how much the annotators agree, from the review's actions.

Pseudo-label precision. The unit is one label check (one annotator on one clip). The clip's primary
emotion counts as correct when the annotator said yes, or said no and named that same emotion; its
gender likewise. Precision of emotion E = correct checks / checks of clips whose primary emotion is E;
of gender G the same over clips labelled G. Each comes with the 95 % Wilson score interval
(``statsmodels.stats.proportion.proportion_confint``, ``method="wilson"``).

Agreement. An item (an LLM pair, a clip's label check) rated by two or more annotators takes part;
with m the smallest number of raters among those items, each contributes the ratings of its first m
raters (in the order they acted). m = 2: Cohen's kappa (``sklearn.metrics.cohen_kappa_score``) of the
first against the second rater; m >= 3: Fleiss' kappa (``statsmodels.stats.inter_rater.fleiss_kappa``
on ``aggregate_raters``). When every rating is the same, kappa is undefined (reported as n/a).
Ratings: ``keep`` / ``reject`` for a pair (an edit keeps it); for a label check, the emotion (or the
gender) the annotator says the clip has.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa
from statsmodels.stats.proportion import proportion_confint

from .state import ReviewState
from .store import REJECT, YES, Action

CONFIDENCE = 0.95


@dataclass(frozen=True)
class Precision:
    label: str  # the pseudo-label (an emotion, or a gender)
    checks: int
    correct: int
    low: float
    high: float

    @property
    def value(self) -> float:
        return self.correct / self.checks


def wilson(correct: int, n: int) -> tuple[float, float]:
    """The 95 % Wilson score interval of ``correct`` out of ``n`` (n > 0)."""
    low, high = proportion_confint(correct, n, alpha=1 - CONFIDENCE, method="wilson")
    return float(low), float(high)


def precision(pairs: list[tuple[str, bool]]) -> list[Precision]:
    """Per pseudo-label (sorted): checks, correct, Wilson interval, from (label, correct) pairs."""
    out = []
    for label in sorted({label for label, _ in pairs}):
        hits = [ok for name, ok in pairs if name == label]
        out.append(Precision(label, len(hits), sum(hits), *wilson(sum(hits), len(hits))))
    return out


def heard(
    check: Action, pseudo_emotion: str | None, pseudo_gender: str | None
) -> tuple[str | None, str | None]:
    """The (emotion, gender) an annotator says a clip has: the pseudo-labels when they said yes."""
    return (pseudo_emotion, pseudo_gender) if check.verdict == YES else (check.emotion, check.gender)


def label_precision(state: ReviewState) -> tuple[list[Precision], list[Precision]]:
    """(emotion rows, gender rows) of pseudo-label precision over every annotator's latest check."""
    emotions, genders = [], []
    for clip in state.build.clips:
        for check in state.labels.get(clip.segment_id, {}).values():
            emotion, gender = heard(check, clip.primary_emotion, clip.gender)
            emotions.append(
                (clip.primary_emotion or "(none)", check.verdict == YES or emotion == clip.primary_emotion)
            )
            genders.append((clip.gender or "(none)", check.verdict == YES or gender == clip.gender))
    return precision(emotions), precision(genders)


@dataclass(frozen=True)
class Kappa:
    what: str
    method: str  # "Cohen" or "Fleiss"
    items: int
    raters: int  # per item
    kappa: float | None  # None: undefined (every rating the same)


def kappa(what: str, ratings: list[list[str]]) -> Kappa | None:
    """Agreement over items' ratings (each list in the order the raters acted); None when no item has two."""
    rated = [r for r in ratings if len(r) >= 2]
    if not rated:
        return None
    m = min(len(r) for r in rated)
    rows = [r[:m] for r in rated]
    if m == 2:
        with warnings.catch_warnings():  # one label only: undefined, reported as such below
            warnings.simplefilter("ignore")
            value = float(cohen_kappa_score([r[0] for r in rows], [r[1] for r in rows]))
        method = "Cohen"
    else:
        labels = sorted({x for r in rows for x in r})
        codes = np.array([[labels.index(x) for x in r] for r in rows])
        with np.errstate(divide="ignore", invalid="ignore"):
            value = float(fleiss_kappa(aggregate_raters(codes, n_cat=len(labels))[0], method="fleiss"))
        method = "Fleiss"
    return Kappa(what, method, len(rows), m, None if math.isnan(value) else value)


def agreements(state: ReviewState) -> list[Kappa]:
    """Kappa on pair keep/reject, on the emotion heard and on the gender heard (those that have items)."""
    first_id = {}
    for action in state.actions:
        first_id.setdefault((action.kind, action.target or action.segment_id, action.annotator), action.id)

    def ordered(kind: str, target: str, verdicts: dict[str, Action]) -> list[Action]:
        return sorted(verdicts.values(), key=lambda a: first_id[(kind, target, a.annotator)])

    pairs = [
        ["reject" if a.verdict == REJECT else "keep" for a in ordered("pair", q, v)]
        for q, v in state.pairs.items()
    ]
    emotions, genders = [], []
    for clip in state.build.clips:
        checks = ordered("label", clip.segment_id, state.labels.get(clip.segment_id, {}))
        emotions.append([heard(c, clip.primary_emotion, clip.gender)[0] or "(none)" for c in checks])
        genders.append([heard(c, clip.primary_emotion, clip.gender)[1] or "(none)" for c in checks])
    found = [
        kappa("LLM pairs: keep or reject", pairs),
        kappa("label check: emotion heard", emotions),
        kappa("label check: gender heard", genders),
    ]
    return [k for k in found if k is not None]
