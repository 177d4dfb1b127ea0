"""Stage 4 (categorical SER) on real speech with three tiny random-weight emotion2vec+ members, and
the batched inference held to FunASR's own ``generate`` on each clip alone (float32, see FUNASR_ATOL)."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import AMI, ravdess_recording

from build.core.errors import span_label
from build.core.schema import EMOTION_LABELS
from build.models import emotion
from build.models.base import funasr_side_effects_contained
from build.models.emotion import (
    average_posteriors,
    label_categorical_emotion,
    parse_emotion_label,
    scores_in_label_order,
)
from build.models.tiny.emotion2vec import EMOTION2VEC_TOKENS, build_tiny_emotion2vec, tiny_emotion2vec_config
from build.sources.audio import SAMPLE_RATE, decode_span

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


def test_clip_too_short_for_the_front_end_fails_its_row_only(members, clips):
    # 10 ms (160 samples) is shorter than the conv front end's 400-sample receptive field: the clip
    # is refused before the batch runs, so it never reaches the model padded into a batch.
    batch = {"audio_path": [clips[0], clips[1]], "ctx_start": [0.5, 0.5], "ctx_end": [2.5, 0.51]}
    reference = label(windows([clips[0]]), members[:2])
    out = label(batch, members[:2])
    assert out["emotion_error"][0] is None
    assert out["emotion_scores"][0] == pytest.approx(reference["emotion_scores"][0], abs=1e-6)
    assert out["emotion_error"][1] == f"{clips[1]} [0.500-0.510 s]: too short for {members[0]} (160 samples give no frame)"
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


# --- batched inference equals FunASR's generate on each clip alone ---
#
# Tolerance: 2e-6 absolute on posteriors (values in [0, 1]), float32. A batch changes only the
# order of float32 sums (GEMM blocking over the batch, softmax denominators over masked keys,
# the masked mean), a few units in the last place (eps = 1.2e-7) per operation; the largest gap
# measured over these clips and members is 6.3e-7. Padding without the positional-conv fix is off
# by about 0.1 (see the control test), five orders of magnitude above the tolerance.
FUNASR_ATOL = 2e-6

FIVE_CLASS_TOKENS = ("生气/angry", "unuse_0", "unuse_1", "开心/happy", "中立/neutral", "unuse_2", "难过/sad", "unuse_3", "<unk>")
# Architectures beyond the tiny default (one positional conv of width 9): the real checkpoints stack
# five positional convs; an even kernel exercises SamePad; a group-norm front end cannot be padded.
VARIANTS = {
    "two positional convs, even kernel": {"conv_pos_width": 8, "conv_pos_depth": 2},
    "three positional convs after a layer norm": {"conv_pos_width": 15, "conv_pos_depth": 3, "conv_pos_pre_ln": True},
    "group-norm front end": {"extractor_mode": "default"},
    "5-class tokens": {"tokens": FIVE_CLASS_TOKENS},
}


def build_variant(dest: Path, seed: int, tokens=None, **audio) -> str:
    """A tiny emotion2vec+ folder whose audio config differs from the default by ``audio``."""
    folder = build_tiny_emotion2vec(dest, seed=seed)
    config = tiny_emotion2vec_config()
    config["model_conf"]["modalities"]["audio"].update(audio)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")
    with funasr_side_effects_contained():
        from funasr.models.emotion2vec.model import Emotion2vec
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = Emotion2vec(model_conf=config["model_conf"], vocab_size=len(EMOTION2VEC_TOKENS))
        torch.nn.init.normal_(net.proj.weight, std=1.0)
    torch.save(net.state_dict(), folder / "model.pt")
    if tokens:
        (folder / "tokens.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return str(folder)


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("emotion2vec-variants")
    return {name: build_variant(root / f"v{k}", seed=10 + k, **spec) for k, (name, spec) in enumerate(VARIANTS.items())}


@pytest.fixture(scope="module")
def mixed_clips() -> list[np.ndarray]:
    """Real speech cut to six different lengths, from 4 s down to one frame's worth (401 samples)."""
    ravdess = decode_span(str(ravdess_recording(1)), 0.0, 9.0)
    ami = decode_span(str(AMI), 3.0, 10.0)
    return [ravdess[:64000], ami[:40000], ravdess[16000:67234], ami[5000:22600], ravdess[100:4100], ami[:401]]


@pytest.fixture(scope="module")
def equal_clips() -> list[np.ndarray]:
    """Four 4 s windows (the paper's t + 2Δt) of real speech."""
    ravdess = decode_span(str(ravdess_recording(1)), 0.0, 9.0)
    ami = decode_span(str(AMI), 3.0, 10.0)
    return [ravdess[:64000], ami[:64000], ravdess[24000:88000], ami[48000:112000]]


def spans_for(clips: list[np.ndarray]) -> list[tuple[str, float, float]]:
    return [("clip", 0.0, len(clip) / SAMPLE_RATE) for clip in clips]


def funasr_alone(folder: str, clips: list[np.ndarray]) -> np.ndarray:
    """FunASR's own path, the one this stage used to take: AutoModel.generate on each clip alone."""
    with funasr_side_effects_contained():
        from funasr import AutoModel
    with funasr_side_effects_contained():
        model = AutoModel(model=folder, hub="hf", device="cpu", disable_update=True, disable_pbar=True,
                          log_level="WARNING", ncpu=torch.get_num_threads())
        rows = []
        for clip in clips:
            [result] = model.generate([clip], batch_size=1, fs=SAMPLE_RATE, granularity="utterance", extract_embedding=False)
            rows.append(scores_in_label_order(result["labels"], result["scores"], folder))
    return np.array(rows)


def batched(folder: str, clips: list[np.ndarray]) -> np.ndarray:
    out = emotion.classify_clips(clips, spans_for(clips), model_ids=[folder], device="cpu")
    assert out["emotion_error"] == [None] * len(clips)
    return np.array(out["emotion_scores"])


@pytest.fixture
def forward_calls(monkeypatch) -> list[list[int]]:
    """The clip lengths of every batch a member runs."""
    calls: list[list[int]] = []
    real = emotion.posteriors

    def counting(member, clips):
        calls.append([len(clip) for clip in clips])
        return real(member, clips)

    monkeypatch.setattr(emotion, "posteriors", counting)
    return calls


@pytest.mark.parametrize("which", ["tiny seed 0", "tiny seed 1", *VARIANTS])
def test_a_padded_batch_equals_funasr_on_each_clip_alone(which, members, variants, mixed_clips, forward_calls):
    folder = members[int(which[-1])] if which.startswith("tiny") else variants[which]
    reference = funasr_alone(folder, mixed_clips)
    got = batched(folder, mixed_clips)
    np.testing.assert_allclose(got, reference, rtol=0, atol=FUNASR_ATOL)
    assert len({tuple(np.round(row, 3)) for row in reference}) == len(mixed_clips)  # the clips really differ
    lengths = [len(clip) for clip in mixed_clips]
    if which == "group-norm front end":  # channels normalised over the clip: one batch per length
        assert not emotion._member(folder, "cpu", emotion.DEFAULT_HUB, "float32").exact_padding
        assert sorted(forward_calls) == sorted([[n] for n in lengths])
    else:  # one forward for all six lengths
        assert forward_calls == [lengths]
    if which == "5-class tokens":
        hidden = [EMOTION_LABELS.index(label) for label in ("disgusted", "fearful", "other", "surprised")]
        assert np.all(got[:, hidden] == 0.0)


@pytest.mark.parametrize("which", ["tiny seed 0", "group-norm front end"])
def test_a_batch_of_equal_lengths_equals_funasr_on_each_clip_alone(which, members, variants, equal_clips, forward_calls):
    folder = members[0] if which.startswith("tiny") else variants[which]
    np.testing.assert_allclose(batched(folder, equal_clips), funasr_alone(folder, equal_clips), rtol=0, atol=FUNASR_ATOL)
    assert forward_calls == [[64000] * 4]  # both kinds batch equal lengths


def test_a_clip_alone_is_bitwise_funasr(members, mixed_clips):
    # The member's raw softmax (classify_clips renormalises in float64 before averaging).
    member = emotion._member(members[0], "cpu", emotion.DEFAULT_HUB, "float32")
    for clip in mixed_clips[:3]:
        [row] = emotion.posteriors(member, [clip])
        assert scores_in_label_order(member.tokens, row.tolist()) == funasr_alone(members[0], [clip])[0].tolist()


def test_control_padding_without_the_positional_conv_fix_is_far_off(variants, mixed_clips, monkeypatch):
    # What FunASR's own padded forward does: the positional convs see the padding frames.
    folder = variants["two positional convs, even kernel"]
    reference = funasr_alone(folder, mixed_clips)
    monkeypatch.setattr(emotion, "_padding_zeroed_in_positional_convs", lambda encoder, frames: contextlib.nullcontext())
    gap = np.abs(batched(folder, mixed_clips) - reference).max()
    assert gap > 1e-3 > 100 * FUNASR_ATOL


def test_a_batch_that_raises_is_retried_clip_by_clip(members, mixed_clips, monkeypatch):
    poisoned = len(mixed_clips[2])
    real = emotion.posteriors

    def fails_on_one_clip(member, clips):
        if poisoned in [len(clip) for clip in clips]:
            raise RuntimeError("CUDA out of memory (pretend)")
        return real(member, clips)

    monkeypatch.setattr(emotion, "posteriors", fails_on_one_clip)
    out = emotion.classify_clips(mixed_clips, spans_for(mixed_clips), model_ids=members[:2], device="cpu")
    span = span_label(*spans_for(mixed_clips)[2])
    assert out["emotion_error"][2] == f"{span}: {members[0]} failed (RuntimeError: CUDA out of memory (pretend))"
    assert out["emotion"][2] is None and out["emotion_scores"][2] is None
    others = [0, 1, 3, 4, 5]
    assert [out["emotion_error"][i] for i in others] == [None] * 5
    expected = np.mean([funasr_alone(m, [mixed_clips[i] for i in others]) for m in members[:2]], axis=0)
    np.testing.assert_allclose([out["emotion_scores"][i] for i in others], expected, rtol=0, atol=FUNASR_ATOL)


def test_a_clip_with_a_nan_costs_only_its_row(members, mixed_clips):
    clips = [clip.copy() for clip in mixed_clips]
    clips[1][100] = np.nan
    out = emotion.classify_clips(clips, spans_for(clips), model_ids=members[:1], device="cpu")
    assert "failed (FloatingPointError: model output is not finite" in out["emotion_error"][1]
    others = [0, 2, 3, 4, 5]
    assert [out["emotion_error"][i] for i in others] == [None] * 5
    expected = funasr_alone(members[0], [clips[i] for i in others])
    np.testing.assert_allclose([out["emotion_scores"][i] for i in others], expected, rtol=0, atol=FUNASR_ATOL)


# --- precision ---


def test_member_dtype():
    assert emotion.member_dtype("auto", "cuda:0") == torch.float16
    assert emotion.member_dtype("bfloat16", "cuda:1") == torch.bfloat16
    assert emotion.member_dtype("float32", "cuda:0") == torch.float32
    for precision in ("auto", "float16", "bfloat16", "float32"):
        assert emotion.member_dtype(precision, "cpu") == torch.float32
    with pytest.raises(ValueError, match="precision 'float8' is not one of"):
        emotion.member_dtype("float8", "cpu")


def test_half_precision_on_cpu_runs_in_float32(members, clips):
    reference = label(windows(clips), members[:1])
    for precision in ("float16", "bfloat16"):
        out = label_categorical_emotion(windows(clips), model_ids=members[:1], device="cpu", precision=precision)
        assert out["emotion_scores"] == reference["emotion_scores"]


@pytest.mark.parametrize(("dtype", "atol"), [(torch.float16, 5e-3), (torch.bfloat16, 6e-2)])
def test_the_batched_path_runs_in_half_precision(dtype, atol, members, mixed_clips):
    # The dtype a CUDA member gets, built here on CPU to check the arithmetic: FunASR's own
    # inference cannot return bfloat16 (it converts features to numpy); this path can.
    member = emotion._load_member(members[0], "cpu", emotion.DEFAULT_HUB, dtype)
    assert member.net.proj.weight.dtype == dtype
    got = emotion.posteriors(member, mixed_clips)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    reference = funasr_alone(members[0], mixed_clips)  # tokens are in label order for the tiny members
    np.testing.assert_allclose(got, reference, rtol=0, atol=atol)
