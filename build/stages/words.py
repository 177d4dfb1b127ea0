"""Stage 9, word join: every word takes the emotion and the gender of the windows it is spoken in.

``tag_words`` is a batched map over condensed segment rows. Input columns: ``words`` (stage 8:
``{word, start, end, score}``, seconds in the recording), ``emotion_windows`` and ``gender_windows``
(stage 7, ``schema.CONDENSED_SEGMENT``). Output column, and only this: ``tagged_words``, the same
words in the same order as ``{word, start, end, score, emotion, gender}`` (and ``speaker`` as stage 8
gave it, when the words have one: diarization).

Rule for a timed word, applied separately to the emotion windows and to the gender windows:

- it takes the label of the window it overlaps the most in time; on an exact tie, the earlier
  window (earlier start, then earlier in the list);
- a word that overlaps no window (it lies in a gap, before the first or after the last window, or
  lasts no time at all) takes the nearest window, measured from the word's edge to the window's
  edge; again the earlier window on a tie. A zero-length word inside a window is at distance 0
  from it, so it takes that window.

Rule for an untimed word (start or end null: WhisperX cannot time digits and symbols): it keeps its
place and null times, and takes the labels of the nearest timed word before it, or, when none
precedes it, of the nearest timed word after it. When no word of the segment is timed, or there is
no window, the labels are null.
"""

from __future__ import annotations


def _overlap(start: float, end: float, window: dict) -> float:
    return min(end, window["end"]) - max(start, window["start"])


def _gap(start: float, end: float, window: dict) -> float:
    return max(window["start"] - end, start - window["end"], 0.0)


def label_for_span(start: float, end: float, windows: list[dict], key: str):
    """The ``key`` label of the window that overlaps ``[start, end]`` the most, else of the nearest window."""
    if not windows:
        return None
    # Earlier windows first, so max()/min() keep the earlier one on a tie.
    ordered = sorted(windows, key=lambda w: w["start"])
    best = max(ordered, key=lambda w: _overlap(start, end, w))
    if _overlap(start, end, best) <= 0:
        best = min(ordered, key=lambda w: _gap(start, end, w))
    return best[key]


def _is_timed(word: dict) -> bool:
    return word.get("start") is not None and word.get("end") is not None


def _labels_of_timed_words(words: list[dict], emotion_windows: list[dict], gender_windows: list[dict]) -> list[tuple | None]:
    return [
        (label_for_span(w["start"], w["end"], emotion_windows, "emotion"), label_for_span(w["start"], w["end"], gender_windows, "gender"))
        if _is_timed(w)
        else None
        for w in words
    ]


def _fill_untimed(labels: list[tuple | None]) -> list[tuple]:
    """An untimed word borrows from the nearest timed word before it, else from the first one after."""
    first_timed = next((pair for pair in labels if pair is not None), (None, None))
    filled, previous = [], None
    for pair in labels:
        if pair is not None:
            previous = pair
        filled.append(pair if pair is not None else previous or first_timed)
    return filled


def tag_segment_words(words: list[dict], emotion_windows: list[dict], gender_windows: list[dict]) -> list[dict]:
    labels = _fill_untimed(_labels_of_timed_words(words, emotion_windows or [], gender_windows or []))
    return [
        {"word": w["word"], "start": w.get("start"), "end": w.get("end"), "score": w.get("score"), **({"speaker": w["speaker"]} if "speaker" in w else {}), "emotion": emotion, "gender": gender}
        for w, (emotion, gender) in zip(words, labels)
    ]


def tag_words(batch: dict[str, list]) -> dict[str, list]:
    return {
        "tagged_words": [
            tag_segment_words(words or [], emotions, genders)
            for words, emotions, genders in zip(batch["words"], batch["emotion_windows"], batch["gender_windows"])
        ]
    }
