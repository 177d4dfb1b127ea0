import pytest

from build.condense import (
    balanced_sample,
    count_occurrences,
    is_consistent,
    majority_gender,
    mark_consistency,
    occurrence_labels,
    primary_label,
)
from build.config import PAPER_ALPHA

X, Y = 0.5, 0.4  # the paper's best: v_pos_min 0.5, v_neg_max 0.5, neutral band [0.4, 0.6]


@pytest.mark.parametrize(
    "emotion, valence, expected",
    [
        ("happy", 0.5, True),  # exactly on v_pos_min
        ("happy", 0.4999, False),
        ("happy", 0.9, True),
        ("angry", 0.5, True),  # exactly on v_neg_max
        ("angry", 0.5001, False),
        ("disgusted", 0.1, True),
        ("fearful", 0.7, False),
        ("sad", 0.0, True),
        ("neutral", 0.4, True),  # exactly on v_neu_min
        ("neutral", 0.6, True),  # exactly on v_neu_max
        ("neutral", 0.3999, False),
        ("neutral", 0.6001, False),
        ("surprised", 0.0, True),  # ambiguous: always consistent
        ("surprised", 1.0, True),
        ("other", 0.5, False),
        ("unknown", 0.5, False),
    ],
)
def test_consistency_truth_table(emotion, valence, expected):
    assert is_consistent(emotion, valence, X, Y) is expected


def test_thresholds_survive_float32_storage():
    from datasets import Dataset, Features, Value

    data = Dataset.from_dict(
        {"emotion": ["neutral", "neutral", "happy", "sad"], "valence": [0.4, 0.6, 0.5, 0.5]},
        features=Features({"emotion": Value("string"), "valence": Value("float32")}),
    )
    out = data.map(mark_consistency, batched=True, fn_kwargs=dict(x=X, y=Y))
    assert out["consistent"] == [True, True, True, True]


def test_mark_consistency_relabels_inconsistent_windows_unknown():
    out = mark_consistency({"emotion": ["happy", "sad", "other", None], "valence": [0.2, 0.2, 0.5, 0.5]}, x=X, y=Y)
    assert out == {"consistent": [False, True, False, False], "condensed_emotion": ["unknown", "sad", "unknown", "unknown"]}


def _windows(*labels):
    return [{"emotion": label, "consistent": label != "unknown"} for label in labels]


def test_occurrence_counts_against_paper_alpha():
    windows = _windows(*(["sad"] * 2 + ["fearful"] * 3 + ["happy"] * 4 + ["unknown"] * 5 + ["neutral"] * 6))
    out = count_occurrences({"emotion_windows": [windows]}, alpha=PAPER_ALPHA)
    counts = out["emotion_counts"][0]
    assert counts["sad"] == 2 and counts["fearful"] == 3 and counts["happy"] == 4 and counts["neutral"] == 6
    assert counts["unknown"] == 0  # inconsistent windows are not counted
    assert out["emotions"] == [["happy", "sad"]]  # fearful 3 < α 4; neutral is no target
    assert out["primary_emotion"] == ["happy"]  # ties at count/α = 1.0 go to the larger count (4 > 2)
    assert out["drop_reason"] == [None]


def test_occurrence_drop_reason_when_nothing_passes():
    out = count_occurrences({"emotion_windows": [_windows("angry", "angry", "neutral")]}, alpha=PAPER_ALPHA)
    assert out["emotions"] == [[]] and out["primary_emotion"] == [None]
    assert out["drop_reason"] == ["no emotion reached its occurrence threshold"]


def test_alpha_one_disables_the_filter():
    alpha = {label: 1 for label in PAPER_ALPHA}
    assert occurrence_labels({"angry": 1}, alpha) == ["angry"]


def test_primary_label_rule():
    alpha = {"angry": 10, "sad": 2, "surprised": 3}
    assert primary_label(["angry", "sad"], {"angry": 20, "sad": 3}, alpha) == "angry"  # 2.0 > 1.5
    assert primary_label(["angry", "sad"], {"angry": 10, "sad": 2}, alpha) == "angry"  # tie 1.0: larger count
    assert primary_label(["sad", "surprised"], {"sad": 6, "surprised": 9}, alpha) == "surprised"  # tie 3.0, count 9 > 6
    assert primary_label(["angry", "sad"], {"angry": 2, "sad": 2}, {"angry": 2, "sad": 2}) == "angry"  # full tie: alpha order


def test_balanced_sampler_is_seeded_quota_bound_and_order_independent():
    ids = [f"rec{i:03d}-0000" for i in range(50)]
    labels = ["sad"] * 30 + ["happy"] * 15 + ["angry"] * 5
    kept = balanced_sample(ids, labels, per_category=10, seed=7)
    by_label = {lab: sum(1 for i, l in zip(ids, labels) if l == lab and i in kept) for lab in ("sad", "happy", "angry")}
    assert by_label == {"sad": 10, "happy": 10, "angry": 5}  # angry has fewer than N: all kept
    assert balanced_sample(ids[::-1], labels[::-1], per_category=10, seed=7) == kept
    assert balanced_sample(ids, labels, per_category=10, seed=8) != kept


def test_majority_gender():
    w = lambda g, s: {"gender": g, "gender_score": s}
    assert majority_gender([w("male", 0.9), w("female", 0.6), w("female", 0.7)]) == "female"
    assert majority_gender([w("male", 0.9), w("female", 0.6)]) == "male"  # tie: larger summed score
    assert majority_gender([w(None, None)]) is None
