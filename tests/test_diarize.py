"""Speakers: the RTTM reader, the word-to-speaker join against the AMI excerpt's own turns and
per-speaker transcripts, and the diarization error rate of RTTM-shaped input (pyannote.metrics)."""

import pytest
from conftest import SAMPLES

from build.core.config import AsrConfig
from build.models import diarize

RTTM = SAMPLES / "ami_es2004_excerpt.rttm"
# Which transcript is whose (from what each says when, against the RTTM's turns): D speaks the long
# 7.4-29.8 s turn (FEE013), A the 29.8-44.5 s one (FEE016), B the last one (MEO015), C two back-channels.
TRANSCRIPTS = {"A": "FEE016", "B": "MEO015", "C": "MEE014", "D": "FEE013"}


def _turns_of(turns, speaker):
    return [t for t in turns if t["speaker"] == speaker]


def _placed_words():
    """Each speaker's transcript words, in order, spread evenly over that speaker's turns (words per
    turn in proportion to its length, largest remainders first): words with times and their speaker."""
    turns = diarize.read_rttm(RTTM)
    words = []
    for letter, speaker in TRANSCRIPTS.items():
        texts = (SAMPLES / f"ami_es2004_excerpt.{letter}.txt").read_text().split()
        own = _turns_of(turns, speaker)
        total = sum(t["end"] - t["start"] for t in own)
        shares = [len(texts) * (t["end"] - t["start"]) / total for t in own]
        counts = [int(s) for s in shares]
        for i in sorted(range(len(own)), key=lambda i: counts[i] - shares[i])[: len(texts) - sum(counts)]:
            counts[i] += 1
        queue = iter(texts)
        for turn, n in zip(own, counts):
            step = (turn["end"] - turn["start"]) / max(n, 1)
            for k in range(n):
                words.append({"word": next(queue), "start": round(turn["start"] + k * step, 3), "end": round(turn["start"] + (k + 1) * step, 3), "truth": speaker})
    return sorted(words, key=lambda w: w["start"]), turns


def test_rttm_turns_are_read_in_file_order():
    turns = diarize.read_rttm(RTTM)
    assert len(turns) == 17
    assert turns[0] == {"speaker": "FEE016", "start": 0.0, "end": 5.29}
    assert turns[-1] == {"speaker": "FEE016", "start": 53.8, "end": 55.92}
    assert sorted({t["speaker"] for t in turns}) == ["FEE013", "FEE016", "MEE014", "MEO015"]


def test_a_bad_rttm_line_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.rttm"
    bad.write_text("SPEAKER mixture 1 0.00 5.29 <NA> <NA> FEE016 <NA> <NA>\nSPEAKER mixture 1 abc\n")
    with pytest.raises(ValueError, match=r"bad.rttm:2: not an RTTM SPEAKER line"):
        diarize.read_rttm(bad)


def test_every_word_spoken_alone_gets_its_speaker_and_overlapped_ones_an_active_speaker():
    words, turns = _placed_words()
    assert len(words) == 75 + 70 + 2 + 83  # every word of the four transcripts
    joined = diarize.join_speakers([{k: w[k] for k in ("word", "start", "end")} for w in words], turns)
    alone = overlapped = 0
    for word, truth in zip(joined, words):
        assert (word["word"], word["start"], word["end"]) == (truth["word"], truth["start"], truth["end"])
        active = {t["speaker"] for t in turns if t["start"] < word["end"] and word["start"] < t["end"]}
        if active == {truth["truth"]}:
            assert word["speaker"] == truth["truth"], word
            alone += 1
        else:
            assert word["speaker"] in active, word
            overlapped += 1
    assert alone + overlapped == len(words) and alone > overlapped > 0  # both cases occur in the excerpt
    # MEE014's two back-channels lie wholly inside others' long turns: an exact tie, never theirs alone
    assert {w["speaker"] for w in joined} == {"FEE013", "FEE016", "MEO015"}


def test_untimed_words_take_the_speaker_before_else_after_and_silence_has_none():
    turns = [{"speaker": "S1", "start": 0.0, "end": 2.0}, {"speaker": "S2", "start": 2.0, "end": 4.0}]
    words = [
        {"word": "7", "start": None, "end": None},  # before any timed word: the first timed word's speaker
        {"word": "hello", "start": 0.5, "end": 1.0},
        {"word": "there", "start": 1.8, "end": 2.6},  # 0.2 s with S1, 0.6 s with S2
        {"word": "%", "start": None, "end": None},
        {"word": "gap", "start": 5.0, "end": 5.5},  # no turn: no speaker
    ]
    assert [w["speaker"] for w in diarize.join_speakers(words, turns)] == ["S1", "S1", "S2", "S2", None]
    assert [w["speaker"] for w in diarize.join_speakers(words, [])] == [None] * 5


def test_der_of_rttm_shaped_input(tmp_path):
    reference = diarize.read_rttm(RTTM)
    total = sum(t["end"] - t["start"] for t in reference)
    assert diarize.error_rate(reference, reference)["der"] == 0.0
    # pyannote-style labels for the same turns: the optimal mapping makes them free
    renamed = tmp_path / "hypothesis.rttm"
    names = {s: f"SPEAKER_{i:02d}" for i, s in enumerate(sorted(TRANSCRIPTS.values()))}
    renamed.write_text("".join(f"SPEAKER excerpt 1 {t['start']:.2f} {t['end'] - t['start']:.2f} <NA> <NA> {names[t['speaker']]} <NA> <NA>\n" for t in reference))
    assert diarize.error_rate(reference, diarize.read_rttm(renamed))["der"] == pytest.approx(0.0, abs=1e-9)
    # a diarizer that misses MEE014's two back-channels: missed speech = their length, nothing else
    missed = [t for t in reference if t["speaker"] != "MEE014"]
    result = diarize.error_rate(reference, missed)
    mee014 = sum(t["end"] - t["start"] for t in _turns_of(reference, "MEE014"))
    assert result["missed"] == pytest.approx(mee014) and result["false_alarm"] == 0.0 and result["confusion"] == pytest.approx(0.0, abs=1e-9)
    assert result["total"] == pytest.approx(total) and result["der"] == pytest.approx(mee014 / total)
    # one speaker's turns given to another: confusion
    merged = [{**t, "speaker": "FEE013" if t["speaker"] == "MEO015" else t["speaker"]} for t in reference]
    assert diarize.error_rate(reference, merged)["confusion"] > 0


def test_diarization_without_a_token_is_refused_with_what_to_do(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(RuntimeError, match=r"asr.diarize needs pyannote/speaker-diarization-3.1, a gated model: .* set HF_TOKEN"):
        diarize.check_available()


def test_speaker_turns_reach_the_prompt_in_clip_time():
    from build.stages.qa import render_messages

    words = [
        {"word": "hello", "start": 10.5, "end": 11.0, "score": 0.9, "speaker": "SPEAKER_00", "emotion": "happy", "gender": "female"},
        {"word": "there", "start": 11.0, "end": 11.4, "score": 0.9, "speaker": "SPEAKER_00", "emotion": "happy", "gender": "female"},
        {"word": "hi", "start": 12.0, "end": 12.3, "score": 0.9, "speaker": "SPEAKER_01", "emotion": "neutral", "gender": "male"},
    ]
    row = {"start": 10.0, "end": 40.0, "transcript": "hello there hi", "tagged_words": words, "primary_emotion": "happy", "emotions": ["happy"], "gender": "female"}
    user = render_messages(row, 3, True)[1]["content"]
    assert user.endswith("\nSpeaker turns from diarization (seconds | speaker | words):\n0.5-1.4 | SPEAKER_00 | hello there\n2.0-2.3 | SPEAKER_01 | hi")
    plain = render_messages({**row, "tagged_words": [{k: v for k, v in w.items() if k != "speaker"} for w in words]}, 3, True)[1]["content"]
    assert "Speaker turns" not in plain and user.startswith(plain)


def test_diarization_in_the_asr_stage_puts_a_speaker_on_each_word(monkeypatch):
    """The ASR map with diarize=True: the pyannote pipeline is replaced by the excerpt's RTTM (turns in
    segment time), the rest is the real code (bundled tiny.en, faster-whisper word times)."""
    from conftest import AMI

    from build.stages import align

    start, end = 20.0, 50.0
    reference = diarize.read_rttm(RTTM)
    seen = []

    def rttm_turns(audio, device):
        seen.append(len(audio))
        return [{**t, "start": t["start"] - start, "end": t["end"] - start} for t in reference if t["end"] > start and t["start"] < end]

    monkeypatch.setattr(align, "diarize_audio", rttm_turns)
    out = align.transcribe_and_align({"audio_path": [str(AMI)], "start": [start], "end": [end]}, AsrConfig(model="bundled:tiny.en", aligner="faster-whisper", language="en", compute_type="int8", batch_size=1, diarize=True), device="cpu")
    assert out["asr_error"] == [None] and seen == [16_000 * 30]
    assert out["n_speakers"] == [4]  # FEE013, FEE016, MEE014, MEO015 all have a turn in 20-50 s
    words = out["words"][0]
    assert words and all("speaker" in w for w in words)
    expected = diarize.join_speakers([{k: w[k] for k in ("word", "start", "end")} for w in words], reference)  # the same join in recording time
    assert [w["speaker"] for w in words] == [w["speaker"] for w in expected]
    off = align.transcribe_and_align({"audio_path": [str(AMI)], "start": [start], "end": [end]}, AsrConfig(model="bundled:tiny.en", aligner="faster-whisper", language="en", compute_type="int8", batch_size=1), device="cpu")
    assert off["n_speakers"] == [None] and all("speaker" not in w for w in off["words"][0])


def test_split_by_speaker_is_refused_even_with_diarization(tmp_path):
    from build import pipeline
    from build.commands.preflight import PreflightError
    from build.core.config import paper_config

    config = paper_config().with_overrides(["export.split_by=speaker", "asr.diarize=true"])
    with pytest.raises(PreflightError, match=r"export.split_by=speaker: diarization labels speakers per clip"):
        pipeline.build(tmp_path / "nothing", config, tmp_path / "out", progress=False)
