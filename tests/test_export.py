"""Export round trip: Parquet shards + card -> load_dataset with the audio decoded and equal to the source span."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import AMI, REPO
from datasets import Dataset

from build import pipeline
from build.core.config import paper_config
from build.core.schema import EMOTION_LABELS
from build.publishing import card, export, publish, stats
from build.sources.audio import decode_span

SPANS = [(2.0, 34.0), (20.5, 55.0)]


def _segments() -> Dataset:
    rows = []
    for i, (start, end) in enumerate(SPANS):
        words = [
            {"word": w, "start": start + lo, "end": start + hi, "score": 0.9, "emotion": "happy", "gender": "female"}
            for w, lo, hi in (("menu", 1.0, 1.4), ("on", 7.25, 7.5), ("the", 15.02, 15.31), ("remote", 29.4, 31.95))
        ] + [{"word": "uh", "start": None, "end": None, "score": None, "emotion": None, "gender": None}]  # left untimed by the aligner
        rows.append(
            {
                "segment_id": f"ami-{i:04d}",
                "recording_id": "ami",
                "audio_path": str(AMI),
                "start": start,
                "end": end,
                "emotion_windows": [{"start": start, "end": start + 2, "emotion": "happy", "raw_emotion": "happy", "emotion_scores": [0.1] * 9, "arousal": 0.5, "dominance": 0.5, "valence": 0.7, "consistent": True}],
                "gender_windows": [{"start": start, "end": start + 2, "gender": "female", "gender_score": 0.8}],
                "emotion_counts": {label: int(label == "happy") * 5 for label in EMOTION_LABELS},
                "emotions": ["happy"],
                "primary_emotion": "happy",
                "gender": "female",
                "transcript": "a menu display on the remote",
                "language": "en",
                "aligner": "faster-whisper",
                "tagged_words": words,
                "qa_pairs": [{"question": "How does the speaker feel?", "answer": "Pleased."}, {"question": "What is discussed?", "answer": "A menu."}][: 2 - i],
                "llm_model": "stub-model",
                "prompt_version": "qa_v1",
            }
        )
    return Dataset.from_list(rows)


def _pairs(segments: Dataset) -> Dataset:
    rows = [
        {"segment_id": s["segment_id"], "recording_id": s["recording_id"], "pair_index": i, "question": p["question"], "answer": p["answer"], "category": c}
        for s in segments
        for i, (p, c) in enumerate(zip(s["qa_pairs"], ["emotion", "other"]))
    ]
    return Dataset.from_list(rows)


REPORT = {"counts": {"recordings": 1, "condensed segments": 2, "QA pairs kept": 3}, "drops": {"length": {"shorter than 30 s": 4}}}
BUILD_ID = "0123456789abcdef"


def write(out, config=None, segments=None, **kwargs):
    """The export step of a build over ``segments`` (default ``_segments()``) into ``out``, and its
    ``report.json`` with the build id (what ``pipeline.export_dataset`` does)."""
    segments = segments if segments is not None else _segments()
    config = config or paper_config()
    kwargs = {"license": "cc-by-4.0", "sources": "AMI excerpt.", "build_id": BUILD_ID, **kwargs}
    card = (REPO / "dataset_card.md").read_text()
    models = pipeline.model_ids(config)
    pairs = _pairs(segments)
    tables = export.write_dataset(segments, pairs, config, out, models=models, report=REPORT,
                                  card_template=card, **kwargs)  # fmt: skip
    (Path(out) / "report.json").write_text(json.dumps({**REPORT, "build_id": kwargs["build_id"]}))
    return tables


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    write(out)
    (out / "work").mkdir()
    (out / "work" / "scratch.txt").write_text("local only")
    return out


def test_load_dataset_gives_qa_rows_with_decoded_audio_equal_to_the_source_span(built):
    from datasets import load_dataset

    qa = load_dataset(str(built), split="test")
    assert len(qa) == 3
    assert qa.column_names[:5] == ["context", "instruction", "answer", "category", "question_id"]
    assert qa["instruction"] == ["How does the speaker feel?", "What is discussed?", "How does the speaker feel?"]
    assert qa["question_id"] == ["ami-0000-q00", "ami-0000-q01", "ami-0001-q00"]
    assert qa["category"] == ["emotion", "other", "emotion"]
    assert qa["source_file"] == ["ami_es2004_excerpt.flac"] * 3
    assert qa["duration"] == [32.0, 32.0, 34.5]
    assert qa["emotion_models"][0] == ["iic/emotion2vec_plus_large", "iic/emotion2vec_plus_base", "iic/emotion2vec_plus_seed"]
    assert qa["words"][0][0] == {"word": "menu", "start": 1.0, "end": 1.4, "score": 0.9, "emotion": "happy", "gender": "female"}  # clip time
    assert qa["words"][0][-1]["start"] is None  # untimed words stay untimed
    assert [(r["clip_start"], r["clip_end"]) for r in qa] == [SPANS[0], SPANS[0], SPANS[1]]  # recording time, provenance
    assert "audio_path" not in qa.column_names  # no local paths are published
    for row, (start, end) in zip(qa.select([0, 2]), SPANS):
        audio = row["context"]
        samples = audio.get_all_samples() if hasattr(audio, "get_all_samples") else None
        array = samples.data.numpy()[0] if samples is not None else np.asarray(audio["array"])
        rate = samples.sample_rate if samples is not None else audio["sampling_rate"]
        expected = decode_span(str(AMI), start, end)
        assert rate == 16_000 and len(array) == len(expected)
        assert np.abs(array - expected).max() <= 1 / 32768 + 1e-6  # 16-bit FLAC: lossless up to quantisation


def _samples(audio) -> tuple[np.ndarray, int]:
    samples = audio.get_all_samples() if hasattr(audio, "get_all_samples") else None
    if samples is not None:
        return samples.data.numpy()[0], samples.sample_rate
    return np.asarray(audio["array"]), audio["sampling_rate"]


def test_every_time_column_is_clip_time_so_slicing_the_clip_by_a_word_gives_that_word(built):
    """Each timed word, cut from the decoded clip by its own times, lies inside the clip and holds the
    recording's samples at clip_start + t (lhotse's convention when a cut is materialised)."""
    from datasets import load_dataset

    segments = load_dataset(str(built), "segments", split="test")
    source_words = {row["segment_id"]: row["tagged_words"] for row in _segments()}  # recording time
    recording = decode_span(str(AMI))
    rate = 16_000
    checked = 0
    for row in segments:
        clip, sr = _samples(row["context"])
        assert sr == rate
        offset = int(round(row["clip_start"] * rate))
        for word, source in zip(row["words"], source_words[row["segment_id"]], strict=True):
            if word["start"] is None:
                continue
            assert (row["clip_start"] + word["start"], row["clip_start"] + word["end"]) == pytest.approx((source["start"], source["end"]), abs=1e-6)
            lo, hi = int(round(word["start"] * rate)), int(round(word["end"] * rate))
            assert 0 <= lo < hi <= len(clip), (row["segment_id"], word)
            assert np.abs(clip[lo:hi] - recording[offset + lo : offset + hi]).max() <= 1 / 32768 + 1e-6
            checked += 1
        for name in ("emotion_windows", "gender_windows"):
            assert [(w["start"], w["end"]) for w in row[name]] == [(0.0, 2.0)]
    assert checked == 2 * 4  # every timed word of both clips


def test_segments_config_loads_with_windows_and_pair_counts(built):
    from datasets import load_dataset

    segments = load_dataset(str(built), "segments", split="test")
    assert segments["segment_id"] == ["ami-0000", "ami-0001"]
    assert segments["n_pairs"] == [2, 1]
    assert segments["emotion_windows"][0][0]["valence"] == pytest.approx(0.7)
    assert segments["emotion_counts"][0]["happy"] == 5


def test_card_has_configs_and_real_statistics(built):
    card = (built / "README.md").read_text()
    assert "config_name: qa\n  default: true" in card and "path: data/segments/test-*.parquet" in card
    assert "license: cc-by-4.0" in card
    assert "| QA pairs | 3 |" in card and "| clips (segments) | 2 |" in card
    assert "| emotion | 2 | 66.7 |" in card and "| other | 1 | 33.3 |" in card and "![QA pairs per category (Table 1)](stats/categories.png)" in card
    assert "| dropped at length: shorter than 30 s | 4 |" in card
    assert "angry 10, disgusted 10, fearful 4, happy 4, sad 2, surprised 3" in card
    import yaml

    header = yaml.safe_load(card.split("---")[1])
    assert [c["config_name"] for c in header["configs"]] == ["qa", "segments"]
    assert header["pretty_name"] == "CPQA: contextual paralinguistic QA"
    qa_info = header["dataset_info"][0]
    assert qa_info["config_name"] == "qa" and qa_info["splits"] == [{"name": "test", "num_bytes": qa_info["dataset_size"], "num_examples": 3}]
    assert qa_info["dataset_size"] == (built / "data" / "qa" / "test-00000-of-00001.parquet").stat().st_size


def test_a_rebuild_into_the_same_folder_loads_fresh(tmp_path):
    """load_dataset caches a local folder by its name and card metadata: the card's sizes must change it."""
    from datasets import load_dataset

    segments = _segments()
    models = pipeline.model_ids(paper_config())
    loaded = []
    for counts in ({"ami-0000": 2, "ami-0001": 1}, {"ami-0000": 0, "ami-0001": 0}):
        out = tmp_path / "same-name"
        rows = export.segment_table(segments, models, counts)
        export.write_config(rows, out, "segments")
        export.write_config(rows.select([0]), out, "qa")
        info = card.dataset_info_yaml(out)
        (out / "README.md").write_text("---\n" + info + "\nconfigs:\n- config_name: segments\n  data_files:\n  - split: test\n    path: data/segments/test-*.parquet\n---\n")
        loaded.append(load_dataset(str(out), "segments", split="test")["n_pairs"][:])
    assert loaded == [[2, 1], [0, 0]]


def test_files_to_upload_is_exactly_the_card_and_the_shards(built):
    assert publish.files_to_upload(built) == [
        "README.md",
        "data/qa/test-00000-of-00001.parquet",
        "data/segments/test-00000-of-00001.parquet",
        *(f"stats/{name}.png" for name in sorted(stats.PLOTS)),
    ]


def test_card_template_fields_must_all_be_given():
    with pytest.raises(KeyError, match=r"needs a value for \$n_pairs"):
        card.render_card("pairs: $n_pairs", {})


def test_push_uploads_exactly_those_files(built, monkeypatch):
    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, repo_type, private, exist_ok):
            calls["create"] = (repo_id, repo_type, private)

        def upload_folder(self, folder_path, repo_id, repo_type, allow_patterns, commit_message):
            calls["upload"] = sorted(allow_patterns)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    url = publish.push(built, "you/cpqa")
    assert url == "https://huggingface.co/datasets/you/cpqa"
    assert calls["create"] == ("you/cpqa", "dataset", True)  # private by default
    assert calls["upload"] == publish.files_to_upload(built)
    assert calls["token"] == "hf_secret"


def test_local_model_folders_are_published_by_name_only(tmp_path):
    assert card.public_model_id(str(tmp_path)) == f"local:{tmp_path.name}"
    assert card.public_model_id("iic/emotion2vec_plus_large") == "iic/emotion2vec_plus_large"


def test_a_build_id_of_digits_only_stays_the_same_string_in_the_card(tmp_path):
    """The card's YAML quotes the id: unquoted, 0000000000000123 would read back as the integer 123."""
    write(tmp_path, build_id="0000000000000123")
    assert card.card_header(tmp_path)["cpqa_build_id"] == "0000000000000123"
    assert publish.check_current(tmp_path) == "0000000000000123"
