import dataclasses
import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from build import pipeline
from build.commands.calibrate import X_GRID, Y_GRID, parse_grid
from build.core.config import PAPER_ALPHA, Config
from build.core.work import WorkDir, fingerprint
from build.pipeline.steps import Condense
from build.stages.condense import (
    balanced_sample,
    consistent_mask,
    count_occurrences,
    is_consistent,
    majority_gender,
    mark_consistency,
    occurrence_labels,
    primary_label,
)

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
    assert primary_label(["sad", "surprised"], {"sad": 6, "surprised": 9}, alpha) == "surprised"  # 3.0, 9 > 6
    # a full tie: the fixed class order
    assert primary_label(["angry", "sad"], {"angry": 2, "sad": 2}, {"angry": 2, "sad": 2}) == "angry"


@pytest.mark.parametrize(
    "alpha", [{"fearful": 4, "happy": 4}, {"happy": 4, "fearful": 4}], ids=["fearful-first", "happy-first"]
)
def test_a_full_tie_goes_to_the_fixed_class_order_whatever_the_order_of_alpha(alpha):
    windows = _windows(*(["happy"] * 4 + ["fearful"] * 4))
    out = count_occurrences({"emotion_windows": [windows]}, alpha=alpha)
    assert out["primary_emotion"] == ["fearful"]  # fearful comes before happy in schema.EMOTION_LABELS
    assert out["emotions"] == [["fearful", "happy"]]  # listed in the class order too
    assert primary_label(["happy", "fearful"], {"happy": 4, "fearful": 4}, alpha) == "fearful"
    assert occurrence_labels({"happy": 4, "fearful": 4}, alpha) == ["fearful", "happy"]


def _labelled_segment(index: int, labels: list[str]) -> dict:
    """A labelled segment (the columns the condense task reads) whose windows carry these labels."""
    valence = {"happy": 0.8, "neutral": 0.5}
    emotion_windows = [
        {"start": 2.0 * k, "end": 2.0 * k + 2, "emotion": label, "raw_emotion": None,
         "emotion_scores": [0.0] * 9, "arousal": 0.5, "dominance": 0.5, "valence": valence.get(label, 0.2),
         "consistent": None}
        for k, label in enumerate(labels)
    ]  # fmt: skip
    return {
        "segment_id": f"rec-{index:04d}", "recording_id": "rec", "audio_path": "/rec.wav",
        "start": 40.0 * index, "end": 40.0 * index + 31, "emotion_windows": emotion_windows,
        "gender_windows": [{"start": 0.0, "end": 2.0, "gender": "female", "gender_score": 0.9}],
    }  # fmt: skip


def _condensation_files(folder, config: Config) -> tuple[bytes, bytes]:
    """The bytes of what the condense task writes (output, dropped rows) for fixed labelled segments."""
    rows = [
        _labelled_segment(0, ["happy"] * 4 + ["fearful"] * 4),  # tie between fearful and happy
        _labelled_segment(1, ["sad"] * 2 + ["surprised"] * 3 + ["happy"] * 4),  # ratios 1.0: happy by count
        _labelled_segment(2, ["angry"] * 10 + ["disgusted"] * 10 + ["neutral"] * 3),  # tie: class order
        _labelled_segment(3, ["neutral"] * 5),  # passes nothing
    ]
    segments = {name: [row.get(name) for row in rows] for name in rows[0]}
    result = Condense().run(segments, SimpleNamespace(config=config), lambda seconds: None)
    fp = fingerprint("condense", pipeline.step_params(config)["condense"], ["label-fp", "r00000"])
    work = WorkDir(folder)
    work.write("condense", "r00000", fp, result.columns, result.features, stats={"counts": result.counts}, dropped=result.dropped)
    output, dropped_rows = work.output("condense", "r00000"), work.dropped_path("condense", "r00000")
    return output.read_bytes(), dropped_rows.read_bytes()


def _with_alpha(alpha: dict[str, int]) -> Config:
    config = Config()
    config.condense.alpha = alpha
    return config


def test_condensation_work_files_do_not_depend_on_the_order_of_alpha(tmp_path):
    orders = [
        dict(PAPER_ALPHA),
        dict(reversed(PAPER_ALPHA.items())),
        dict(sorted(PAPER_ALPHA.items(), key=lambda kv: (kv[1], kv[0]))),
    ]
    files = [_condensation_files(tmp_path / str(i), _with_alpha(alpha)) for i, alpha in enumerate(orders)]
    assert files[0] == files[1] == files[2]  # byte-identical output and dropped rows, same fingerprint
    written = WorkDir(tmp_path / "0").read("condense", "r00000")
    assert written["primary_emotion"] == ["fearful", "happy", "angry"]
    assert written["emotions"] == [
        ["fearful", "happy"], ["happy", "sad", "surprised"], ["angry", "disgusted"],
    ]


def _mappings(config: Config) -> list[tuple[str, str]]:
    """(section, key) of every mapping-valued setting of the config."""
    found = []
    for section in dataclasses.fields(config):
        node = getattr(config, section.name)
        if dataclasses.is_dataclass(node):
            keys = [f.name for f in dataclasses.fields(node) if isinstance(getattr(node, f.name), dict)]
            found += [(section.name, key) for key in keys]
    return found


def test_stage_fingerprints_ignore_the_order_of_every_config_mapping():
    """A resumed build keeps a task whose fingerprint matches: with every mapping of the config reordered the
    fingerprints are the same, so the outputs must be too (the test above, for alpha; export.splits is
    read by the export only, ``tests/test_splits.py``)."""
    config = Config()
    config.export.splits = {"train": 0.8, "test": 0.2}
    assert _mappings(config) == [("condense", "alpha"), ("export", "splits")]  # a new one needs its own check
    reordered = Config.from_dict(config.to_dict())
    for section, key in _mappings(config):
        mapping = getattr(getattr(config, section), key)
        setattr(getattr(reordered, section), key, dict(reversed(mapping.items())))
    assert list(reordered.condense.alpha) != list(config.condense.alpha)
    fingerprints = [{s: fingerprint(s, p) for s, p in pipeline.step_params(c).items()}
                    for c in (config, reordered)]
    assert fingerprints[0] == fingerprints[1]


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


GRIDS = [(parse_grid(X_GRID), parse_grid(Y_GRID)), (parse_grid("0:1:0.01"), parse_grid("0:0.5:0.01"))]


@pytest.mark.parametrize(("xs", "ys"), GRIDS, ids=["calibrate-grid", "hundredths"])
def test_valences_exactly_on_every_bound_are_consistent_in_float32(xs, ys):
    """Every (x, y) of calibrate's grid (and every hundredth): a valence stored (float32) exactly on a bound
    is consistent, one float32 step outside is not, and the vectorised and the scalar paths agree."""
    n_cells = 0
    for x, y in itertools.product(xs, ys):
        # (emotion, the bound as a float32 column stores it, the direction that leaves the band)
        bounds = [
            ("happy", np.float32(x), -np.inf),
            ("angry", np.float32(1 - x), np.inf),
            ("neutral", np.float32(y), -np.inf),
            ("neutral", np.float32(1 - y), np.inf),
        ]
        emotions, valences, expected = [], [], []
        for emotion, bound, outward in bounds:
            emotions += [emotion, emotion]
            valences += [bound, np.nextafter(bound, np.float32(outward))]
            expected += [True, False]
        for emotion, valence, want in zip(emotions, valences, expected):
            assert is_consistent(emotion, float(valence), x, y) is want, (emotion, float(valence), x, y)
            assert is_consistent(emotion, valence, x, y) is want, (emotion, float(valence), x, y)
        stored = np.array(valences, dtype=np.float32)
        assert consistent_mask(emotions, stored, x, y).tolist() == expected, (x, y)
        assert consistent_mask(emotions, stored.tolist(), x, y).tolist() == expected, (x, y)
        n_cells += 1
    assert n_cells == len(xs) * len(ys) > 0


def test_the_float32_bounds_the_issue_named():
    stored = float(np.float32(0.4))  # a valence of 0.4 after a round trip through a float32 column
    assert is_consistent("angry", stored, x=0.6, y=0.4)
    for x in (0.09, 0.33, 0.34, 0.46, 0.54, 0.6, 0.66, 0.67, 0.72):
        assert is_consistent("sad", float(np.float32(1 - x)), x, 0.4), x
    for y in (0.09, 0.33, 0.34, 0.46):
        assert is_consistent("neutral", float(np.float32(1 - y)), 0.5, y), y


def test_consistent_mask_of_nothing_and_of_missing_values():
    assert consistent_mask([], [], 0.5, 0.4).tolist() == []
    assert consistent_mask([None, "happy", "surprised"], [0.9, None, None], 0.5, 0.4).tolist() == [False] * 3
    empty = mark_consistency({"emotion": [], "valence": []}, x=0.5, y=0.4)
    assert empty == {"consistent": [], "condensed_emotion": []}
