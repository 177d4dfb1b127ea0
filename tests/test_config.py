import pytest

from build.core.config import PAPER_ALPHA, Config, paper_config, tiny_config


def test_paper_defaults():
    c = paper_config()
    assert (c.min_segment_s, c.max_segment_s) == (30.0, 60.0)
    assert (c.emotion_window.label_s, c.emotion_window.context_s) == (2.0, 1.0)
    assert (c.gender_window.label_s, c.gender_window.context_s) == (2.0, 0.5)
    assert c.thresholds == {"v_pos_min": 0.5, "v_neg_max": 0.5, "v_neu_min": 0.4, "v_neu_max": 0.6}
    assert c.condense.alpha == {"angry": 10, "disgusted": 10, "fearful": 4, "happy": 4, "sad": 2, "surprised": 3}
    assert c.condense.samples_per_category == 80
    assert c.models.emotion == ["iic/emotion2vec_plus_large", "iic/emotion2vec_plus_base", "iic/emotion2vec_plus_seed"]
    assert c.models.dimension == "audeering/wav2vec2-large-robust-12-ft-emotion-msp-dim"


def test_round_trip_and_overrides():
    c = paper_config().with_overrides(["condense.x=0.6", "runtime.device=cuda:1", 'condense.alpha={"sad": 1}'])
    assert c.condense.x == 0.6 and c.runtime.device == "cuda:1" and c.condense.alpha == {"sad": 1}
    assert Config.from_dict(c.to_dict()) == c
    assert PAPER_ALPHA["angry"] == 10  # the module default is not mutated


@pytest.mark.parametrize(
    "override, message",
    [("condense.z=1", "unknown config key 'condense.z'"), ("nope.x=1", "no config section 'nope'"), ("condense", "not of the form key=value")],
)
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ValueError, match=message):
        paper_config().with_overrides([override])


def test_unknown_keys_in_a_config_file_are_named():
    with pytest.raises(ValueError, match=r"\['vad.treshold'\]"):
        Config.from_dict({"vad": {"treshold": 0.3}})


def test_tiny_profile_only_swaps_models(tmp_path):
    c = tiny_config(str(tmp_path))
    assert c.profile == "tiny" and c.models.dimension == str(tmp_path / "msp_dim_tiny")
    assert c.condense == paper_config().condense and c.emotion_window == paper_config().emotion_window


def test_config_file_merges_sections_and_replaces_alpha(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("condense:\n  x: 0.55\n  alpha: {sad: 3}\nvad:\n  merge_gap_s: 1.5\n")
    c = paper_config().with_file(str(path))
    assert (c.condense.x, c.condense.y, c.condense.alpha) == (0.55, 0.4, {"sad": 3})
    assert c.vad.merge_gap_s == 1.5 and c.vad.threshold == 0.5
    path.write_text("- not a mapping\n")
    with pytest.raises(ValueError, match="a config file holds a mapping of sections, not list"):
        paper_config().with_file(str(path))
