"""Splits for training use: every clip goes to one named split, and no recording has clips in two splits.

Why not speaker-disjoint: diarization runs per clip, so its labels are local to a clip (SPEAKER_00 of
one clip need not be SPEAKER_00 of the next), and no split derived from them can keep a person out of
two splits; ``split_by=speaker`` is refused with that reason. Recording-disjoint splits keep every
diarized speaker of a recording in one split.

``parse_splits("train=0.8,test=0.2")`` -> ``{"train": 0.8, "test": 0.2}`` (fractions of clips, summing to 1).

``assign_splits(keys, fractions, seed)``: ``keys[i]`` are the group keys of clip i (its recording id).
Clips that share a key, directly or through other clips, form one group (union-find). Groups are shuffled with ``seed`` and
each goes, in that order, to the split furthest below its share of the clips placed so far plus this
group (ties: the split with the larger fraction, then the name first in alphabetical order, so the
order the splits are written in never matters). The result depends only on the keys, the fractions
and the seed.
"""

from __future__ import annotations

import random
from collections import Counter

SPLIT_BY = ("recording",)
SPEAKER_REFUSED = (
    "export.split_by=speaker: diarization labels speakers per clip (SPEAKER_00 in one clip is not SPEAKER_00 in the next), "
    "so no split can keep a speaker out of two splits; use split_by=recording, which keeps every diarized speaker of a recording in one split"
)


def parse_splits(text: str) -> dict[str, float]:
    """``name=fraction`` pairs separated by commas; names are Hub split names, fractions sum to 1."""
    splits: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.strip().partition("=")
        try:
            fraction = float(value)
        except ValueError:
            fraction = -1.0
        if not sep or not name or fraction <= 0:
            raise ValueError(f"--splits {text!r}: expected name=fraction pairs with fractions above 0, e.g. train=0.8,test=0.2")
        splits[name] = fraction
    return check_splits(splits)


def check_splits(splits: dict[str, float]) -> dict[str, float]:
    if not splits or any(not str(name).replace("_", "").isalnum() for name in splits):
        raise ValueError(f"export.splits {splits!r}: split names are letters, digits and underscores, e.g. train, test")
    if any(not isinstance(f, (int, float)) or f <= 0 for f in splits.values()) or abs(sum(splits.values()) - 1.0) > 1e-6:
        raise ValueError(f"export.splits {splits!r}: fractions must be above 0 and sum to 1")
    return {str(name): float(f) for name, f in splits.items()}


def check_split_by(split_by: str) -> str:
    if split_by == "speaker":
        raise ValueError(SPEAKER_REFUSED)
    if split_by not in SPLIT_BY:
        raise ValueError(f"export.split_by {split_by!r}: expected one of {', '.join(SPLIT_BY)}")
    return split_by


def _groups(keys: list[list[str]]) -> list[list[int]]:
    """Clip indices grouped so that clips sharing any key are together; groups sorted by their smallest key."""
    parent: dict[str, str] = {}

    def find(k: str) -> str:
        while parent.setdefault(k, k) != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for clip_keys in keys:
        if not clip_keys:
            raise ValueError("every clip needs at least one group key (its recording id)")
        for other in clip_keys[1:]:
            a, b = find(clip_keys[0]), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    members: dict[str, list[int]] = {}
    for i, clip_keys in enumerate(keys):
        members.setdefault(find(clip_keys[0]), []).append(i)
    return [members[root] for root in sorted(members)]


def assign_splits(keys: list[list[str]], fractions: dict[str, float], seed: int) -> list[str]:
    """The split of each clip (see the module docstring)."""
    groups = _groups(keys)
    random.Random(seed).shuffle(groups)
    names = sorted(fractions, key=lambda n: (-fractions[n], n))  # the tie order, whatever the mapping's order
    counts: Counter = Counter()
    placed = 0
    out = [""] * len(keys)
    for group in groups:
        total = placed + len(group)
        name = max(names, key=lambda n: (fractions[n] * total - counts[n], -names.index(n)))
        counts[name] += len(group)
        placed = total
        for i in group:
            out[i] = name
    return out


def split_keys(recording_ids: list[str]) -> list[list[str]]:
    """Group keys per clip: its recording."""
    return [[rid] for rid in recording_ids]
