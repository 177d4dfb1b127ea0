"""Label normalisation: every listed corpus onto the emotion2vec taxonomy; drops counted, unknown labels refused."""

import pytest

from build.core.schema import EMOTION_LABELS
from build.sources.corpora import CORPORA, normalise_labels

LISTED = ("iemocap", "meld", "crema-d", "ravdess", "emodb", "tess", "savee", "cmu-mosei", "emowoz", "msp-podcast", "empatheticdialogues")

# (corpus, labels as the corpus writes them, expected taxonomy labels, expected drop counts)
CASES = [
    ("iemocap", ["neu", "Hap", "exc", "ang", "sad", "fru", "xxx", "oth", "sur"], ["neutral", "happy", "happy", "angry", "sad", None, None, "other", "surprised"], {"fru": 1, "xxx": 1}),
    ("meld", ["joy", "sadness", "anger", "surprise", "fear", "disgust", "neutral"], ["happy", "sad", "angry", "surprised", "fearful", "disgusted", "neutral"], {}),
    ("crema-d", ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"], ["angry", "disgusted", "fearful", "happy", "neutral", "sad"], {}),
    ("ravdess", ["calm", "02", "neutral", "disgust", "08", "fearful"], ["neutral", "neutral", "neutral", "disgusted", "surprised", "fearful"], {}),
    ("emodb", ["W", "L", "E", "A", "F", "T", "N", "boredom"], ["angry", None, "disgusted", "fearful", "happy", "sad", "neutral", None], {"boredom": 1, "l": 1}),
    ("tess", ["ps", "pleasant_surprise", "angry", "disgust"], ["surprised", "surprised", "angry", "disgusted"], {}),
    ("savee", ["sa", "su", "h", "n"], ["sad", "surprised", "happy", "neutral"], {}),
    ("cmu-mosei", ["happy", "fear", "positive", "negative", "negative"], ["happy", "fearful", None, None, None], {"negative": 2, "positive": 1}),
    ("emowoz", ["abusive", "excited", "satisfied", "dissatisfied", "apologetic", "fearful"], ["angry", "happy", "happy", None, None, "fearful"], {"apologetic": 1, "dissatisfied": 1}),
    ("msp-podcast", ["A", "S", "H", "U", "F", "D", "C", "N", "O", "X"], ["angry", "sad", "happy", "surprised", "fearful", "disgusted", None, "neutral", "other", None], {"c": 1, "x": 1}),
    ("empatheticdialogues", ["furious", "terrified", "joyful", "lonely", "impressed", "embarrassed", "proud"], ["angry", "fearful", "happy", "sad", "surprised", None, None], {"embarrassed": 1, "proud": 1}),
]


def test_every_listed_corpus_has_a_table_onto_the_taxonomy():
    assert set(LISTED) <= set(CORPORA)
    for corpus, table in CORPORA.items():
        assert set(table.values()) - {None} <= set(EMOTION_LABELS), corpus
        assert all(key == key.strip().lower() for key in table), corpus


@pytest.mark.parametrize("corpus, labels, expected, dropped", CASES, ids=[c[0] for c in CASES])
def test_normalise(corpus, labels, expected, dropped):
    result = normalise_labels(corpus, labels)
    assert result.labels == expected
    assert result.dropped == dropped


def test_empathetic_dialogues_covers_its_32_labels():
    assert len(CORPORA["empatheticdialogues"]) == 32
    assert sum(v is not None for v in CORPORA["empatheticdialogues"].values()) == 17


def test_aliases_and_the_identity_corpus():
    assert normalise_labels("CREMA_D", ["hap"]).labels == ["happy"]
    assert normalise_labels("MOSEI", ["surprise"]).labels == ["surprised"]
    assert normalise_labels("emotion2vec", list(EMOTION_LABELS)).labels == list(EMOTION_LABELS)


def test_an_unknown_label_names_corpus_and_label():
    with pytest.raises(ValueError, match=r"corpus 'meld': unknown emotion label 'sarcasm' \(known: anger, disgust"):
        normalise_labels("meld", ["joy", "sarcasm"])


def test_an_unknown_corpus_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown corpus 'friends': known corpora are cmu-mosei, crema-d, emodb"):
        normalise_labels("friends", ["joy"])
