"""Stages 5 (dimensional SER) and 6 (gender) with tiny random-weight models on real RAVDESS speech.

The tiny models load through the same loaders as the hub ids. The audeering checkpoint's layout is
written out below key by key, so a change in transformers that would leave its weights unloaded
(renamed modules, weight-norm parametrisation) fails here rather than silently on a GPU box.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForSequenceClassification

from build.core.schema import DIMENSIONAL_OUTPUT, DIMENSIONS, GENDER_LABELS, GENDER_OUTPUT
from build.models.batching import batch_plan
from build.models.dimension import (
    MspDimensionModel,
    dimension_columns,
    label_dimensions,
    load_dimension_model,
)
from build.models.gender import gender_from_logits, gender_label_indices, label_gender, load_gender_model
from build.models.tiny.classifiers import (
    build_tiny_dimension_model,
    build_tiny_gender_model,
    tiny_dimension_config,
    tiny_feature_extractor,
    tiny_gender_config,
)
from build.sources.audio import decode_span

REAL_EMOTION_SPEECH = Path(__file__).resolve().parent / "data" / "ravdess"
# RAVDESS, 48 kHz: actor 01 (male) and 02 (female), neutral and angry; 3.3-4.3 s each.
MALE_NEUTRAL = str(REAL_EMOTION_SPEECH / "03-01-01-01-01-01-01.flac")
FEMALE_NEUTRAL = str(REAL_EMOTION_SPEECH / "03-01-01-01-01-01-02.flac")
MALE_ANGRY = str(REAL_EMOTION_SPEECH / "03-01-05-01-01-01-01.flac")
FEMALE_ANGRY = str(REAL_EMOTION_SPEECH / "03-01-05-01-01-01-02.flac")
MISSING = str(REAL_EMOTION_SPEECH / "no-such-recording.wav")


def windows(*spans: tuple[str, float, float]) -> dict[str, list]:
    return {
        "audio_path": [path for path, _, _ in spans],
        "ctx_start": [start for _, start, _ in spans],
        "ctx_end": [end for _, _, end in spans],
    }


# Spans of different lengths, so a batch needs padding. One span per file: decode_spans decodes a
# file once over all its spans, and a sub-span decoded on its own can start one source sample
# (1/48000 s) away from the same span sliced out of a longer decode, which would blur the comparison.
MIXED_LENGTHS = windows(
    (MALE_NEUTRAL, 0.0, 3.0),
    (FEMALE_NEUTRAL, 0.5, 1.75),
    (MALE_ANGRY, 1.0, 3.2),
    (FEMALE_ANGRY, 1.0, 2.0),
)


def one_by_one(label, batch: dict[str, list], **kwargs) -> dict[str, list]:
    """Run a map function on each window alone and collect its columns."""
    rows = [label(windows(batch_spans(batch, i)), **kwargs) for i in range(len(batch["audio_path"]))]
    return {column: [row[column][0] for row in rows] for column in rows[0]}


@pytest.fixture(scope="module")
def dimension_model(tmp_path_factory) -> str:
    return str(build_tiny_dimension_model(tmp_path_factory.mktemp("msp_dim_tiny")))


@pytest.fixture(scope="module")
def gender_model(tmp_path_factory) -> str:
    return str(build_tiny_gender_model(tmp_path_factory.mktemp("gender_tiny")))


# --- the audeering checkpoint layout ---------------------------------------------------------


def audeering_checkpoint_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every tensor of audeering's pytorch_model.bin (saved in 2022, so the positional conv's weight
    norm is stored as weight_g / weight_v), with its shape for ``config``."""
    hidden, inner = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"wav2vec2.masked_spec_embed": (hidden,)}
    in_channels = 1
    for i, (channels, kernel) in enumerate(zip(config.conv_dim, config.conv_kernel)):
        layer = f"wav2vec2.feature_extractor.conv_layers.{i}"
        shapes[f"{layer}.conv.weight"] = (channels, in_channels, kernel)
        shapes[f"{layer}.conv.bias"] = (channels,)
        shapes[f"{layer}.layer_norm.weight"] = (channels,)
        shapes[f"{layer}.layer_norm.bias"] = (channels,)
        in_channels = channels
    shapes["wav2vec2.feature_projection.layer_norm.weight"] = (config.conv_dim[-1],)
    shapes["wav2vec2.feature_projection.layer_norm.bias"] = (config.conv_dim[-1],)
    shapes["wav2vec2.feature_projection.projection.weight"] = (hidden, config.conv_dim[-1])
    shapes["wav2vec2.feature_projection.projection.bias"] = (hidden,)
    pos_kernel = config.num_conv_pos_embeddings
    shapes["wav2vec2.encoder.pos_conv_embed.conv.weight_g"] = (1, 1, pos_kernel)
    shapes["wav2vec2.encoder.pos_conv_embed.conv.weight_v"] = (
        hidden,
        hidden // config.num_conv_pos_embedding_groups,
        pos_kernel,
    )
    shapes["wav2vec2.encoder.pos_conv_embed.conv.bias"] = (hidden,)
    shapes["wav2vec2.encoder.layer_norm.weight"] = (hidden,)
    shapes["wav2vec2.encoder.layer_norm.bias"] = (hidden,)
    for i in range(config.num_hidden_layers):
        layer = f"wav2vec2.encoder.layers.{i}"
        for projection in ("k_proj", "q_proj", "v_proj", "out_proj"):
            shapes[f"{layer}.attention.{projection}.weight"] = (hidden, hidden)
            shapes[f"{layer}.attention.{projection}.bias"] = (hidden,)
        shapes[f"{layer}.layer_norm.weight"] = (hidden,)
        shapes[f"{layer}.layer_norm.bias"] = (hidden,)
        shapes[f"{layer}.feed_forward.intermediate_dense.weight"] = (inner, hidden)
        shapes[f"{layer}.feed_forward.intermediate_dense.bias"] = (inner,)
        shapes[f"{layer}.feed_forward.output_dense.weight"] = (hidden, inner)
        shapes[f"{layer}.feed_forward.output_dense.bias"] = (hidden,)
        shapes[f"{layer}.final_layer_norm.weight"] = (hidden,)
        shapes[f"{layer}.final_layer_norm.bias"] = (hidden,)
    shapes["classifier.dense.weight"] = (hidden, hidden)
    shapes["classifier.dense.bias"] = (hidden,)
    shapes["classifier.out_proj.weight"] = (len(DIMENSIONS), hidden)
    shapes["classifier.out_proj.bias"] = (len(DIMENSIONS),)
    return shapes


def parametrised_name(name: str) -> str:
    """weight_g / weight_v as torch's parametrised weight norm (and newer saves) call them."""
    return name.replace(".weight_g", ".parametrizations.weight.original0").replace(
        ".weight_v", ".parametrizations.weight.original1"
    )


def test_msp_model_has_the_audeering_checkpoint_layout():
    config = tiny_dimension_config()
    model_shapes = {name: tuple(t.shape) for name, t in MspDimensionModel(config).state_dict().items()}
    expected = {parametrised_name(name): shape for name, shape in audeering_checkpoint_shapes(config).items()}
    assert model_shapes == expected


@pytest.mark.parametrize("weight_norm_names", ["weight_g/weight_v (2022 save)", "parametrizations (newer save)"])
def test_checkpoint_loads_with_every_key_matched(tmp_path, weight_norm_names):
    config = tiny_dimension_config(architectures=["Wav2Vec2ForSpeechClassification"])  # as on the hub
    generator = torch.Generator().manual_seed(7)
    checkpoint = {
        name: torch.randn(shape, generator=generator) for name, shape in audeering_checkpoint_shapes(config).items()
    }
    if weight_norm_names.startswith("parametrizations"):
        checkpoint = {parametrised_name(name): tensor for name, tensor in checkpoint.items()}
    config.save_pretrained(tmp_path)
    torch.save(checkpoint, tmp_path / "pytorch_model.bin")

    model, info = MspDimensionModel.from_pretrained(tmp_path, output_loading_info=True)

    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    loaded = model.state_dict()
    for name, tensor in checkpoint.items():
        assert torch.equal(loaded[parametrised_name(name)], tensor), name


def test_dimension_columns_follow_label_names():
    assert dimension_columns({0: "arousal", 1: "dominance", 2: "valence"}, "m") == [0, 1, 2]
    assert dimension_columns({"0": "Valence", "1": "AROUSAL", "2": "dominance"}, "m") == [1, 2, 0]
    assert dimension_columns({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, "m") == [0, 1, 2]
    with pytest.raises(ValueError, match=r"some/model: labels \['happy', 'sad', 'angry'\]"):
        dimension_columns({0: "happy", 1: "sad", 2: "angry"}, "some/model")


# --- dimensional stage on real speech ---------------------------------------------------------


def test_dimensions_equal_a_direct_forward_pass(dimension_model):
    batch = windows((MALE_NEUTRAL, 0.5, 3.0), (FEMALE_NEUTRAL, 0.0, 3.5))
    out = label_dimensions(batch, model_id=dimension_model, device="cpu")

    assert set(out) == set(DIMENSIONAL_OUTPUT)
    assert out["dimension_error"] == [None, None]
    for name in DIMENSIONS:
        assert all(isinstance(value, float) and -1.0 < value < 1.0 for value in out[name])

    model = MspDimensionModel.from_pretrained(dimension_model).eval()
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(dimension_model)
    inputs = extractor(decode_span(MALE_NEUTRAL, 0.5, 3.0), sampling_rate=16_000, return_tensors="pt")
    with torch.inference_mode():
        expected = model(inputs["input_values"]).logits[0].tolist()
    got = [out[name][0] for name in DIMENSIONS]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_padded_batch_equals_one_window_at_a_time(dimension_model):
    model, _, _ = load_dimension_model(dimension_model, "cpu")
    assert model.config.feat_extract_norm == "layer"  # the padded-and-masked path

    batched = label_dimensions(MIXED_LENGTHS, model_id=dimension_model, device="cpu")
    alone = one_by_one(label_dimensions, MIXED_LENGTHS, model_id=dimension_model, device="cpu")

    assert batched["dimension_error"] == alone["dimension_error"] == [None] * 4
    for name in DIMENSIONS:
        np.testing.assert_allclose(batched[name], alone[name], atol=1e-4)
    assert len({round(v, 6) for v in batched["valence"]}) == 4  # the windows really differ


def test_group_norm_model_never_sees_padding(tmp_path):
    # wav2vec2-base style: group norm in the feature encoder, no attention mask.
    torch.manual_seed(3)
    config = tiny_dimension_config(feat_extract_norm="group", do_stable_layer_norm=False)
    MspDimensionModel(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(tmp_path)
    batch = windows(
        (MALE_NEUTRAL, 0.0, 2.0), (FEMALE_NEUTRAL, 0.0, 1.0), (MALE_ANGRY, 1.0, 3.0), (FEMALE_ANGRY, 1.0, 2.0)
    )

    batched = label_dimensions(batch, model_id=str(tmp_path), device="cpu")
    alone = one_by_one(label_dimensions, batch, model_id=str(tmp_path), device="cpu")

    assert batched["dimension_error"] == [None] * 4
    for name in DIMENSIONS:
        np.testing.assert_allclose(batched[name], alone[name], atol=1e-5)


def test_batch_plan():
    assert batch_plan([5, 3, 5, 4, 3], pad_with_mask=False) == [[0, 2], [1, 4], [3]]
    assert batch_plan([5, 3, 5], pad_with_mask=True) == [[0, 1, 2]]
    assert batch_plan([], pad_with_mask=True) == []


def test_bad_windows_get_errors_and_the_rest_are_labelled(dimension_model):
    batch = windows(
        (MALE_NEUTRAL, 0.0, 2.0),
        (MISSING, 0.0, 2.0),
        (FEMALE_NEUTRAL, 1.0, 1.01),  # 160 samples: shorter than the 325-sample receptive field
        (FEMALE_NEUTRAL, 0.0, 2.5),
    )
    out = label_dimensions(batch, model_id=dimension_model, device="cpu")
    good = windows(batch_spans(batch, 0), batch_spans(batch, 3))
    alone = one_by_one(label_dimensions, good, model_id=dimension_model, device="cpu")

    errors = out["dimension_error"]
    assert errors[0] is None and errors[3] is None
    assert errors[1].startswith(f"{MISSING}: cannot open as audio")
    assert errors[2] == f"{FEMALE_NEUTRAL} [1.000-1.010 s]: too short for the model (160 samples give no frame)"
    for name in DIMENSIONS:
        assert out[name][1] is None and out[name][2] is None
        np.testing.assert_allclose([out[name][0], out[name][3]], alone[name], atol=1e-4)


def batch_spans(batch: dict[str, list], i: int) -> tuple[str, float, float]:
    return batch["audio_path"][i], batch["ctx_start"][i], batch["ctx_end"][i]


def test_a_batch_of_only_missing_files_does_not_load_the_model():
    out = label_dimensions(windows((MISSING, 0.0, 1.0)), model_id="no/such-model", device="cpu")
    assert out["arousal"] == [None] and out["dimension_error"][0].startswith(MISSING)
    out = label_gender(windows((MISSING, 0.0, 1.0)), model_id="no/such-model", device="cpu")
    assert out["gender"] == [None] and out["gender_error"][0].startswith(MISSING)


# --- gender -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("id2label", "expected"),
    [
        ({0: "female", 1: "male"}, {"female": 0, "male": 1}),
        ({0: "male", 1: "female"}, {"female": 1, "male": 0}),
        ({"0": "F", "1": "M"}, {"female": 0, "male": 1}),
        ({0: " Man ", 1: "WOMAN"}, {"female": 1, "male": 0}),
        ({0: "child", 1: "male", 2: "female"}, {"female": 2, "male": 1}),
    ],
)
def test_gender_labels_are_mapped_by_name(id2label, expected):
    assert gender_label_indices(id2label, "some/model") == expected


def test_unmappable_gender_labels_are_refused():
    with pytest.raises(ValueError) as refused:
        gender_label_indices({0: "LABEL_0", 1: "LABEL_1"}, "some/model")
    assert str(refused.value) == (
        "some/model: cannot map the model's labels ['LABEL_0', 'LABEL_1'] to ['female', 'male'] "
        "(accepted spellings: ['f', 'female', 'm', 'male', 'man', 'men', 'woman', 'women'])"
    )
    with pytest.raises(ValueError, match="some/model: two labels mean 'female'"):
        gender_label_indices({0: "female", 1: "F", 2: "male"}, "some/model")


def test_gender_score_is_renormalised_over_female_and_male():
    label, score = gender_from_logits([2.0, 0.0, 5.0], {"female": 0, "male": 1})  # index 2: "child"
    assert label == "female"
    assert score == pytest.approx(math.exp(2.0) / (math.exp(2.0) + 1.0), abs=1e-12)
    assert gender_from_logits([0.0, 1.0], {"female": 0, "male": 1}) == ("male", pytest.approx(1 / (1 + math.exp(-1))))


def test_gender_on_real_speech_is_the_softmax_of_a_direct_forward_pass(gender_model):
    out = label_gender(MIXED_LENGTHS, model_id=gender_model, device="cpu")

    assert set(out) == set(GENDER_OUTPUT)
    assert out["gender_error"] == [None] * 4
    assert all(gender in GENDER_LABELS for gender in out["gender"])
    assert all(0.5 <= score <= 1.0 for score in out["gender_score"])

    model, extractor, indices = load_gender_model(gender_model, "cpu")
    path, start, end = batch_spans(MIXED_LENGTHS, 1)
    inputs = extractor(decode_span(path, start, end), sampling_rate=16_000, return_tensors="pt")
    with torch.inference_mode():
        probabilities = model(inputs["input_values"]).logits.softmax(-1)[0]
    best = int(probabilities.argmax())
    assert out["gender"][1] == model.config.id2label[best]
    assert out["gender_score"][1] == pytest.approx(float(probabilities[best]), abs=1e-5)

    alone = one_by_one(label_gender, MIXED_LENGTHS, model_id=gender_model, device="cpu")
    assert out["gender"] == alone["gender"]
    np.testing.assert_allclose(out["gender_score"], alone["gender_score"], atol=1e-4)


def test_gender_group_norm_model_runs_equal_length_groups(tmp_path):
    torch.manual_seed(5)
    config = tiny_gender_config(feat_extract_norm="group", do_stable_layer_norm=False)
    Wav2Vec2ForSequenceClassification(config).save_pretrained(tmp_path)
    Wav2Vec2FeatureExtractor(return_attention_mask=False).save_pretrained(tmp_path)
    batch = windows(
        (MALE_NEUTRAL, 0.0, 2.0), (FEMALE_NEUTRAL, 0.0, 1.0), (MALE_ANGRY, 1.0, 3.0), (FEMALE_ANGRY, 1.0, 2.0)
    )

    batched = label_gender(batch, model_id=str(tmp_path), device="cpu")
    alone = one_by_one(label_gender, batch, model_id=str(tmp_path), device="cpu")

    assert batched["gender_error"] == [None] * 4
    assert batched["gender"] == alone["gender"]
    np.testing.assert_allclose(batched["gender_score"], alone["gender_score"], atol=1e-5)


def test_gender_missing_file_is_named_and_the_rest_are_labelled(gender_model):
    batch = windows((FEMALE_NEUTRAL, 0.0, 2.0), (MISSING, 0.0, 2.0), (MALE_NEUTRAL, 0.0, 2.0))
    out = label_gender(batch, model_id=gender_model, device="cpu")
    assert out["gender_error"][0] is None and out["gender_error"][2] is None
    assert out["gender_error"][1].startswith(f"{MISSING}: cannot open as audio")
    assert out["gender"][1] is None and out["gender_score"][1] is None
    assert out["gender"][0] in GENDER_LABELS and out["gender"][2] in GENDER_LABELS


def test_gender_model_with_unmappable_labels_is_refused_at_load(tmp_path):
    torch.manual_seed(0)
    config = tiny_gender_config(id2label={0: "LABEL_0", 1: "LABEL_1"})  # a checkpoint saved without names
    Wav2Vec2ForSequenceClassification(config).save_pretrained(tmp_path)
    tiny_feature_extractor().save_pretrained(tmp_path)
    message = f"{tmp_path}: cannot map the model's labels ['LABEL_0', 'LABEL_1']"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_gender_model(str(tmp_path), "cpu")


# --- the tiny builders --------------------------------------------------------------------------


@pytest.mark.parametrize("build", [build_tiny_dimension_model, build_tiny_gender_model])
def test_tiny_builders_are_fast_and_seeded(tmp_path, build):
    rng_before = torch.get_rng_state()
    started = time.perf_counter()
    build(tmp_path / "a", seed=0)
    assert time.perf_counter() - started < 2.0
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    build(tmp_path / "b", seed=0)
    build(tmp_path / "c", seed=1)
    files = {name: (tmp_path / name / "model.safetensors").read_bytes() for name in "abc"}
    assert files["a"] == files["b"] != files["c"]
    saved = {path.name for path in (tmp_path / "a").iterdir()}
    assert saved == {"config.json", "model.safetensors", "preprocessor_config.json"}
