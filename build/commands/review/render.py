"""HTML of the review page's read-only parts. Every text from the data (transcripts, words, LLM replies,
names) goes through ``esc``: HTML-escaped, and the characters a template engine could read
(``{`` ``}`` ``$`` backtick) as entities, so ``<img src=x onerror=alert(1)>`` shows as those characters.

``clip_html``: the audio player, the waveform (min/max envelope as an SVG path; a click seeks), and the
transcript with one ``span`` per word: background colour = the word's emotion, underline = its gender,
tooltip = both and its clip-relative times; a timed word carries ``data-start`` (a click plays from it).
"""

from __future__ import annotations

import html

import numpy as np
import soundfile as sf

from ...core.schema import EMOTION_LABELS
from .folder import Clip, EmpathySample, Pair
from .store import ACCEPT, EDIT, NO, REJECT, Action

EMOTION_COLOURS = {
    "angry": "#f4a3a3",
    "disgusted": "#c9b3e6",
    "fearful": "#f7d08a",
    "happy": "#b9e8a6",
    "neutral": "#e4e4e4",
    "other": "#cfe3f3",
    "sad": "#a9c8f0",
    "surprised": "#f9c4e4",
    "unknown": "#f5f5f5",
}
GENDER_LINES = {"female": "#c2185b", "male": "#1565c0"}
WAVE_POINTS = 400
WAVE_HEIGHT = 60


def esc(text: object) -> str:
    """Text safe as HTML content and attribute value, and inert in a template."""
    escaped = html.escape("" if text is None else str(text), quote=True)
    return escaped.replace("{", "&#123;").replace("}", "&#125;").replace("$", "&#36;").replace("`", "&#96;")


def _seconds(t: float | None) -> str:
    return "untimed" if t is None else f"{t:.2f}"


def word_span(word: dict) -> str:
    emotion, gender = word.get("emotion") or "unknown", word.get("gender")
    span = f"{_seconds(word.get('start'))}–{_seconds(word.get('end'))} s"
    tip = f"emotion: {emotion} · gender: {gender or 'none'} · {span}"
    style = f"background:{EMOTION_COLOURS.get(emotion, '#ffffff')};"
    if gender in GENDER_LINES:
        style += f"border-bottom:3px solid {GENDER_LINES[gender]};"
    start = f' data-start="{word["start"]:.3f}"' if word.get("start") is not None else ""
    text = esc(word.get("word", "").strip())
    return f'<span class="cpqa-word" style="{style}" title="{esc(tip)}"{start}>{text}</span>'


def waveform_path(path: str) -> str:
    """SVG path of the min/max envelope of the audio at ``path`` over ``WAVE_POINTS`` columns."""
    samples, _ = sf.read(path, dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    columns = np.array_split(mono, WAVE_POINTS) if len(mono) >= WAVE_POINTS else [mono]
    peak = max(float(np.abs(mono).max()) if len(mono) else 0.0, 1e-6)
    mid = WAVE_HEIGHT / 2
    parts = []
    for x, column in enumerate(columns):
        lo, hi = (float(column.min()), float(column.max())) if len(column) else (0.0, 0.0)
        parts.append(f"M{x} {mid - hi / peak * mid:.1f}V{mid - lo / peak * mid:.1f}")
    return "".join(parts)


def legend() -> str:
    chips = "".join(
        f'<span class="cpqa-chip" style="background:{EMOTION_COLOURS[e]}">{e}</span>' for e in EMOTION_LABELS
    )
    lines = "".join(
        f'<span class="cpqa-chip" style="border-bottom:3px solid {c}">{g}</span>'
        for g, c in GENDER_LINES.items()
    )
    return f'<div class="cpqa-legend">{chips} {lines}</div>'


def clip_html(clip: Clip, audio_url: str, wave: str, position: str) -> str:
    words = " ".join(word_span(w) for w in clip.words) or esc(clip.transcript) or "<em>(no transcript)</em>"
    head = (
        f"{position} · split {clip.split} · {clip.duration:.2f} s · "
        f"from {clip.source_file} at {clip.clip_start:.2f} s"
    )
    box = f"0 0 {WAVE_POINTS} {WAVE_HEIGHT}"
    return (
        f'<div class="cpqa-clip" data-segment="{esc(clip.segment_id)}" data-duration="{clip.duration:.3f}">'
        f'<div class="cpqa-clip-head"><b>{esc(clip.segment_id)}</b> · {esc(head)}</div>'
        f'<audio id="cpqa-audio" controls preload="auto" src="{esc(audio_url)}"></audio>'
        f'<svg class="cpqa-wave" viewBox="{box}" preserveAspectRatio="none" '
        f'data-duration="{clip.duration:.3f}">'
        f'<path d="{wave}" stroke="#5c6bc0" stroke-width="1" fill="none"/>'
        f'<line class="cpqa-cursor" x1="0" x2="0" y1="0" y2="{WAVE_HEIGHT}" stroke="#d32f2f" '
        'stroke-width="2"/>'
        f'</svg><div class="cpqa-transcript" id="cpqa-transcript">{words}</div>{legend()}</div>'
    )


def labels_html(clip: Clip, mine: Action | None) -> str:
    check = "not answered yet"
    if mine is not None:
        check = (
            "yes, that is what I hear" if mine.verdict != NO else f"no: I hear {mine.emotion}, {mine.gender}"
        )
    emotions = ", ".join(clip.emotions) or "(none)"
    return (
        f'<div class="cpqa-labels">Primary emotion: <b>{esc(clip.primary_emotion or "(none)")}</b>'
        f" · all emotions: {esc(emotions)} · gender: <b>{esc(clip.gender or '(none)')}</b>"
        f'<br>Your label check: <span id="cpqa-label-status">{esc(check)}</span></div>'
    )


def verdict_text(action: Action | None) -> str:
    if action is None:
        return "undecided"
    if action.verdict == REJECT:
        return f"rejected ({action.reason}{': ' + action.note if action.note else ''})"
    return {ACCEPT: "accepted", EDIT: "edited"}[action.verdict]


def pair_item(n: int, pair: Pair, action: Action | None, others: int, selected: bool) -> str:
    edit = ""
    if action is not None and action.verdict == EDIT:
        edited = f"edited to: Q: {action.question} A: {action.answer} [{action.category}]"
        edit = f'<div class="cpqa-edit">{esc(edited)}</div>'
    return (
        f'<li class="cpqa-pair{" cpqa-selected" if selected else ""}" data-qid="{esc(pair.question_id)}">'
        f'<b>{n}.</b> <span class="cpqa-q">Q: {esc(pair.question)}</span><br>'
        f'<span class="cpqa-a">A: {esc(pair.answer)}</span> <i>[{esc(pair.category)}]</i><br>'
        f'<span class="cpqa-verdict">you: {esc(verdict_text(action))}</span> · others: {others}{edit}</li>'
    )


def pairs_html(
    pairs: list[Pair], mine: dict[str, Action], others: dict[str, int], selected: str | None
) -> str:
    """Every LLM pair of the clip with this annotator's verdict (and edit), and how many others decided it."""
    if not pairs:
        return "<p>(no LLM pair on this clip)</p>"
    items = [
        pair_item(n, p, mine.get(p.question_id), others.get(p.question_id, 0), p.question_id == selected)
        for n, p in enumerate(pairs, 1)
    ]
    return f'<ul class="cpqa-pairs" id="cpqa-pairs">{"".join(items)}</ul>'


def human_html(actions: list[Action], pair_id) -> str:
    if not actions:
        return '<p id="cpqa-human-list">(you have written no pair for this clip)</p>'
    items = "".join(
        f'<li data-id="{esc(pair_id(a))}">Q: {esc(a.question)}<br>'
        f"A: {esc(a.answer)} <i>[{esc(a.category)}]</i></li>"
        for a in actions
    )
    return f'<ul id="cpqa-human-list">{items}</ul>'


def empathy_html(sample: EmpathySample | None, mine: Action | None) -> str:
    if sample is None:
        return "<p>(no empathy sample for this clip)</p>"
    context = "".join(f"<li>{esc(t.get('speaker'))}: {esc(t.get('text'))}</li>" for t in sample.context)
    edit = ""
    if mine is not None and mine.verdict == EDIT:
        edit = f"<br>edited to: [{esc(mine.strategy)}] {esc(mine.answer)}"
    emotions = ", ".join(e for e in (sample.primary, sample.secondary) if e)
    target = f"Target ({_seconds(sample.target_start)}–{_seconds(sample.target_end)} s; {emotions}): "
    return (
        f'<div class="cpqa-empathy" id="cpqa-empathy"><ul>{context}</ul>{esc(target)}'
        f"<q>{esc(sample.target_text)}</q><br>Strategy: <b>{esc(sample.strategy)}</b>"
        f"<br>Response: {esc(sample.response)}"
        f'<br><span class="cpqa-verdict">you: {esc(verdict_text(mine))}</span>{edit}</div>'
    )


def progress_html(annotator: str, progress: dict[str, int], overlap: int) -> str:
    return (
        f'<div id="cpqa-progress"><b>{esc(annotator)}</b>: '
        f"{progress['mine']} of {progress['total']} clips done · "
        f"all annotators: {progress['complete']} of {progress['total']} clips complete "
        f"({progress['started']} done by at least one; overlap {overlap})</div>"
    )
