"""`cpqa calibrate`: the bundled RAVDESS clips labelled once by the tiny models, then the x/y grid and the SER table."""

import csv
import json
import re
from collections import Counter

import numpy as np
import pytest
from conftest import RAVDESS_CLIPS, REPO, SAMPLES, ravdess_clips, ravdess_recording

from build.commands import calibrate as calib
from build.core.config import Config
from build.core.schema import EMOTION_LABELS
from build.sources.audio import probe_duration

RAVDESS_FILES = REPO / "tests" / "data" / "ravdess"
# The tiny valence model answers about 0.01 everywhere: x near 1 (v_neg_max = 1 - x) moves the cells apart.
XS, YS = [0.5, 0.99, 0.999], [0.0, 0.3, 0.5]


@pytest.fixture(scope="module")
def first_run(tiny_config, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibration")
    return calib.calibrate(SAMPLES, corpus="ravdess", config=tiny_config, out_dir=out, labels_file=RAVDESS_CLIPS, xs=XS, ys=YS)


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_every_labelled_clip_is_an_utterance_and_calm_is_neutral(first_run):
    clips = ravdess_clips()
    assert first_run.n_utterances == len(clips) == 96
    assert first_run.dropped == {}
    utterances = calib.read_utterances(SAMPLES, "ravdess", RAVDESS_CLIPS)
    expected = Counter({"calm": "neutral", "disgust": "disgusted"}.get(c["emotion"], c["emotion"]) for c in clips)
    assert Counter(utterances.columns["label"]) == expected
    assert expected["neutral"] == 24  # 12 neutral + 12 calm
    assert utterances.columns["start"][:2] == [0.0, 3.437] and utterances.columns["end"][:2] == [3.437, 6.974]


def test_grid_csv_maximum_is_the_marked_cell(first_run):
    rows = _csv(first_run.out_dir / "grid.csv")
    assert len(rows) == len(XS) * len(YS)
    assert [(float(r["x"]), float(r["y"])) for r in rows] == [(x, y) for x in XS for y in YS]
    top = max(float(r["uwa"]) for r in rows)
    best = first_run.best
    assert best["uwa"] == top
    assert (first_run.out_dir / "heatmap.png").stat().st_size > 0
    figure = calib.draw_heatmap(first_run.grid, XS, YS, best)
    (frame,) = figure.axes[0].patches
    assert frame.get_xy() == (XS.index(best["x"]) - 0.5, YS.index(best["y"]) - 0.5)
    report = (first_run.out_dir / "calibration.md").read_text()
    assert f"Best cell: x = {best['x']:g}, y = {best['y']:g}: UWA {best['uwa']:.2f} %" in report


def test_scores_follow_from_the_cached_window_labels(first_run, tiny_config):
    """UWA recomputed by hand (mean per-class recall) from the cache equals the CSV's."""
    utterances = calib.read_utterances(SAMPLES, "ravdess", RAVDESS_CLIPS)
    windows, hit = calib.label_windows(utterances, tiny_config, first_run.out_dir / "cache")
    assert hit
    grouped = calib._by_utterance(windows)
    truth = utterances.columns["label"]
    for row in first_run.grid:
        predicted = calib.condensed_predictions(utterances.columns["utterance_id"], grouped, row["x"], row["y"])
        recalls = [np.mean([p == t for p, t in zip(predicted, truth) if t == c]) for c in sorted(set(truth))]
        assert row["uwa"] == pytest.approx(100 * np.mean(recalls), abs=1e-3)
        # every predicted class that no human label has (unknown) adds a recall of 0
        assert row["uwa_all_classes"] == pytest.approx(100 * np.sum(recalls) / len(set(truth) | set(predicted)), abs=1e-3)
        assert row["accuracy"] == pytest.approx(100 * np.mean([p == t for p, t in zip(predicted, truth)]), abs=1e-3)
    assert set(predicted) <= set(EMOTION_LABELS)
    n_windows = sum(len(calib.explode_windows({"segment_id": ["u"], "recording_id": ["r"], "audio_path": ["a"], "start": [c["start"]], "end": [c["end"]]}, label_s=2.0, context_s=1.0, min_last_fraction=0.5)["start"]) for c in ravdess_clips())
    assert windows.num_rows == n_windows


def test_ser_table_has_each_model_and_the_ensemble(first_run):
    rows = _csv(first_run.out_dir / "ser.csv")
    assert [r["model"] for r in rows] == ["local:emotion2vec_tiny_0", "local:emotion2vec_tiny_1", "local:emotion2vec_tiny_2", "ensemble"]


def test_ser_scores_follow_from_the_cached_posteriors(first_run, tiny_config):
    """Each model's accuracy and UWA recomputed by hand (argmax of the mean window posterior) from the cache."""
    utterances = calib.read_utterances(SAMPLES, "ravdess", RAVDESS_CLIPS)
    windows, _ = calib.label_windows(utterances, tiny_config, first_run.out_dir / "cache")
    grouped = calib._by_utterance(windows)
    truth = utterances.columns["label"]
    for member, row in enumerate(first_run.ser):
        predicted = []
        for uid in utterances.columns["utterance_id"]:
            scores = [np.asarray(r["member_scores"], dtype=float) for r in grouped[uid]]
            scores = [m / m.sum(axis=1, keepdims=True) for m in scores]  # each member's posterior sums to 1
            per_window = [s.mean(axis=0) if row["model"] == "ensemble" else s[member] for s in scores]
            predicted.append(EMOTION_LABELS[int(np.argmax(np.mean(per_window, axis=0)))])
        recalls = [np.mean([p == t for p, t in zip(predicted, truth) if t == c]) for c in sorted(set(truth))]
        assert row["accuracy"] == pytest.approx(100 * np.mean([p == t for p, t in zip(predicted, truth)]), abs=1e-3)
        assert row["uwa"] == pytest.approx(100 * np.mean(recalls), abs=1e-3)


def test_the_best_cell_is_the_highest_uwa_then_accuracy_then_the_smallest_thresholds():
    grid = [
        {"x": 0.5, "y": 0.1, "uwa": 40.0, "accuracy": 50.0},
        {"x": 0.4, "y": 0.2, "uwa": 60.0, "accuracy": 55.0},
        {"x": 0.3, "y": 0.3, "uwa": 60.0, "accuracy": 58.0},
        {"x": 0.2, "y": 0.3, "uwa": 60.0, "accuracy": 58.0},
    ]
    assert calib.best_cell(grid) == grid[3]


def test_identical_results_with_and_without_the_cache(first_run, tiny_config, tmp_path, monkeypatch):
    again = calib.calibrate(SAMPLES, corpus="ravdess", config=tiny_config, out_dir=tmp_path / "fresh", labels_file=RAVDESS_CLIPS, xs=XS, ys=YS)
    assert not again.cache_hit
    assert again.grid == first_run.grid and again.ser == first_run.ser

    def no_model(*args, **kwargs):
        raise AssertionError("a model ran although the window labels were cached")

    monkeypatch.setattr(calib.emotion, "label_categorical_emotion", no_model)
    monkeypatch.setattr(calib.dimension, "label_dimensions", no_model)
    cached = calib.calibrate(SAMPLES, corpus="ravdess", config=tiny_config, out_dir=first_run.out_dir, labels_file=RAVDESS_CLIPS, xs=XS, ys=YS)
    assert cached.cache_hit
    assert cached.grid == first_run.grid and cached.ser == first_run.ser
    assert _csv(first_run.out_dir / "grid.csv") == _csv(tmp_path / "fresh" / "grid.csv")


def test_write_config_is_accepted_by_config_files(tmp_path):
    best = {"x": 0.55, "y": 0.35, "uwa": 40.0, "accuracy": 41.0, "weighted_f1": 39.0}
    for name in ("best.yaml", "best.json"):
        config = Config().with_file(str(calib.write_config(tmp_path / name, best)))
        assert (config.condense.x, config.condense.y) == (0.55, 0.35)
        assert config.condense.alpha == Config().condense.alpha


def test_parse_grid():
    assert calib.parse_grid("0.3:0.5:0.05") == [0.3, 0.35, 0.4, 0.45, 0.5]
    assert calib.parse_grid("0.4,0.5") == [0.4, 0.5]
    with pytest.raises(ValueError, match="grid '0.5:0.3:0.1'"):
        calib.parse_grid("0.5:0.3:0.1")


def _file_labels(tmp_path, rows):
    path = tmp_path / "labels.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_folder_of_clips_with_a_labels_file_uses_whole_files(tmp_path):
    files = sorted(RAVDESS_FILES.glob("*.flac"))
    labels = _file_labels(tmp_path, [{"file": str(p), "emotion": p.stem.split("-")[2]} for p in files])
    utterances = calib.read_utterances(RAVDESS_FILES, "ravdess", labels)
    assert len(utterances.columns["utterance_id"]) == len(files) == 6
    assert Counter(utterances.columns["label"]) == Counter({"neutral": 2, "angry": 3, "sad": 1})
    assert utterances.columns["start"] == [0.0] * 6
    assert all(3.0 < end < 5.0 for end in utterances.columns["end"])  # RAVDESS clips last 3-5 s


def test_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(ValueError, match=r"corpus 'iemocap': unknown emotion label 'calm'"):
        calib.read_utterances(SAMPLES, "iemocap", RAVDESS_CLIPS)
    missing = _file_labels(tmp_path, [{"recording": "nowhere.flac", "emotion": "happy"}])
    with pytest.raises(ValueError, match=r"labels.csv: row 1 names 'nowhere.flac', which is not among the source's recordings"):
        calib.read_utterances(SAMPLES, "ravdess", missing)
    with pytest.raises(ValueError, match="calibration needs human labels: give --labels FILE"):
        calib.read_utterances(SAMPLES, "ravdess")
    dropped_only = _file_labels(tmp_path, [{"recording": "ravdess_actor01.flac", "emotion": "fru"}])
    with pytest.raises(ValueError, match=r"no utterance has a label with a counterpart .* \{'fru': 1\}"):
        calib.read_utterances(SAMPLES, "iemocap", dropped_only)


def test_cli_writes_the_outputs_and_the_config_fragment(tmp_path, tiny_config, capsys):
    import cpqa

    files = sorted(RAVDESS_FILES.glob("*.flac"))
    labels = _file_labels(tmp_path, [{"file": p.name, "emotion": p.stem.split("-")[2]} for p in files])
    # labels written beside the copy of the config: paths relative to the labels file, then to SOURCE
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(tiny_config.to_dict()))
    out = tmp_path / "out"
    code = cpqa.main(["calibrate", str(RAVDESS_FILES), "--corpus", "ravdess", "--labels", str(labels), "--out", str(out),
                      "--config", str(config_file), "--x-grid", "0.5", "--y-grid", "0.4,0.45", "--write-config", str(tmp_path / "best.yaml")])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert printed.startswith("cpqa calibrate: 6 utterances of ravdess (left out: none); window labels computed\n")
    assert len(_csv(out / "grid.csv")) == 2 and (out / "heatmap.png").is_file()
    assert Config().with_file(str(tmp_path / "best.yaml")).condense.x == 0.5
    assert cpqa.main(["calibrate", str(RAVDESS_FILES), "--corpus", "nope", "--labels", str(labels), "--out", str(out), "--config", str(config_file)]) == 2
    assert "cpqa calibrate: unknown corpus 'nope'" in capsys.readouterr().err


def _labelled_dataset(files):
    from datasets import Audio, ClassLabel, Dataset, Features, Value

    features = Features({"audio": Audio(sampling_rate=16_000), "recording_id": Value("string"), "emotion": ClassLabel(names=["neutral", "calm", "happy", "sad", "angry"])})
    codes = {"01": "neutral", "04": "sad", "05": "angry"}
    rows = {"audio": [str(p) for p in files], "recording_id": [p.stem for p in files], "emotion": [codes[p.stem.split("-")[2]] for p in files]}
    return Dataset.from_dict(rows, features=features)


def test_a_saved_dataset_brings_its_own_class_labels(tmp_path):
    files = sorted(RAVDESS_FILES.glob("*.flac"))
    _labelled_dataset(files).save_to_disk(str(tmp_path / "saved"))
    utterances = calib.read_utterances(tmp_path / "saved", "ravdess")
    assert utterances.columns["recording_id"] == [p.stem for p in files]
    assert Counter(utterances.columns["label"]) == Counter({"neutral": 2, "angry": 3, "sad": 1})
    assert all(3.0 < end < 5.0 for end in utterances.columns["end"])


def test_a_hub_dataset_brings_its_own_class_labels(tmp_path, monkeypatch):
    """hf:// read through the same Parquet path, with the Hub listing pointed at a local file."""
    files = sorted(RAVDESS_FILES.glob("*.flac"))
    data = _labelled_dataset(files)
    data = data.cast_column("audio", data.features["audio"])  # bytes embedded by to_parquet below
    local = tmp_path / "train-00000-of-00001.parquet"
    data.to_parquet(str(local))
    monkeypatch.setattr(calib.ingest, "hub_parquet_files", lambda repo, split: [str(local)])
    utterances = calib.read_utterances("hf://someone/ravdess", "ravdess")
    assert utterances.columns["recording_id"] == [p.stem for p in files]
    assert utterances.columns["label"] == [{"01": "neutral", "04": "sad", "05": "angry"}[p.stem.split("-")[2]] for p in files]
    assert all(3.0 < end < 5.0 for end in utterances.columns["end"])  # durations probed from the embedded audio


def test_a_labels_file_with_a_byte_order_mark_keeps_its_first_column(tmp_path):
    # Before: the first column was named "\ufeffrecording" and every row named no recording.
    clips = ravdess_clips()[:3]
    for first in ("recording", "emotion", "start"):
        order = [first, *(c for c in ("recording", "emotion", "start", "end") if c != first)]
        path = tmp_path / f"labels-{first}.csv"
        lines = [",".join(order)] + [",".join(str(c[k]) for k in order) for c in clips]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8-sig")
        utterances = calib.read_utterances(SAMPLES, "ravdess", path)
        assert utterances.columns["label"] == ["fearful", "surprised", "happy"]
        assert utterances.columns["start"] == [c["start"] for c in clips] and utterances.columns["end"] == [c["end"] for c in clips]


def _span_rows(rows):
    return [{"recording": "ravdess_actor01.flac", "emotion": "happy", "start": s, "end": e} for s, e in rows]


def test_impossible_spans_refuse_the_labels_file_naming_every_row(tmp_path, tiny_config, monkeypatch):
    # Before: all kept; an empty or reversed span got no window and counted as a miss.
    duration = probe_duration(str(ravdess_recording(1)))  # 57.157 s
    rows = [(0.0, 3.0), (10, 5), (-2, 1), (40, 90), (3, 3), ("abc", 4), (duration, ""), (1, "inf"), (0, duration + 0.1 + 1e-3)]
    labels = _file_labels(tmp_path, _span_rows(rows))
    reasons = [
        "row 2 (ravdess_actor01): end 5 s is not after start 10 s",
        "row 3 (ravdess_actor01): start -2 s is before the file's start",
        f"row 4 (ravdess_actor01): end 90 s is past the file's end ({duration:g} s)",
        "row 5 (ravdess_actor01): end 3 s is not after start 3 s",
        "row 6 (ravdess_actor01): start 'abc' is not a number",
        f"row 7 (ravdess_actor01): start {duration:g} s is at or after the file's end ({duration:g} s)",
        "row 8 (ravdess_actor01): end 'inf' is not a finite number",
        f"row 9 (ravdess_actor01): end {duration + 0.101:g} s is past the file's end ({duration:g} s)",
    ]
    message = f"{labels}: 8 labelled row(s) with an impossible span, nothing was labelled: {'; '.join(reasons)}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        calib.read_utterances(SAMPLES, "ravdess", labels)

    def no_model(*args, **kwargs):
        raise AssertionError("a model ran on a labels file with impossible spans")

    monkeypatch.setattr(calib.emotion, "label_categorical_emotion", no_model)
    monkeypatch.setattr(calib.dimension, "label_dimensions", no_model)
    with pytest.raises(ValueError, match="8 labelled row"):
        calib.calibrate(SAMPLES, corpus="ravdess", config=tiny_config, out_dir=tmp_path / "out", labels_file=labels, xs=XS, ys=YS)
    assert not (tmp_path / "out").exists()


def test_spans_on_the_bounds_are_kept_and_long_lists_are_cut(tmp_path):
    duration = probe_duration(str(ravdess_recording(1)))
    bounds = [(0.0, duration), (0, duration + calib.SPAN_TOLERANCE_S), ("", 2.5), (55.0, ""), (duration - 0.001, "")]
    utterances = calib.read_utterances(SAMPLES, "ravdess", _file_labels(tmp_path, _span_rows(bounds)))
    assert utterances.columns["start"] == [0.0, 0.0, 0.0, 55.0, duration - 0.001]
    assert utterances.columns["end"] == [duration, duration + calib.SPAN_TOLERANCE_S, 2.5, duration, duration]
    many = _file_labels(tmp_path, _span_rows([(5, 1)] * (calib.MAX_LISTED + 3)))
    with pytest.raises(ValueError, match=rf": 23 labelled row\(s\) .*row 20 \(ravdess_actor01\): end 1 s is not after start 5 s; and 3 more$"):
        calib.read_utterances(SAMPLES, "ravdess", many)


def test_uwa_is_the_mean_recall_over_the_human_classes_and_the_union_is_reported_beside_it():
    from sklearn.metrics import balanced_accuracy_score, f1_score, recall_score

    truth = ["angry", "angry", "happy", "happy", "sad", "sad"]
    predicted = ["angry", "angry", "unknown", "happy", "unknown", "unknown"]  # recalls 1, 0.5, 0 (+ unknown: 0)
    got = calib.scores(truth, predicted)
    assert got == {"uwa": 50.0, "accuracy": 50.0, "weighted_f1": got["weighted_f1"], "uwa_all_classes": 37.5}
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        assert got["uwa"] == 100 * balanced_accuracy_score(truth, predicted)
    with pytest.warns(UserWarning):  # recall of "unknown" is ill-defined (no human label): 0, as in recall_score
        assert got["uwa_all_classes"] == 100 * recall_score(truth, predicted, average="macro")
    assert got["weighted_f1"] == round(100 * f1_score(truth, predicted, labels=["angry", "happy", "sad"], average="weighted"), 4)
    same = calib.scores(truth, ["angry", "happy", "happy", "happy", "sad", "angry"])  # no class outside the labels
    assert same["uwa"] == same["uwa_all_classes"] == pytest.approx(100 * (0.5 + 1 + 0.5) / 3, abs=1e-4)


def test_the_outputs_state_the_uwa_definition_and_carry_both_columns(first_run):
    with open(first_run.out_dir / "grid.csv", newline="") as f:
        assert next(csv.reader(f)) == ["x", "y", "uwa", "accuracy", "weighted_f1", "uwa_all_classes"]
    with open(first_run.out_dir / "ser.csv", newline="") as f:
        assert next(csv.reader(f)) == ["model", "accuracy", "uwa", "weighted_f1", "uwa_all_classes"]
    report = (first_run.out_dir / "calibration.md").read_text()
    assert calib.UWA_DEFINITION in report
    assert "| x | y | UWA % | accuracy % | weighted F1 % | UWA all classes % |" in report
