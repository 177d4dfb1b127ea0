"""Stage 4 (categorical SER) on real speech with three tiny random-weight emotion2vec+ members."""

from __future__ import annotations

import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from build.emotion import average_posteriors, label_categorical_emotion, parse_emotion_label, scores_in_label_order
from build.schema import EMOTION_LABELS
from build.tiny.emotion2vec import EMOTION2VEC_TOKENS, build_tiny_emotion2vec

# RAVDESS clips bundled in tests/data/ravdess (48 kHz mono FLAC, 3-4.3 s); decode_spans resamples them to 16 kHz.
REAL_EMOTION_SPEECH = Path(__file__).resolve().parent / "data" / "ravdess"
CLIP_NAMES = ("03-01-01-01-01-01-01.flac", "03-01-05-01-02-01-02.flac", "03-01-04-01-01-01-03.flac")


@pytest.fixture(scope="module")
def members(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("emotion2vec")
    return [str(build_tiny_emotion2vec(root / f"member_{seed}", seed=seed)) for seed in range(3)]


@pytest.fixture(scope="module")
def clips() -> list[str]:
    paths = [REAL_EMOTION_SPEECH / name for name in CLIP_NAMES]
    missing = [str(p) for p in paths if not p.exists()]
    assert not missing, f"real audio fixtures missing: {missing}"
    return [str(p) for p in paths]


def windows(paths: list[str], start: float = 0.5, end: float = 2.5) -> dict[str, list]:
    return {"audio_path": list(paths), "ctx_start": [start] * len(paths), "ctx_end": [end] * len(paths)}


def label(batch: dict[str, list], model_ids: list[str]) -> dict[str, list]:
    return label_categorical_emotion(batch, model_ids=model_ids, device="cpu")


# --- label parsing and averaging (pure) ---


def test_every_real_token_parses_to_the_label_at_the_same_position():
    assert [parse_emotion_label(token) for token in EMOTION2VEC_TOKENS] == list(EMOTION_LABELS)


@pytest.mark.parametrize(("token", "label"), [("<unk>", "unknown"), ("angry", "angry"), ("吃惊/surprised", "surprised")])
def test_parse_single_tokens(token, label):
    assert parse_emotion_label(token) == label


def test_unknown_token_is_an_error_naming_token_and_model():
    with pytest.raises(ValueError, match=r"'愤怒/furious' from iic/emotion2vec_plus_large"):
        parse_emotion_label("愤怒/furious", "iic/emotion2vec_plus_large")


def test_scores_are_placed_by_label_not_by_position():
    ordered = scores_in_label_order(["难过/sad", "<unk>", "生气/angry"], [0.5, 0.2, 0.3])
    assert ordered == [0.3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5, 0.0, 0.2]


def test_five_class_checkpoint_gives_zero_to_hidden_labels():
    tokens = ["生气/angry", "unuse_0", "unuse_1", "开心/happy", "中立/neutral", "unuse_2", "难过/sad", "unuse_3", "<unk>"]
    scores = [0.1, 0.0, 0.0, 0.4, 0.3, 0.0, 0.15, 0.0, 0.05]
    assert scores_in_label_order(tokens, scores) == [0.1, 0.0, 0.0, 0.4, 0.3, 0.0, 0.15, 0.0, 0.05]


def test_average_posteriors_renormalises_each_member():
    assert average_posteriors([[0.2, 0.8], [0.6, 0.4]]) == pytest.approx([0.4, 0.6])
    assert average_posteriors([[2.0, 2.0], [1.0, 3.0]]) == pytest.approx([0.375, 0.625])
    with pytest.raises(ValueError, match="not all zero"):
        average_posteriors([[0.0, 0.0]])
    with pytest.raises(ValueError, match="no posteriors"):
        average_posteriors([])


# --- the tiny model folder ---


def test_tiny_folder_has_what_funasr_needs(members):
    folder = Path(members[0])
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    assert config["model"] == "Emotion2vec"
    assert "tokenizer_conf" in config
    assert (folder / "model.pt").is_file()
    assert (folder / "tokens.txt").read_text(encoding="utf-8").splitlines() == list(EMOTION2VEC_TOKENS)


def test_tiny_weights_are_deterministic_per_seed(members, tmp_path):
    rebuilt = torch.load(build_tiny_emotion2vec(tmp_path / "again", seed=0) / "model.pt")
    seed0 = torch.load(Path(members[0]) / "model.pt")
    seed1 = torch.load(Path(members[1]) / "model.pt")
    assert all(torch.equal(rebuilt[k], seed0[k]) for k in seed0)
    assert not torch.equal(seed0["proj.weight"], seed1["proj.weight"])


# --- the stage on real audio ---


def test_returns_only_the_new_columns(members, clips):
    out = label(windows(clips[:1]), members[:1])
    assert set(out) == {"emotion", "emotion_scores", "emotion_error"}


def test_ensemble_is_the_mean_of_its_members(members, clips):
    batch = windows(clips)
    ensemble = label(batch, members)
    alone = [label(batch, [member]) for member in members]

    assert ensemble["emotion_error"] == [None] * len(clips)
    for run in alone:
        assert run["emotion_error"] == [None] * len(clips)
    member_scores = np.array([run["emotion_scores"] for run in alone])  # members x clips x 9
    assert np.allclose(ensemble["emotion_scores"], member_scores.mean(axis=0), atol=1e-6)
    # different seeds are different members
    assert not np.allclose(member_scores[0], member_scores[1], atol=1e-3)

    for scores, emotion in zip(ensemble["emotion_scores"], ensemble["emotion"]):
        assert len(scores) == len(EMOTION_LABELS)
        assert sum(scores) == pytest.approx(1.0, abs=1e-6)
        assert min(scores) >= 0.0
        assert emotion == EMOTION_LABELS[int(np.argmax(scores))]


def test_batch_results_follow_input_order(members, clips):
    batched = label(windows(clips), members[:1])
    one_by_one = [label(windows([clip]), members[:1]) for clip in clips]
    # the clips get different posteriors, so a reordering would show
    assert not np.allclose(batched["emotion_scores"][0], batched["emotion_scores"][1], atol=1e-3)
    assert np.allclose(batched["emotion_scores"], [run["emotion_scores"][0] for run in one_by_one], atol=1e-5)
    assert batched["emotion"] == [run["emotion"][0] for run in one_by_one]


def test_missing_file_fails_its_row_only(members, clips, tmp_path):
    missing = str(tmp_path / "no_such_recording.wav")
    out = label(windows([clips[0], missing, clips[1]]), members)

    assert out["emotion_error"][0] is None and out["emotion_error"][2] is None
    assert missing in out["emotion_error"][1]
    assert out["emotion"][1] is None and out["emotion_scores"][1] is None
    assert out["emotion"][0] in EMOTION_LABELS and out["emotion"][2] in EMOTION_LABELS
    assert len(out["emotion_scores"][0]) == len(EMOTION_LABELS)


def test_empty_span_fails_its_row_only(members, clips):
    batch = {"audio_path": [clips[0], clips[1]], "ctx_start": [1.0, 0.5], "ctx_end": [1.0, 2.5]}
    out = label(batch, members[:1])
    assert out["emotion_error"][0] == f"{clips[0]} [1.000-1.000 s]: empty span"
    assert out["emotion_error"][1] is None and out["emotion"][1] in EMOTION_LABELS


def test_clip_the_model_rejects_fails_its_row_only(members, clips):
    # 10 ms is shorter than the conv front end's receptive field: FunASR raises for the whole
    # batch, and the stage retries clip by clip to pin the failure on this row.
    batch = {"audio_path": [clips[0], clips[1]], "ctx_start": [0.5, 0.5], "ctx_end": [2.5, 0.51]}
    reference = label(windows([clips[0]]), members[:2])
    out = label(batch, members[:2])
    assert out["emotion_error"][0] is None
    assert out["emotion_scores"][0] == pytest.approx(reference["emotion_scores"][0], abs=1e-6)
    assert out["emotion_error"][1].startswith(f"{clips[1]} [0.500-0.510 s]: {members[0]} failed (RuntimeError: ")
    assert out["emotion"][1] is None and out["emotion_scores"][1] is None


def test_unloadable_model_is_a_clear_error(clips, tmp_path):
    not_a_model = tmp_path / "empty_folder"
    not_a_model.mkdir()
    with pytest.raises(RuntimeError, match=r"cannot load emotion2vec model '.*empty_folder'"):
        label(windows(clips[:1]), [str(not_a_model)])


def test_checkpoint_with_an_unknown_label_is_a_clear_error(members, clips, tmp_path):
    odd = Path(shutil.copytree(members[0], tmp_path / "odd_labels"))
    tokens = list(EMOTION2VEC_TOKENS)
    tokens[2] = "愤怒/furious"
    (odd / "tokens.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"'愤怒/furious' from {re.escape(str(odd))}"):
        label(windows(clips[:1]), [str(odd)])


def test_loading_a_member_leaves_logging_and_random_state_alone(tmp_path, clips):
    fresh = str(build_tiny_emotion2vec(tmp_path / "fresh", seed=7))  # not in the load cache yet
    root = logging.getLogger()
    before = (root.handlers[:], root.level, random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state())
    label(windows(clips[:1]), [fresh])
    assert root.handlers == before[0] and root.level == before[1]
    assert random.getstate() == before[2]
    assert np.array_equal(np.random.get_state()[1], before[3])
    assert torch.equal(torch.get_rng_state(), before[4])
