"""The review page's fixed parts: the guidelines, its CSS and its JavaScript (this project's own text only).

``PLAYER_JS`` runs once when the clip box loads (Gradio's ``js_on_load``, ``element`` = the box): a
click on a timed word plays the clip from the word's start, a click on the waveform seeks there, and
the red cursor follows the playback. Listeners sit on the box, so they survive every new clip.

``KEYS_JS`` (in the page's head) maps keys pressed outside text fields to the page's buttons.
"""

from __future__ import annotations

from ...models.categories import CATEGORIES

GUIDELINES = f"""
**Categories (the paper's Table 1).**
- *{CATEGORIES[0]}*: the speaker's emotional state or feelings (the emotion in the voice, how it changes).
- *{CATEGORIES[1]}*: the speakers themselves: gender, how many people speak, who is speaking.
- *{CATEGORIES[2]}*: the cause of an emotion: why the speaker feels as they do.
- *{CATEGORIES[3]}*: everything else: what is said, topics, events, relations between the speakers.

**A good question** needs the recording: it is answered from what is said *and* how it is said; it
does not presuppose a transcript ("which word of the transcript ..."), does not repeat another
question of the clip, and its answer is short, correct and checkable by listening.

**Verdicts.** Accept a pair that is right as it is; edit one that is nearly right (the LLM's original
is kept); reject the rest with a reason: wrong answer, not answerable from the recording, presupposes
a transcript, duplicate, not about paralinguistics or content, garbled, other (write a note).

**Label check.** Listen, then say whether the primary emotion and the gender are what you hear; if
not, pick the emotion (one of the nine emotion2vec classes) and the gender you hear.

**Keys** (outside text boxes): `a` accept, `1`-`7` reject reason, `r` reject, `e` save edit, `n` next
clip, `p` previous clip, `space` play/pause, `g` these guidelines. Click a word to play from it.
"""

CSS = """
.cpqa-clip audio { width: 100%; }
.cpqa-wave { width: 100%; height: 60px; background: #fafafa; cursor: pointer; display: block; }
.cpqa-transcript { line-height: 2.1; margin: 6px 0; }
.cpqa-word { padding: 1px 2px; margin: 0 1px; border-radius: 3px; cursor: pointer; }
.cpqa-chip { padding: 0 4px; margin-right: 3px; font-size: 0.8em; border-radius: 3px; }
.cpqa-pairs { list-style: none; padding-left: 0; }
.cpqa-pair { margin-bottom: 6px; padding: 2px 4px; }
.cpqa-selected { outline: 2px solid #5c6bc0; border-radius: 4px; }
#cpqa-status .cpqa-error { color: #b71c1c; font-weight: bold; }
#cpqa-status .cpqa-saved { color: #1b5e20; }
"""

PLAYER_JS = """
const audio = () => element.querySelector('audio');
element.addEventListener('click', (event) => {
  const player = audio();
  if (!player) return;
  const word = event.target.closest('[data-start]');
  if (word) { player.currentTime = parseFloat(word.dataset.start); player.play(); return; }
  const wave = event.target.closest('svg.cpqa-wave');
  if (wave) {
    const box = wave.getBoundingClientRect();
    player.currentTime = (event.clientX - box.left) / box.width * parseFloat(wave.dataset.duration);
  }
});
element.addEventListener('timeupdate', (event) => {
  const wave = element.querySelector('svg.cpqa-wave');
  const cursor = wave && wave.querySelector('.cpqa-cursor');
  if (!cursor || !event.target.duration) return;
  const x = event.target.currentTime / event.target.duration * wave.viewBox.baseVal.width;
  cursor.setAttribute('x1', x); cursor.setAttribute('x2', x);
}, true);
"""

KEYS_JS = """
<script>
document.addEventListener('keydown', (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  const typing = ['INPUT', 'TEXTAREA', 'SELECT'].includes(target.tagName) || target.isContentEditable;
  if (target && typing) return;
  const click = (id) => {
    const b = document.getElementById(id);
    if (b) { b.click(); event.preventDefault(); }
  };
  const buttons = {a: 'cpqa-accept', r: 'cpqa-reject', e: 'cpqa-edit', n: 'cpqa-next', p: 'cpqa-prev'};
  if (buttons[event.key]) return click(buttons[event.key]);
  if (event.key === 'g') {
    const label = document.querySelector('#cpqa-guidelines button, #cpqa-guidelines .label-wrap');
    if (label) { label.click(); event.preventDefault(); }
    return;
  }
  if (event.key === ' ') {
    const player = document.getElementById('cpqa-audio');
    if (player) { player.paused ? player.play() : player.pause(); event.preventDefault(); }
    return;
  }
  if (/^[1-7]$/.test(event.key)) {
    const options = document.querySelectorAll('#cpqa-reason input[type=radio]');
    const option = options[parseInt(event.key) - 1];
    if (option) { option.click(); event.preventDefault(); }
  }
});
</script>
"""
