import numpy as np
import pytest

from build.core.config import PostFilterConfig
from build.stages.postfilter import (
    duplicate_flags,
    embed,
    explode_pairs,
    mark_duplicates,
    pair_drop_reason,
)

WORDS = ["transcript", "transcription", "text", "written", "caption", "subtitle"]


@pytest.mark.parametrize(
    "question, answer, reason",
    [
        ("What is the speaker's mood?", "Cheerful.", None),
        ("According to the transcript, who arrives first?", "Tom.", "presupposes a transcript"),
        ("What does the text say about the door?", "Kids are talking by it.", "presupposes a transcript"),
        ("Which word is written in capitals?", "None.", "presupposes a transcript"),
        ("What context clues are there?", "The tone.", None),  # 'context' is not 'text'
        ("", "Yes.", "empty"),
        ("Who speaks?", "   ", "empty"),
        ("What???", "!!! ??? ...", "garbled"),
        ("Where are they?", "door door door door door", "garbled"),
        ("Is the speaker angry?", "is the speaker angry", "garbled"),
        ("Your best friend", "My family is awesome.", "not a question"),
        ("Describe the speaker's tone", "Calm and even.", None),
    ],
)
def test_pair_drop_reasons(question, answer, reason):
    assert pair_drop_reason(question, answer, WORDS, min_answer_chars=2) == reason


@pytest.mark.parametrize(
    "question, answer, reason",
    [
        ("谁在说话？", "一个女人。", None),  # zh: fullwidth question mark U+FF1F
        ("誰が話していますか？", "女性です。", None),  # ja
        ("ما هو شعور المتحدث؟", "إنه سعيد.", None),  # ar: U+061F
        ("Ποιος μιλάει;", "Μια γυναίκα.", None),  # el: the semicolon NFC makes of U+037E
        ("Ποιος μιλάει\u037e", "Μια γυναίκα.", None),  # el: the Greek question mark itself
        ("ማን ነው የሚናገረው፧", "አንዲት ሴት።", None),  # am: Ethiopic question mark
        ("Ո՞վ է խոսում։", "Մի կին։", None),  # hy: ՞ sits on the questioned word
        ("¿Quién habla?", "Una mujer.", None),  # es
        ("Who said \"stop?\"", "Tom.", None),  # the mark inside closing quotes
        ("我最好的朋友。", "是的。", "not a question"),  # zh statement
        ("صديقي المفضل.", "نعم.", "not a question"),  # ar statement
        ("Your best friend;", "Yes.", "not a question"),  # a semicolon outside Greek is no question mark
    ],
    ids=["zh", "ja", "ar", "el-semicolon", "el-mark", "am", "hy", "es", "quoted", "zh-statement",
         "ar-statement", "en-semicolon"],
)
def test_questions_in_other_scripts(question, answer, reason):
    assert pair_drop_reason(question, answer, WORDS, min_answer_chars=2) == reason


def test_explode_pairs_one_row_per_pair():
    out = explode_pairs({"segment_id": ["s1", "s2", "s3"], "recording_id": ["r", "r", "q"], "qa_pairs": [[{"question": "a?", "answer": "b"}, {"question": "c?", "answer": "d"}], [], None]})
    assert out == {"segment_id": ["s1", "s1"], "recording_id": ["r", "r"], "pair_index": [0, 1], "question": ["a?", "c?"], "answer": ["b", "d"]}


def test_duplicates_only_within_a_segment_and_against_kept_questions():
    v = np.array([[1.0, 0.0], [0.95, np.sqrt(1 - 0.95**2)], [1.0, 0.0], [0.0, 1.0]])
    # row 1 is 0.95 similar to row 0 (same segment) -> duplicate; row 2 is identical but another segment
    assert duplicate_flags(["a", "a", "b", "a"], v, threshold=0.9) == [False, True, False, False]
    assert duplicate_flags(["a", "a", "b", "a"], v, threshold=0.96) == [False, False, False, False]


def test_bundled_sentence_embeddings_find_paraphrases():
    questions = ["How does the speaker feel?", "How is the speaker feeling?", "What colour is the remote control?"]
    vectors = embed(questions)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > 0.9 > vectors[0] @ vectors[2]
    batch = {"segment_id": ["s", "s", "s"], "question": questions, "drop_reason": [None, None, None]}
    assert mark_duplicates(batch, PostFilterConfig(embedding_model="bundled", duplicate_threshold=0.9), device="cpu")["drop_reason"] == [None, "near-duplicate question", None]
