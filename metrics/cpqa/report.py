"""Render CPQA results: the paper's Table 2 layout, a per-category table, and per-clip correlations.

Pure functions over the dicts the ``cpqa`` metric returns; this module imports nothing from its
siblings, so it can be imported on its own (``from metrics.cpqa import report``) or by file path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

CONVENTIONS = ("score", "score_successful")


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _judge_prompt_rows(results: Mapping) -> list[tuple[str, str]]:
    return [(judge, prompt) for judge, prompts in results["judges"].items() for prompt in prompts]


def _markdown(header: list[str], rows: list[list[str]], text_columns: int = 2) -> str:
    """A markdown table: the first ``text_columns`` left-aligned, the numbers right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * text_columns + ["---:"] * (len(header) - text_columns)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


CI_KEYS = {"score": "ci95", "score_successful": "ci95_successful"}


def table2_markdown(results_by_qa_set: Mapping[str, Mapping], convention: str = "score", digits: int = 2) -> str:
    """Rows judge x prompt, one column per QA set (as in the paper's Table 2), scores 0-100.

    ``convention``: ``"score"`` (failed judgements count 0, AudioBench) or ``"score_successful"``.
    Where the results carry 95 % bootstrap intervals, each set's column is followed by its interval.
    A last row gives each set's judgement success rate, so the two conventions can be reconciled.

    >>> r = {"judges": {"gpt-4o": {"audiobench": {"score": 53.333, "score_successful": 80.0, "success_rate": 2/3,
    ...                                          "ci95": [40.0, 66.667]}}}}
    >>> print(table2_markdown({"CPQA": r}), end="")
    | Judge | Prompt | CPQA | CPQA 95 % CI |
    |---|---|---:|---:|
    | gpt-4o | audiobench | 53.33 | [40.00, 66.67] |
    | success rate |  | 66.7 % |  |
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}")
    sets = list(results_by_qa_set)
    rows_seen: list[tuple[str, str]] = []
    for results in results_by_qa_set.values():
        rows_seen += [row for row in _judge_prompt_rows(results) if row not in rows_seen]
    with_ci = {name: _has_intervals(results_by_qa_set[name], convention) for name in sets}
    rows = []
    for judge, prompt in rows_seen:
        cells = []
        for name in sets:
            summary = results_by_qa_set[name]["judges"].get(judge, {}).get(prompt, {})
            cells.append(_cell(summary.get(convention), digits))
            if with_ci[name]:
                cells.append(_interval(summary.get(CI_KEYS[convention]), digits))
        rows.append([judge, prompt] + cells)
    rates = []
    for name in sets:
        rates += [_success_rate_cell(results_by_qa_set[name])] + ([""] if with_ci[name] else [])
    rows.append(["success rate", ""] + rates)
    header = [column for name in sets for column in ([name, f"{name} 95 % CI"] if with_ci[name] else [name])]
    return _markdown(["Judge", "Prompt"] + header, rows)


def _has_intervals(results: Mapping, convention: str) -> bool:
    return any(CI_KEYS[convention] in summary for prompts in results["judges"].values() for summary in prompts.values())


def _interval(interval, digits: int) -> str:
    return "–" if interval is None else f"[{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _success_rate_cell(results: Mapping) -> str:
    summaries = [s for prompts in results["judges"].values() for s in prompts.values()]
    n = sum(s.get("n", 0) for s in summaries)
    if n:
        rate = sum(s["n_judged"] for s in summaries) / n
    elif len(summaries) == 1:
        rate = summaries[0].get("success_rate")
    else:
        rate = None
    return "–" if rate is None else f"{100 * rate:.1f} %"


def category_table_markdown(results: Mapping, convention: str = "score", digits: int = 2) -> str:
    """Rows judge x prompt, one column per QA category, plus the overall score."""
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}")
    categories: list[str] = []
    for prompts in results["judges"].values():
        for summary in prompts.values():
            categories += [c for c in summary.get("by_category", {}) if c not in categories]
    rows = []
    for judge, prompt in _judge_prompt_rows(results):
        summary = results["judges"][judge][prompt]
        cells = [summary.get("by_category", {}).get(c, {}).get(convention) for c in categories]
        rows.append([judge, prompt] + [_cell(c, digits) for c in cells + [summary.get(convention)]])
    return _markdown(["Judge", "Prompt"] + categories + ["all"], rows)


def clip_key(*results: Mapping) -> str:
    """What identifies a clip across QA sets: ``audio_sha256`` (the clip's audio bytes, which
    ``cpqa.py evaluate`` adds to every item) when every item of every set has it, else ``clip_id``.
    Two sets name their clips their own way (a built set by segment id, a set without one by an
    audio hash): the audio is what they share."""
    every = all(item.get("audio_sha256") for res in results for item in res["items"])
    return "audio_sha256" if every else "clip_id"


def clip_scores(
    results: Mapping, judge: str, prompt: str, convention: str = "score", key: str = "clip_id"
) -> dict[str, float]:
    """Mean 0-100 score per clip for one judge x prompt (items need a ``clip_id``, or ``key``).

    With ``"score"`` a failed judgement counts 0; with ``"score_successful"`` it is left out, and a
    clip whose judgements all failed has no score.
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}")
    per_clip: dict[str, list[int]] = {}
    for index, item in enumerate(results["items"]):
        clip = item.get(key)
        if clip is None:
            raise ValueError(f"item {index} has no {key}; pass clip_ids=... (or file paths as audio)")
        rating = item["judgements"][judge][prompt]["rating"]
        ratings = per_clip.setdefault(str(clip), [])
        if rating is not None:
            ratings.append(rating)
        elif convention == "score":
            ratings.append(0)
    return {clip: 20.0 * sum(r) / len(r) for clip, r in per_clip.items() if r}


def clip_correlation(results_a: Mapping, results_b: Mapping, judge: str, prompt: str, convention: str = "score") -> dict:
    """Pearson and Spearman correlation of per-clip scores between two QA sets over the same audio.

    Clips are paired by ``clip_key`` (their audio's sha256 when both sets carry it, else the clip
    id); only clips present in both sets count. A coefficient is None when it is undefined (fewer
    than three shared clips, or constant scores in either set).

    >>> def res(ratings):
    ...     items = [{"clip_id": c, "judgements": {"j": {"p": {"rating": r}}}} for c, r in ratings]
    ...     return {"items": items}
    >>> a = res([("x", 5), ("x", 3), ("y", 1), ("z", 4)])
    >>> b = res([("x", 4), ("y", 0), ("z", 5), ("w", 2)])
    >>> c = clip_correlation(a, b, "j", "p")
    >>> round(c["pearson"], 3), round(c["spearman"], 3), c["n_clips"]
    (0.982, 0.866, 3)
    """
    from scipy.stats import pearsonr, spearmanr

    key = clip_key(results_a, results_b)
    scores_a = clip_scores(results_a, judge, prompt, convention, key)
    scores_b = clip_scores(results_b, judge, prompt, convention, key)
    shared = [clip for clip in scores_a if clip in scores_b]
    a = [scores_a[c] for c in shared]
    b = [scores_b[c] for c in shared]
    defined = len(shared) >= 3 and len(set(a)) > 1 and len(set(b)) > 1
    return {
        "pearson": float(pearsonr(a, b)[0]) if defined else None,
        "spearman": float(spearmanr(a, b)[0]) if defined else None,
        "n_clips": len(shared),
    }


def cell_correlation(results_a: Mapping, results_b: Mapping, convention: str = "score") -> dict:
    """Pearson and Spearman correlation between two QA sets over their Table-2 cells, the paper's comparison.

    A cell is one judge x prompt x QA category score; only cells both sets have count. None when
    undefined (fewer than three shared cells, or constant scores in either set).

    >>> def res(scores):
    ...     return {"judges": {"j": {"p": {"by_category": {c: {"score": s} for c, s in scores.items()}}}}}
    >>> c = cell_correlation(res({"emotion": 80, "speaker": 40, "other": 60}), res({"emotion": 70, "speaker": 20, "other": 65, "x": 1}))
    >>> round(c["pearson"], 3), c["spearman"], c["n_cells"]
    (0.908, 1.0, 3)
    """
    from scipy.stats import pearsonr, spearmanr

    def cells(results):
        return {
            (judge, prompt, category): summary.get(convention)
            for judge, prompts in results["judges"].items()
            for prompt, by_prompt in prompts.items()
            for category, summary in by_prompt.get("by_category", {}).items()
            if summary.get(convention) is not None
        }

    cells_a, cells_b = cells(results_a), cells(results_b)
    shared = [cell for cell in cells_a if cell in cells_b]
    a = [cells_a[c] for c in shared]
    b = [cells_b[c] for c in shared]
    defined = len(shared) >= 3 and len(set(a)) > 1 and len(set(b)) > 1
    return {
        "pearson": float(pearsonr(a, b)[0]) if defined else None,
        "spearman": float(spearmanr(a, b)[0]) if defined else None,
        "n_cells": len(shared),
    }


def controls_markdown(audio: Mapping, text_only: Mapping | None, silenced: Mapping | None, convention: str = "score",
                      digits: int = 2) -> str:
    """Per judge x prompt and QA category: the score with the audio, from the transcript alone, on
    silenced audio, and the audio minus text-only gap (how much the voice adds). A skipped control
    (``{"skipped": ...}`` or None) shows as –.

    >>> def res(scores):
    ...     return {"judges": {"j": {"p": {"score": sum(scores.values()) / 2,
    ...                                    "by_category": {c: {"score": s} for c, s in scores.items()}}}}}
    >>> print(controls_markdown(res({"emotion": 80, "other": 60}), res({"emotion": 30, "other": 60}), None), end="")
    | Judge | Prompt | Category | audio | text only | silenced | audio − text |
    |---|---|---|---:|---:|---:|---:|
    | j | p | emotion | 80.00 | 30.00 | – | 50.00 |
    | j | p | other | 60.00 | 60.00 | – | 0.00 |
    | j | p | all | 70.00 | 45.00 | – | 25.00 |
    """
    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {CONVENTIONS}")

    def score(results, judge, prompt, category):
        if not results or "judges" not in results:
            return None
        summary = results["judges"].get(judge, {}).get(prompt, {})
        summary = summary if category is None else summary.get("by_category", {}).get(category, {})
        return summary.get(convention)

    rows = []
    for judge, prompt in _judge_prompt_rows(audio):
        categories = list(audio["judges"][judge][prompt].get("by_category", {}))
        for category in categories + [None]:
            a, t, s = (score(r, judge, prompt, category) for r in (audio, text_only, silenced))
            gap = a - t if a is not None and t is not None else None
            rows.append([judge, prompt, category or "all"] + [_cell(v, digits) for v in (a, t, s, gap)])
    return _markdown(["Judge", "Prompt", "Category", "audio", "text only", "silenced", "audio − text"], rows, text_columns=3)
