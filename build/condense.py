"""Stage 7, condensation (the paper's Algorithm 1): consistency, occurrence, balanced sampling.

``mark_consistency`` (batched map over emotion windows): ``emotion``, ``valence`` ->
``consistent`` (X_E) and ``condensed_emotion`` (the label, or "unknown" when inconsistent).

A window (c, v) is consistent when c is positive and v >= x, negative and v <= 1 - x, neutral and
y <= v <= 1 - y, or ambiguous (surprised: always). Every bound is inclusive. other/unknown are in
no sentiment class, so they are never consistent.

``count_occurrences`` (batched map over segments): ``emotion_windows`` -> ``emotion_counts`` (consistent
windows per label), ``emotions`` (every label Z with count >= α(Z), in ``alpha`` order), ``primary_emotion``
and ``drop_reason``. Only labels that have an α are targets; α = 1 lets one window suffice.

Primary rule, for a segment that passes for several labels: the label whose count exceeds its
threshold the most relative to it (largest count / α); ties go to the larger count, then to the
label listed first in ``alpha``.

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

from .schema import EMOTION_LABELS, SENTIMENT_CLASSES

# the drop reason decided here (X_O)
NO_EMOTION_PASSED = "no emotion reached its occurrence threshold"


def is_consistent(emotion: str, valence: float, x: float, y: float) -> bool:
    # Valence is stored as float32: compare at that precision, so a value written as exactly
    # 0.6 still sits on the 1 - y bound after a round trip through a dataset.
    valence, x, y = np.float32(valence), np.float32(x), np.float32(y)
    if emotion in SENTIMENT_CLASSES["positive"]:
        return bool(valence >= x)
    if emotion in SENTIMENT_CLASSES["negative"]:
        return bool(valence <= np.float32(1) - x)
    if emotion in SENTIMENT_CLASSES["neutral"]:
        return bool(y <= valence <= np.float32(1) - y)
    return emotion in SENTIMENT_CLASSES["ambiguous"]


def mark_consistency(batch: dict[str, list], *, x: float, y: float) -> dict[str, list]:
    consistent, condensed = [], []
    for emotion, valence in zip(batch["emotion"], batch["valence"]):
        ok = emotion is not None and valence is not None and is_consistent(emotion, valence, x, y)
        consistent.append(ok)
        condensed.append(emotion if ok else "unknown")
    return {"consistent": consistent, "condensed_emotion": condensed}


def occurrence_labels(counts: dict[str, int], alpha: dict[str, int]) -> list[str]:
    """X_O: every target label whose consistent-window count reaches its α."""
    return [label for label, threshold in alpha.items() if counts.get(label, 0) >= threshold]


def primary_label(labels: list[str], counts: dict[str, int], alpha: dict[str, int]) -> str | None:
    if not labels:
        return None
    order = list(alpha)
    return max(labels, key=lambda z: (counts[z] / alpha[z], counts[z], -order.index(z)))


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
