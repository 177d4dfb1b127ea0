"""Stages 8-9: transcription with word times (real audio, bundled Whisper tiny.en) and the word join."""

import os
import re
from pathlib import Path

import pytest
from conftest import ravdess_clips, ravdess_recording

from build.core.config import AsrConfig
from build.stages import align
from build.stages.words import label_for_span, tag_segment_words, tag_words

# ---- stage 9: the join rule on hand-made words and windows ----------------------------------------
EMOTION_WINDOWS = [
    {"start": 0.0, "end": 2.0, "emotion": "happy"},
    {"start": 2.0, "end": 4.0, "emotion": "sad"},
    {"start": 4.0, "end": 6.0, "emotion": "angry"},
]
GENDER_WINDOWS = [{"start": 0.0, "end": 3.0, "gender": "female"}, {"start": 3.0, "end": 6.0, "gender": "male"}]


def _word(text, start=None, end=None, score=None):
    return {"word": text, "start": start, "end": end, "score": score}


def _labels(tagged):
    return [(w["word"], w["emotion"], w["gender"]) for w in tagged]


def test_largest_overlap_wins_and_an_exact_tie_goes_to_the_earlier_window():
    assert label_for_span(0.5, 1.5, EMOTION_WINDOWS, "emotion") == "happy"  # inside one window
    assert label_for_span(1.5, 2.7, EMOTION_WINDOWS, "emotion") == "sad"  # 0.5 s happy, 0.7 s sad
    assert label_for_span(1.5, 2.5, EMOTION_WINDOWS, "emotion") == "happy"  # 0.5 s each: the earlier
    assert label_for_span(1.0, 5.5, EMOTION_WINDOWS, "emotion") == "sad"  # 1.0, 2.0, 1.5 s
    assert label_for_span(2.8, 3.4, GENDER_WINDOWS, "gender") == "male"  # 0.2 s female, 0.4 s male
    # the list order does not matter: "earlier" means the earlier start
    assert label_for_span(1.5, 2.5, EMOTION_WINDOWS[::-1], "emotion") == "happy"


def test_a_word_overlapping_no_window_takes_the_nearest_one():
    windows = [{"start": 0.0, "end": 2.0, "emotion": "happy"}, {"start": 5.0, "end": 7.0, "emotion": "sad"}]
    assert label_for_span(2.5, 3.0, windows, "emotion") == "happy"  # 0.5 s vs 2.0 s away
    assert label_for_span(3.5, 4.8, windows, "emotion") == "sad"  # 1.5 s vs 0.2 s away
    assert label_for_span(3.0, 4.0, windows, "emotion") == "happy"  # 1.0 s from both: the earlier
    assert label_for_span(9.0, 9.5, windows, "emotion") == "sad"  # past the last window
    assert label_for_span(6.0, 6.0, windows, "emotion") == "sad"  # zero length, inside a window
    assert label_for_span(2.0, 2.0, EMOTION_WINDOWS, "emotion") == "happy"  # zero length on a border
    assert label_for_span(1.0, 2.0, [], "emotion") is None


def test_untimed_words_take_the_labels_of_the_nearest_timed_word_before_else_after():
    words = [
        _word("%"),  # before any timed word: takes "a"'s labels
        _word("a", 0.5, 1.5, 0.9),
        _word("b", 1.5, 2.7, 0.8),
        _word("c", 1.5, 2.5, 0.7),
        _word("d", 2.8, 3.4, 0.6),
        _word("7"),  # among timed words: takes "d"'s, the timed word before it
        _word("e", 4.2, 4.6, 0.5),
        _word("f", 6.5, 7.0, 0.4),  # past the last window
        _word("$"),  # after the last timed word
    ]
    tagged = tag_segment_words(words, EMOTION_WINDOWS, GENDER_WINDOWS)
    assert _labels(tagged) == [
        ("%", "happy", "female"),
        ("a", "happy", "female"),
        ("b", "sad", "female"),
        ("c", "happy", "female"),
        ("d", "sad", "male"),
        ("7", "sad", "male"),
        ("e", "angry", "male"),
        ("f", "angry", "male"),
        ("$", "angry", "male"),
    ]
    # words keep their order, times and scores; untimed ones stay untimed
    assert tagged[0] == {"word": "%", "start": None, "end": None, "score": None, "emotion": "happy", "gender": "female"}
    assert tagged[1] == {"word": "a", "start": 0.5, "end": 1.5, "score": 0.9, "emotion": "happy", "gender": "female"}


def test_no_timed_word_or_no_window_gives_null_labels():
    untimed = tag_segment_words([_word("1990"), _word("%")], EMOTION_WINDOWS, GENDER_WINDOWS)
    assert _labels(untimed) == [("1990", None, None), ("%", None, None)]
    no_windows = tag_segment_words([_word("a", 0.0, 1.0), _word("7")], [], [])
    assert _labels(no_windows) == [("a", None, None), ("7", None, None)]


def test_tag_words_is_a_batched_map_adding_one_column():
    batch = {
        "words": [[_word("a", 0.5, 1.5)], []],
        "emotion_windows": [EMOTION_WINDOWS, EMOTION_WINDOWS],
        "gender_windows": [GENDER_WINDOWS, GENDER_WINDOWS],
    }
    out = tag_words(batch)
    assert list(out) == ["tagged_words"]
    assert out["tagged_words"] == [[{"word": "a", "start": 0.5, "end": 1.5, "score": None, "emotion": "happy", "gender": "female"}], []]


# ---- stage 8: transcription and word times on real audio ----------------------------------------
RAVDESS = str(ravdess_recording(1))
SEGMENT = (10.0, 24.491)  # four clips: Kids, Dogs, Kids, Kids (clip 4 starts at 10.511 s)
ASR = dict(model="bundled:tiny.en", language="en", compute_type="int8", batch_size=4)


def transcribe_and_align(batch, **settings):
    return align.transcribe_and_align(batch, AsrConfig(**settings), device="cpu")


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^a-z ]", " ", text.lower()).split())


def _clips_in(start, end):
    return [c for c in ravdess_clips() if c["recording"] == "ravdess_actor01.flac" and start <= c["start"] and c["end"] <= end + 1e-6]


@pytest.fixture(scope="module")
def faster_whisper_run(tmp_path_factory):
    """One batch through the faster-whisper aligner: a RAVDESS segment and a file that does not exist."""
    missing = str(tmp_path_factory.mktemp("asr") / "missing.flac")
    batch = {"audio_path": [RAVDESS, missing], "start": [SEGMENT[0], 0.0], "end": [SEGMENT[1], 5.0]}
    return missing, transcribe_and_align(batch, aligner="faster-whisper", **ASR)


def test_transcript_matches_the_ravdess_sentences(faster_whisper_run):
    _, out = faster_whisper_run
    assert set(out) == {"transcript", "language", "words", "aligner", "n_speakers", "asr_error"}
    expected = " ".join(c["text"] for c in _clips_in(*SEGMENT))
    assert _normalise(expected) == "kids are talking by the door dogs are sitting by the door kids are talking by the door kids are talking by the door"
    assert _normalise(out["transcript"][0]) == _normalise(expected)
    assert out["language"][0] == "en" and out["aligner"][0] == "faster-whisper" and out["asr_error"][0] is None


def test_word_times_are_recording_times_within_the_segment(faster_whisper_run):
    _, out = faster_whisper_run
    words = out["words"][0]
    start, end = SEGMENT
    assert _normalise(" ".join(w["word"] for w in words)) == _normalise(out["transcript"][0])
    assert all(start <= w["start"] <= w["end"] <= end and 0.0 <= w["score"] <= 1.0 for w in words)
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    # the segment start is added: each sentence begins inside its own clip of the recording
    sentence_starts = [words[i]["start"] for i in range(0, len(words), 6)]
    clips = _clips_in(*SEGMENT)
    assert len(sentence_starts) == len(clips) == 4
    assert all(c["start"] - 0.2 <= t <= c["end"] for t, c in zip(sentence_starts, clips)), sentence_starts


def test_an_unreadable_file_gives_an_error_naming_it_and_the_rest_is_transcribed(faster_whisper_run):
    missing, out = faster_whisper_run
    assert out["asr_error"][0] is None and out["transcript"][0]
    assert out["asr_error"][1].startswith(f"{missing}: ")
    assert (out["transcript"][1], out["language"][1], out["words"][1], out["aligner"][1]) == (None, None, [], None)


def test_bundled_model_name_resolves_to_the_wheel_folder():
    from build.stages.align import resolve_model

    folder = Path(resolve_model("bundled:tiny.en"))
    assert (folder / "model.bin").is_file() and (folder / "tokenizer.json").is_file()
    assert resolve_model("large-v3") == "large-v3"
    assert resolve_model("/models/whisper") == "/models/whisper"
    with pytest.raises(ValueError, match="bundled:base"):
        resolve_model("bundled:base")


def _torchaudio_align_checkpoint_cached() -> bool:
    import torch

    return os.path.exists(os.path.join(torch.hub.get_dir(), "checkpoints", "wav2vec2_fairseq_base_ls960_asr_ls960.pth"))


@pytest.mark.skipif(_torchaudio_align_checkpoint_cached(), reason="the English align model is cached here: no fallback")
def test_whisperx_aligner_offline_falls_back_to_faster_whisper_and_says_so():
    # The real load: torchaudio's download fails offline, so faster-whisper times the words.
    out = transcribe_and_align({"audio_path": [RAVDESS], "start": [0.0], "end": [7.0]}, aligner="whisperx", **ASR)
    assert out["asr_error"] == [None]
    assert out["aligner"] == ["faster-whisper"]
    assert _normalise(out["transcript"][0]) == "dogs are sitting by the door dogs are sitting by the door"
    assert all(0.0 <= w["start"] <= w["end"] <= 7.0 for w in out["words"][0])


def _tiny_align_model():
    """A random-weight wav2vec2 CTC model with the English align model's labels: real code, no download."""
    import torch
    import torchaudio

    torch.manual_seed(0)
    labels = torchaudio.pipelines.WAV2VEC2_ASR_BASE_960H.get_labels()
    model = torchaudio.models.wav2vec2_model(
        extractor_mode="group_norm",
        extractor_conv_layer_config=[(16, 10, 5)] + [(16, 3, 2)] * 4 + [(16, 2, 2)] * 2,
        extractor_conv_bias=False,
        encoder_embed_dim=16,
        encoder_projection_dropout=0.0,
        encoder_pos_conv_kernel=16,
        encoder_pos_conv_groups=2,
        encoder_num_layers=1,
        encoder_num_heads=2,
        encoder_attention_dropout=0.0,
        encoder_ff_interm_features=32,
        encoder_ff_interm_dropout=0.0,
        encoder_dropout=0.0,
        encoder_layer_norm_first=False,
        encoder_layer_drop=0.0,
        aux_num_out=len(labels),
    ).eval()
    metadata = {"language": "en", "dictionary": {c.lower(): i for i, c in enumerate(labels)}, "type": "torchaudio"}
    return model, metadata


def test_whisperx_aligner_with_an_align_model_times_every_word_offline(monkeypatch):
    """WhisperX's batched transcription and align() run for real (align() needs NLTK's punkt_tab,
    which is not installed here); only the align model's weights are random instead of downloaded."""
    from build.core import devices
    from build.stages.align import align_model_key

    monkeypatch.setitem(devices._CACHE, align_model_key("en", "cpu"), _tiny_align_model())
    out = transcribe_and_align({"audio_path": [RAVDESS], "start": [SEGMENT[0]], "end": [SEGMENT[1]]}, aligner="whisperx", **ASR)
    assert out["asr_error"] == [None] and out["aligner"] == ["whisperx"] and out["language"] == ["en"]
    transcript, words = out["transcript"][0], out["words"][0]
    assert "kids are talking by the door" in _normalise(transcript)
    assert [w["word"] for w in words] == transcript.split()  # WhisperX keeps punctuation on the word
    start, end = SEGMENT
    assert all(start <= w["start"] <= w["end"] <= end for w in words)
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)


def test_unknown_aligner_is_refused():
    with pytest.raises(ValueError, match="unknown aligner 'mfa'"):
        transcribe_and_align({"audio_path": [], "start": [], "end": []}, aligner="mfa", **ASR)
