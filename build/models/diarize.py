"""Speakers: who speaks when (diarization), each word's speaker, and the diarization error rate.

A turn is ``{"speaker", "start", "end"}`` in seconds. Turns come from WhisperX's pyannote pipeline
(``diarize_audio``: the gated ``pyannote/speaker-diarization-3.1``, token from ``HF_TOKEN``) or from an
RTTM file (``read_rttm``); both go through the same ``join_speakers`` and ``error_rate``.

``join_speakers(words, turns)``: every timed word takes the speaker whose turns overlap it the most in
total (WhisperX's ``assign_word_speakers`` rule; an exact tie, such as a back-channel wholly inside
another speaker's turn, goes to whichever pandas sorts first); a timed word that overlaps no turn has
no speaker (null). An untimed word (null times) takes the speaker of the nearest timed word before it, else after
it (the rule of ``build.stages.words`` for labels). Words keep their order, times and other fields.

``error_rate(reference, hypothesis)``: pyannote.metrics' diarization error rate (optimal speaker
mapping, no collar, overlaps scored) with its components in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.devices import cached

DIARIZATION_MODEL = "pyannote/speaker-diarization-3.1"
TOKEN_ENV = "HF_TOKEN"


def read_rttm(path: str | Path) -> list[dict]:
    """The ``SPEAKER`` lines of an RTTM file as turns, in file order."""
    turns = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] != "SPEAKER":
            continue
        try:
            start, duration = float(fields[3]), float(fields[4])
            speaker = fields[7]
        except (IndexError, ValueError) as exc:
            raise ValueError(f"{path}:{n}: not an RTTM SPEAKER line (type file channel onset duration <NA> <NA> speaker ...): {line!r}") from exc
        turns.append({"speaker": speaker, "start": start, "end": round(start + duration, 6)})
    return turns


def join_speakers(words: list[dict], turns: list[dict]) -> list[dict]:
    """``words`` with a ``speaker`` each (see the module docstring)."""
    import pandas as pd
    from whisperx.diarize import assign_word_speakers

    timed = [i for i, w in enumerate(words) if w.get("start") is not None and w.get("end") is not None]
    speakers: list[str | None] = [None] * len(words)
    if turns and timed:
        table = pd.DataFrame(turns, columns=["speaker", "start", "end"])
        probe = [{"start": words[i]["start"], "end": words[i]["end"]} for i in timed]
        joined = assign_word_speakers(table, {"segments": [{"start": probe[0]["start"], "end": probe[-1]["end"], "words": probe}]})
        for i, word in zip(timed, joined["segments"][0]["words"]):
            speakers[i] = word.get("speaker")
    timed_set = set(timed)
    first = next((speakers[i] for i in timed), None)
    previous, filled = None, []
    for i, speaker in enumerate(speakers):
        if i in timed_set:
            previous = speaker
            filled.append(speaker)
        else:
            filled.append(previous if previous is not None else first)
    return [{**w, "speaker": s} for w, s in zip(words, filled)]


def _annotation(turns: list[dict]):
    from pyannote.core import Annotation, Segment

    annotation = Annotation()
    for i, turn in enumerate(turns):
        annotation[Segment(turn["start"], turn["end"]), i] = turn["speaker"]
    return annotation


def error_rate(reference: list[dict], hypothesis: list[dict]) -> dict[str, float]:
    """DER of ``hypothesis`` against ``reference`` and its parts (seconds): missed, false alarm, confusion, total."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    parts = metric.compute_components(_annotation(reference), _annotation(hypothesis))
    total = parts["total"]
    der = (parts["missed detection"] + parts["false alarm"] + parts["confusion"]) / total if total else 0.0
    return {"der": der, "missed": parts["missed detection"], "false_alarm": parts["false alarm"], "confusion": parts["confusion"], "total": total}


def check_available(model: str = DIARIZATION_MODEL, token_env: str = TOKEN_ENV) -> str:
    """The Hub token for the gated diarization model; a clear error when it cannot be used (before any audio is read)."""
    token = os.environ.get(token_env)
    if not token and not Path(model).exists():
        raise RuntimeError(
            f"asr.diarize needs {model}, a gated model: accept its terms on huggingface.co/{model} "
            f"(and on pyannote/segmentation-3.0), then set {token_env} to a token of that account"
        )
    import importlib.util

    if importlib.util.find_spec("pyannote.audio") is None:
        raise RuntimeError("asr.diarize needs pyannote.audio; it comes with whisperx (requirements.txt)")
    return token or ""


def diarize_audio(audio, device: str, model: str = DIARIZATION_MODEL, token_env: str = TOKEN_ENV) -> list[dict]:
    """Turns of one clip (seconds from its start) from WhisperX's pyannote pipeline, loaded once per process."""
    from whisperx.diarize import DiarizationPipeline

    pipeline = cached(("diarize", model, device), lambda: DiarizationPipeline(model_name=model, use_auth_token=check_available(model, token_env), device=device))
    table = pipeline(audio)
    return [{"speaker": s, "start": float(a), "end": float(b)} for s, a, b in zip(table["speaker"], table["start"], table["end"])]
