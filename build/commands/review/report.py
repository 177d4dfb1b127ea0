"""The "Human review" section of the card (also what ``cpqa.py review export`` prints).

Contents, all from the action log (``build.commands.review.state``) and the build's tables:
- who reviewed, clips reviewed (done by at least one annotator) of all clips;
- every annotator's latest verdict on an LLM pair: accepted, edited, rejected by reason; then the
  pairs each config holds;
- Table 1: pairs per category of the LLM set (``qa``), the reviewed LLM set (``qa_reviewed``) and the
  human set (``qa_human``), counts and shares side by side (``build.publishing.stats.table1``);
- pseudo-label precision per primary emotion and per gender with 95 % Wilson intervals, and the
  annotators' agreement (``build.commands.review.agreement``).
"""

from __future__ import annotations

from collections import Counter

from ...publishing.card import markdown_table
from ...publishing.stats import SetStats, table1
from .agreement import Precision, agreements, label_precision
from .state import ReviewState
from .store import REJECT_REASONS

FIGURE = "stats/human_review_categories.png"  # relative to the built folder, as the card links it


def _set(categories: list[str]) -> SetStats:
    return SetStats(Counter(categories), Counter(), Counter(), Counter(), Counter())


def table1_sets(state: ReviewState) -> dict[str, SetStats]:
    finals = state.pair_finals()
    reviewed = []
    for qid, result in finals.items():
        if result.kept:
            reviewed.append(
                result.edit.category if result.edit is not None else state.build.pairs[qid].category
            )
    return {
        "LLM (qa)": _set([p.category for p in state.build.pairs.values()]),
        "LLM reviewed (qa_reviewed)": _set(reviewed),
        "human (qa_human)": _set([a.category for a in state.human]),
    }


def verdict_table(state: ReviewState) -> str:
    counts = state.reviews_by_verdict()
    rows = [("accepted", counts["accept"]), ("edited", counts["edit"])]
    rows += [(f"rejected: {reason}", counts[f"reject: {reason}"]) for reason in REJECT_REASONS]
    rows.append(("rejected (all reasons)", sum(counts[f"reject: {r}"] for r in REJECT_REASONS)))
    return markdown_table(("verdict on an LLM pair", "reviews"), rows)


def precision_table(rows: list[Precision], header: str) -> str:
    if not rows:
        return "(no label check yet)"
    body = [
        (p.label, p.checks, p.correct, f"{100 * p.value:.1f}", f"{100 * p.low:.1f}–{100 * p.high:.1f}")
        for p in rows
    ]
    return markdown_table((header, "checks", "correct", "precision %", "95 % CI (Wilson)"), body)


def agreement_text(state: ReviewState) -> str:
    found = agreements(state)
    if not found:
        return "No item was reviewed by two annotators (`--overlap 2` gives agreement figures)."
    body = [
        (
            k.what,
            k.method,
            k.items,
            k.raters,
            "n/a (every rating the same)" if k.kappa is None else f"{k.kappa:.3f}",
        )
        for k in found
    ]
    return markdown_table(("ratings", "kappa", "items", "raters per item", "value"), body)


def human_review_section(state: ReviewState, rows: dict[str, int]) -> str:
    """The markdown section (a ``##`` heading and its ``###`` parts)."""
    names = state.annotators()
    finals, empathy = state.pair_finals(), state.empathy_finals()
    emotions, genders = label_precision(state)
    lines = [
        "## Human review",
        "",
        f"Reviewed with `cpqa.py review` by {len(names)} annotator(s) ({', '.join(names) or 'none'}); "
        f"{state.reviewed_clips()} of {len(state.build.clips)} clips reviewed. Configs: `qa_reviewed` "
        f"({rows['qa_reviewed']} of the {len(finals)} reviewed LLM pairs kept, of {len(state.build.pairs)}), "
        f"`qa_human` ({rows['qa_human']} pairs written by people), `empathy_reviewed` "
        f"({rows['empathy_reviewed']} of {len(empathy)} reviewed samples kept).",
        "",
        "### Verdicts on the LLM's pairs",
        "",
        verdict_table(state),
        "",
        "### Table 1: pairs per category, LLM and human",
        "",
        table1(table1_sets(state)),
        "",
        f"![Table 1: pairs per category, LLM and human]({FIGURE})",
        "",
        "### Pseudo-label precision (label checks)",
        "",
        "One check is one annotator's answer on one clip; a label is correct when they heard it.",
        "",
        precision_table(emotions, "primary emotion"),
        "",
        precision_table(genders, "gender"),
        "",
        "### Agreement between annotators",
        "",
        agreement_text(state),
    ]
    return "\n".join(lines) + "\n"
