"""Score arithmetic for CPQA: best window per item, and 0-100 summaries under both failure conventions.

Ratings are integers 0..5, or None when a judgement failed (an error, or a reply without a
parseable rating). A failure is never silently a 0: every summary reports
- ``score``: mean rating x 20 with failures counted as 0 (AudioBench's convention),
- ``score_successful``: mean rating x 20 over the successful judgements only (None if there are none),
- ``success_rate``: the share of judgements that produced a rating.
"""

from __future__ import annotations

from collections.abc import Sequence

SCALE = 20.0  # ratings 0..5 -> scores 0..100


def summarize(ratings: Sequence[int | None]) -> dict:
    """The three numbers for a list of ratings (None = failed judgement).

    >>> s = summarize([5, 3, None])
    >>> round(s["score"], 2), s["score_successful"], round(s["success_rate"], 4), s["n"], s["n_judged"]
    (53.33, 80.0, 0.6667, 3, 2)
    """
    judged = [r for r in ratings if r is not None]
    n = len(ratings)
    return {
        "score": SCALE * sum(judged) / n if n else None,
        "score_successful": SCALE * sum(judged) / len(judged) if judged else None,
        "success_rate": len(judged) / n if n else None,
        "n": n,
        "n_judged": len(judged),
    }


def summarize_by_category(ratings: Sequence[int | None], categories: Sequence[str | None] | None) -> dict[str, dict]:
    """``summarize`` per QA category, categories in order of first appearance; {} without categories."""
    if categories is None:
        return {}
    groups: dict[str, list[int | None]] = {}
    for rating, category in zip(ratings, categories):
        groups.setdefault(category if category is not None else "unknown", []).append(rating)
    return {category: summarize(group) for category, group in groups.items()}


def best_window(window_ratings: Sequence[int | None]) -> int | None:
    """Index of the best-rated window (the first on ties); None when every window failed.

    A failed window loses to any rating, which is the max under both conventions.

    >>> best_window([2, 4]), best_window([None, 1]), best_window([3, 3]), best_window([None, None])
    (1, 1, 0, None)
    """
    best = None
    for index, rating in enumerate(window_ratings):
        if rating is not None and (best is None or rating > window_ratings[best]):
            best = index
    return best


def overall(summaries: Sequence[dict]) -> dict:
    """The headline numbers: the mean over judge x prompt summaries, and the pooled success rate."""
    scores = [s["score"] for s in summaries if s["score"] is not None]
    successful = [s["score_successful"] for s in summaries if s["score_successful"] is not None]
    n = sum(s["n"] for s in summaries)
    return {
        "score": sum(scores) / len(scores) if scores else None,
        "score_successful": sum(successful) / len(successful) if successful else None,
        "success_rate": sum(s["n_judged"] for s in summaries) / n if n else None,
    }


BOOTSTRAP_REPS = 1000
BOOTSTRAP_SEED = 0


def bootstrap_ci(
    ratings: Sequence[float | None],
    clips: Sequence[str | None] | None,
    convention: str = "score",
    reps: int = BOOTSTRAP_REPS,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> list[float] | None:
    """A percentile bootstrap interval of the 0-100 score, resampling whole clips with replacement.

    Questions on one clip are not independent (one voice, one transcript), so clips are the unit: each
    of ``reps`` resamples draws as many clips as there are, with replacement (numpy's PCG64 seeded with
    ``seed``), and scores every question of the drawn clips. ``convention`` ``"score"`` counts a failed
    judgement (None) as 0; ``"score_successful"`` leaves it out (a resample without any rating is
    skipped). An item without a clip is a clip of its own. None when there is nothing to score.

    >>> bootstrap_ci([5, 5, 5], ["a", "a", "b"])  # every clip scores 100: no spread
    [100.0, 100.0]
    """
    import numpy as np

    if convention not in ("score", "score_successful"):
        raise ValueError(f"convention must be 'score' or 'score_successful', not {convention!r}")
    if not ratings:
        return None
    clips = list(clips) if clips is not None else [None] * len(ratings)
    index: dict[object, int] = {}
    keys = [clip if clip is not None else ("item", i) for i, clip in enumerate(clips)]
    clip_of = np.array([index.setdefault(key, len(index)) for key in keys])
    judged = np.array([r is not None for r in ratings])
    values = np.array([r if r is not None else 0.0 for r in ratings], dtype=float)
    counted = judged if convention == "score_successful" else np.ones(len(ratings), dtype=bool)
    clip_sum = np.bincount(clip_of, weights=values, minlength=len(index))
    clip_n = np.bincount(clip_of, weights=counted.astype(float), minlength=len(index))
    draws = np.random.default_rng(seed).integers(0, len(index), size=(reps, len(index)))
    sums, counts = clip_sum[draws].sum(axis=1), clip_n[draws].sum(axis=1)
    scores = SCALE * sums[counts > 0] / counts[counts > 0]
    if not len(scores):
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(scores, [tail, 100 - tail])
    return [float(low), float(high)]
