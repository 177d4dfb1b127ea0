"""Emotion label normalisation: each corpus' label words onto the emotion2vec taxonomy.

    normalise_labels("meld", ["joy", "sadness", "neutral"]) -> Normalised(labels=["happy", "sad", "neutral"], dropped={})

``CORPORA`` maps a corpus name to its table, ``{corpus label: taxonomy label or None}``; a label
mapped to None has no counterpart among angry, disgusted, fearful, happy, neutral, other, sad,
surprised, unknown (boredom, contempt, frustration, sarcasm, embarrassment, ...). As in the paper,
such utterances are left out of calibration; ``normalise_labels`` returns None for them and counts
them per label. A label that is not in the corpus' table is an error naming the corpus and the label
(a typo or the wrong ``--corpus`` must not shrink the test set silently).

Matching ignores case and surrounding blanks. Where a corpus ships short codes (IEMOCAP ``hap``,
CREMA-D ``HAP``, SAVEE ``sa``, EmoDB ``F``, RAVDESS ``03``, MSP-Podcast ``H``) both the codes and
the full words are accepted.

Choices worth knowing (the rest are the obvious synonyms):
- RAVDESS calm -> neutral (the paper's choice); IEMOCAP excited -> happy (the usual 4-class merge);
  IEMOCAP frustration, EmoDB boredom, MSP-Podcast contempt -> dropped.
- IEMOCAP ``xxx`` and MSP-Podcast ``X`` (no annotator agreement) -> dropped; ``oth``/``O`` -> other.
- CMU-MOSEI: the six emotions map by name; its sentiment labels: neutral -> neutral, positive and
  negative dropped (a polarity names no single emotion).
- EmoWOZ: neutral, fearful (its "fearful, sad, disappointed" class) -> fearful, excited and satisfied
  -> happy, abusive -> angry; dissatisfied and apologetic are dropped.
- EmpatheticDialogues (32 labels): only labels that are a plain kind of one of the nine map
  (furious, annoyed -> angry; terrified, afraid, anxious, apprehensive -> fearful; joyful, excited,
  content -> happy; lonely, devastated, disappointed -> sad; impressed -> surprised); states such as
  proud, grateful, hopeful, nostalgic, guilty, embarrassed, jealous, caring are dropped.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..core.schema import EMOTION_LABELS

_A, _D, _F, _H, _N, _O, _S, _U = "angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised"

CORPORA: dict[str, dict[str, str | None]] = {
    "iemocap": {
        "neu": _N, "neutral": _N, "hap": _H, "happy": _H, "happiness": _H, "exc": _H, "excited": _H,
        "ang": _A, "angry": _A, "anger": _A, "sad": _S, "sadness": _S, "sur": _U, "surprised": _U, "surprise": _U,
        "fea": _F, "fear": _F, "fearful": _F, "dis": _D, "disgust": _D, "disgusted": _D,
        "oth": _O, "other": _O, "fru": None, "frustrated": None, "frustration": None, "xxx": None,
    },
    "meld": {"neutral": _N, "joy": _H, "sadness": _S, "anger": _A, "surprise": _U, "fear": _F, "disgust": _D},
    "crema-d": {
        "ang": _A, "anger": _A, "angry": _A, "dis": _D, "disgust": _D, "fea": _F, "fear": _F, "hap": _H, "happy": _H,
        "neu": _N, "neutral": _N, "sad": _S,
    },
    "ravdess": {
        "01": _N, "neutral": _N, "02": _N, "calm": _N, "03": _H, "happy": _H, "04": _S, "sad": _S, "05": _A, "angry": _A,
        "06": _F, "fearful": _F, "07": _D, "disgust": _D, "disgusted": _D, "08": _U, "surprised": _U,
    },
    "emodb": {
        "w": _A, "anger": _A, "ärger": _A, "l": None, "boredom": None, "langeweile": None, "e": _D, "disgust": _D, "ekel": _D,
        "a": _F, "fear": _F, "anxiety": _F, "angst": _F, "f": _H, "happiness": _H, "joy": _H, "freude": _H,
        "t": _S, "sadness": _S, "trauer": _S, "n": _N, "neutral": _N,
    },
    "tess": {
        "angry": _A, "disgust": _D, "fear": _F, "happy": _H, "neutral": _N, "ps": _U, "pleasant_surprise": _U,
        "pleasant surprise": _U, "pleasant_surprised": _U, "sad": _S,
    },
    "savee": {
        "a": _A, "anger": _A, "d": _D, "disgust": _D, "f": _F, "fear": _F, "h": _H, "happiness": _H, "n": _N, "neutral": _N,
        "sa": _S, "sadness": _S, "su": _U, "surprise": _U,
    },
    "cmu-mosei": {
        "happy": _H, "happiness": _H, "sad": _S, "sadness": _S, "anger": _A, "angry": _A, "surprise": _U, "disgust": _D,
        "fear": _F, "neutral": _N, "positive": None, "negative": None,
    },
    "emowoz": {
        "neutral": _N, "fearful": _F, "dissatisfied": None, "apologetic": None, "abusive": _A, "excited": _H, "satisfied": _H,
    },
    "msp-podcast": {
        "a": _A, "angry": _A, "s": _S, "sad": _S, "h": _H, "happy": _H, "u": _U, "surprise": _U, "f": _F, "fear": _F,
        "d": _D, "disgust": _D, "c": None, "contempt": None, "n": _N, "neutral": _N, "o": _O, "other": _O, "x": None,
    },
    "empatheticdialogues": {
        "surprised": _U, "impressed": _U, "excited": _H, "joyful": _H, "content": _H,
        "angry": _A, "furious": _A, "annoyed": _A, "afraid": _F, "terrified": _F, "anxious": _F, "apprehensive": _F,
        "sad": _S, "lonely": _S, "devastated": _S, "disappointed": _S, "disgusted": _D,
        "proud": None, "grateful": None, "hopeful": None, "confident": None, "anticipating": None, "nostalgic": None,
        "prepared": None, "jealous": None, "guilty": None, "embarrassed": None, "caring": None, "sentimental": None,
        "trusting": None, "ashamed": None, "faithful": None,
    },
}
# Other spellings of the corpus names.
ALIASES = {"crema_d": "crema-d", "cremad": "crema-d", "mosei": "cmu-mosei", "cmu_mosei": "cmu-mosei", "msp_podcast": "msp-podcast",
           "msppodcast": "msp-podcast", "empathetic_dialogues": "empatheticdialogues", "ed": "empatheticdialogues", "emo-db": "emodb"}


@dataclass(frozen=True)
class Normalised:
    labels: list[str | None]  # one per input label; None where the corpus label has no counterpart
    dropped: dict[str, int]  # corpus label -> how many were dropped


def corpus_table(corpus: str) -> dict[str, str | None]:
    name = corpus.strip().lower()
    name = ALIASES.get(name, name)
    if name not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}: known corpora are {', '.join(sorted(CORPORA))} (or 'emotion2vec' for labels already in the taxonomy)")
    return CORPORA[name]


def normalise_labels(corpus: str, labels: list[str]) -> Normalised:
    """Each corpus label as a taxonomy label (None: no counterpart, counted); unknown labels raise ValueError."""
    table = _IDENTITY if corpus.strip().lower() == "emotion2vec" else corpus_table(corpus)
    out: list[str | None] = []
    dropped: Counter = Counter()
    for label in labels:
        key = str(label).strip().lower()
        if key not in table:
            raise ValueError(f"corpus {corpus!r}: unknown emotion label {label!r} (known: {', '.join(sorted(table))})")
        out.append(table[key])
        if table[key] is None:
            dropped[key] += 1
    return Normalised(out, dict(sorted(dropped.items())))


_IDENTITY = {label: label for label in EMOTION_LABELS}
