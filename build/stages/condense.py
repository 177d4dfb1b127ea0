"""Stage 7, condensation (the paper's Algorithm 1): consistency, occurrence, balanced sampling.

``mark_consistency`` (batched map over emotion windows): ``emotion``, ``valence`` ->
``consistent`` (X_E) and ``condensed_emotion`` (the label, or "unknown" when inconsistent).

A window (c, v) is consistent when c is positive and v >= x, negative and v <= 1 - x, neutral and
y <= v <= 1 - y, or ambiguous (surprised: always). Every bound is inclusive. other/unknown are in
no sentiment class, so they are never consistent. Valences are stored as float32, so the bounds are
computed once in float64 and rounded to float32 (``valence_bounds``): 1 - x computed in float32
would round below the stored 1 - x for x = 0.6, 0.33, ... and miss a valence exactly on it.
``consistent_mask`` is the vectorised test over arrays, ``is_consistent`` the same test for one window.

``count_occurrences`` (batched map over segments): ``emotion_windows`` -> ``emotion_counts`` (consistent
windows per label), ``emotions`` (every label Z with count >= α(Z), in ``schema.EMOTION_LABELS`` order),
``primary_emotion`` and ``drop_reason``. Only labels that have an α are targets; α = 1 lets one window
suffice.

Primary rule, for a segment that passes for several labels: the label whose count exceeds its
threshold the most relative to it (largest count / α); ties go to the larger count, then to the
label first in the fixed class order ``schema.EMOTION_LABELS`` (angry, disgusted, fearful, happy,
neutral, other, sad, surprised, unknown). The order of the ``alpha`` mapping never matters, so a
config that lists α in another order gives the same rows (its fingerprint is the same too).

``sampling_order``: per primary label, every candidate id in draw order: the ids sorted, then
shuffled by a generator seeded with (seed, label), so the order does not depend on row order.
``balanced_sample``: the first N ids of each label's order (at most N per primary label).
``topup_picks``: the replacements for segments lost after sampling (no transcript, no pair
survived the post-filter): for each label short of its quota, the next ids of its order that were
never sampled, as many as are missing or as the order still holds.
"""

from __future__ import annotations

import random

import numpy as np

from ..core.schema import EMOTION_LABELS, SENTIMENT_CLASSES

# the drop reason decided here (X_O)
NO_EMOTION_PASSED = "no emotion reached its occurrence threshold"


def valence_bounds(x: float, y: float) -> tuple[np.float32, np.float32, np.float32, np.float32]:
    """``(v_pos_min, v_neg_max, v_neu_min, v_neu_max)`` = (x, 1 - x, y, 1 - y), each computed in float64
    and rounded once to float32, the precision valences are stored in."""
    x, y = float(x), float(y)
    return np.float32(x), np.float32(1.0 - x), np.float32(y), np.float32(1.0 - y)


def consistent_mask(emotions: list[str | None], valences, x: float, y: float) -> np.ndarray:
    """X_E over many windows at once: a boolean array (a missing emotion or valence is inconsistent)."""
    pos_min, neg_max, neu_min, neu_max = valence_bounds(x, y)
    known = np.array([v is not None for v in valences], dtype=bool)
    v = np.array([np.nan if value is None else value for value in valences], dtype=np.float32)
    labels = np.array([e if e is not None else "" for e in emotions], dtype=object)

    def member(kind: str) -> np.ndarray:
        return np.isin(labels, sorted(SENTIMENT_CLASSES[kind]))

    with np.errstate(invalid="ignore"):  # NaN for a missing valence compares False
        ok = member("positive") & (v >= pos_min)
        ok |= member("negative") & (v <= neg_max)
        ok |= member("neutral") & (v >= neu_min) & (v <= neu_max)
    ok |= member("ambiguous")
    return ok & known


def is_consistent(emotion: str, valence: float, x: float, y: float) -> bool:
    """X_E for one window (the same test as ``consistent_mask``)."""
    pos_min, neg_max, neu_min, neu_max = valence_bounds(x, y)
    valence = np.float32(valence)  # a float64 value written as 0.6 compares as it will be stored
    if emotion in SENTIMENT_CLASSES["positive"]:
        return bool(valence >= pos_min)
    if emotion in SENTIMENT_CLASSES["negative"]:
        return bool(valence <= neg_max)
    if emotion in SENTIMENT_CLASSES["neutral"]:
        return bool(neu_min <= valence <= neu_max)
    return emotion in SENTIMENT_CLASSES["ambiguous"]


def mark_consistency(batch: dict[str, list], *, x: float, y: float) -> dict[str, list]:
    consistent = consistent_mask(batch["emotion"], batch["valence"], x, y).tolist()
    condensed = [emotion if ok else "unknown" for emotion, ok in zip(batch["emotion"], consistent)]
    return {"consistent": consistent, "condensed_emotion": condensed}


def occurrence_labels(counts: dict[str, int], alpha: dict[str, int]) -> list[str]:
    """X_O: every target label whose consistent-window count reaches its α, in ``EMOTION_LABELS`` order."""
    return [label for label in _fixed_order(alpha) if counts.get(label, 0) >= alpha[label]]


def primary_label(labels: list[str], counts: dict[str, int], alpha: dict[str, int]) -> str | None:
    """Largest count / α, then the larger count, then the first in ``EMOTION_LABELS``, not alpha's order."""
    if not labels:
        return None
    order = _fixed_order(labels)
    return max(order, key=lambda z: (counts[z] / alpha[z], counts[z], -order.index(z)))


def _fixed_order(labels) -> list[str]:
    """``labels`` in the class order of ``EMOTION_LABELS`` (one outside it last)."""
    rank = {label: i for i, label in enumerate(EMOTION_LABELS)}
    return sorted(labels, key=lambda label: (rank.get(label, len(rank)), label))


def count_occurrences(batch: dict[str, list], *, alpha: dict[str, int]) -> dict[str, list]:
    out = {"emotion_counts": [], "emotions": [], "primary_emotion": [], "drop_reason": []}
    for windows in batch["emotion_windows"]:
        counts = {label: 0 for label in EMOTION_LABELS}
        for window in windows:
            if window["consistent"]:
                counts[window["emotion"]] += 1
        labels = occurrence_labels(counts, alpha)
        out["emotion_counts"].append(counts)
        out["emotions"].append(labels)
        out["primary_emotion"].append(primary_label(labels, counts, alpha))
        out["drop_reason"].append(None if labels else NO_EMOTION_PASSED)
    return out


def sampling_order(segment_ids: list[str], primary: list[str], seed: int) -> dict[str, list[str]]:
    """Per primary label, the candidate ids in the seeded draw order (order-independent)."""
    by_label: dict[str, list[str]] = {}
    for sid, label in zip(segment_ids, primary):
        by_label.setdefault(label, []).append(sid)
    orders = {}
    for label, ids in sorted(by_label.items()):
        ids = sorted(ids)
        # String seeds are hashed with SHA-512 by random.Random: stable across runs and platforms.
        random.Random(f"{seed}:{label}").shuffle(ids)
        orders[label] = ids
    return orders


def balanced_sample(segment_ids: list[str], primary: list[str], per_category: int, seed: int) -> set[str]:
    """Ids kept: at most ``per_category`` per primary label, the first of each label's draw order."""
    return {sid for ids in sampling_order(segment_ids, primary, seed).values() for sid in ids[: max(0, per_category)]}


def topup_picks(orders: dict[str, list[str]], sampled: set[str], missing: dict[str, int]) -> list[str]:
    """For each label, the next ``missing[label]`` ids of its order that are not in ``sampled``."""
    picks = []
    for label, ids in orders.items():
        want = missing.get(label, 0)
        if want > 0:
            picks += [sid for sid in ids if sid not in sampled][:want]
    return picks


def majority_gender(windows: list[dict]) -> str | None:
    """Most frequent gender over the windows; a tie goes to the higher summed score."""
    totals: dict[str, list[float]] = {}
    for window in windows:
        if window["gender"] is not None:
            entry = totals.setdefault(window["gender"], [0, 0.0])
            entry[0] += 1
            entry[1] += window["gender_score"] or 0.0
    if not totals:
        return None
    return max(sorted(totals), key=lambda g: (totals[g][0], totals[g][1]))
