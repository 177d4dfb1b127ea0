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
