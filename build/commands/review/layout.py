"""The review page's components (``Page``, built inside a ``gr.Blocks``), each with an ``elem_id``
(``cpqa-...``) that the keyboard shortcuts and the browser tests use. Untrusted text only ever reaches
the page as the value of a text box or through ``render`` (escaped HTML)."""

from __future__ import annotations

import gradio as gr

from ...core.schema import EMOTION_LABELS, GENDER_LABELS
from ...models.categories import CATEGORIES
from .page import GUIDELINES, PLAYER_JS
from .store import REJECT_REASONS, STRATEGIES


class Page:
    """The page's components (created inside a ``gr.Blocks``)."""

    def __init__(self, named_by_login: bool):
        self.who, self.at = gr.State(""), gr.State(-1)
        with gr.Row():
            self.name = gr.Textbox(
                label="Your name (recorded with every action)",
                elem_id="cpqa-name",
                scale=3,
                interactive=not named_by_login,
            )
            self.start = gr.Button("Start", elem_id="cpqa-start", scale=1)
        self.progress = gr.HTML(elem_id="cpqa-progress-box")
        with gr.Accordion("Guidelines (g)", open=False, elem_id="cpqa-guidelines"):
            gr.Markdown(GUIDELINES)
        with gr.Row():
            self.prev = gr.Button("◀ Previous (p)", elem_id="cpqa-prev")
            self.jump = gr.Dropdown(label="Clip", choices=[], elem_id="cpqa-jump", scale=3)
            self.next = gr.Button("Next in my queue (n) ▶", elem_id="cpqa-next")
        self.status = gr.HTML(elem_id="cpqa-status")
        with gr.Row():
            with gr.Column(scale=5):
                self.clip = gr.HTML(elem_id="cpqa-clip-box", js_on_load=PLAYER_JS)
                self._labels()
                self._empathy()
            with gr.Column(scale=6):
                self._pairs()
                self._human()

    def _labels(self) -> None:
        gr.Markdown("### Labels: is this what you hear?")
        self.labels = gr.HTML(elem_id="cpqa-labels-box")
        with gr.Row():
            self.check = gr.Radio(["yes", "no"], label="Label check", elem_id="cpqa-check")
            self.heard_emotion = gr.Dropdown(
                list(EMOTION_LABELS), label="if no: emotion heard", elem_id="cpqa-heard-emotion"
            )
            self.heard_gender = gr.Dropdown(
                list(GENDER_LABELS), label="if no: gender heard", elem_id="cpqa-heard-gender"
            )
        self.check_save = gr.Button("Save label check", elem_id="cpqa-check-save")

    def _pairs(self) -> None:
        gr.Markdown("### The LLM's pairs")
        self.pair_list = gr.HTML(elem_id="cpqa-pairs-box")
        self.pick = gr.Radio([], label="Selected pair", elem_id="cpqa-pick")
        self.question = gr.Textbox(label="Question (edit here)", elem_id="cpqa-question")
        with gr.Row():
            self.answer = gr.Textbox(label="Answer (edit here)", elem_id="cpqa-answer", scale=3)
            self.category = gr.Dropdown(list(CATEGORIES), label="Category", elem_id="cpqa-category", scale=2)
        with gr.Row():
            self.accept = gr.Button("Accept (a)", variant="primary", elem_id="cpqa-accept")
            self.edit = gr.Button("Save edit (e)", elem_id="cpqa-edit")
            self.reject = gr.Button("Reject (r)", variant="stop", elem_id="cpqa-reject")
        self.reason = gr.Radio(list(REJECT_REASONS), label="Reject reason (1-7)", elem_id="cpqa-reason")
        self.note = gr.Textbox(label="Note (needed for 'other')", elem_id="cpqa-note")

    def _human(self) -> None:
        gr.Markdown("### Write a pair (the human set)")
        self.h_question = gr.Textbox(label="Question", elem_id="cpqa-h-question")
        with gr.Row():
            self.h_answer = gr.Textbox(label="Answer", elem_id="cpqa-h-answer", scale=3)
            self.h_category = gr.Dropdown(
                list(CATEGORIES), label="Category (Table 1)", elem_id="cpqa-h-category", scale=2
            )
        self.h_add = gr.Button("Add pair", elem_id="cpqa-h-add")
        self.h_list = gr.HTML(elem_id="cpqa-h-list-box")
        with gr.Row():
            self.h_pick = gr.Dropdown([], label="Withdraw one of your pairs", elem_id="cpqa-h-pick", scale=3)
            self.h_withdraw = gr.Button("Withdraw", elem_id="cpqa-h-withdraw")

    def _empathy(self) -> None:
        gr.Markdown("### Empathy sample")
        self.empathy = gr.HTML(elem_id="cpqa-empathy-box")
        with gr.Row():
            self.e_response = gr.Textbox(label="Response (edit here)", elem_id="cpqa-e-response", scale=3)
            self.e_strategy = gr.Dropdown(list(STRATEGIES), label="Strategy", elem_id="cpqa-e-strategy")
        with gr.Row():
            self.e_accept = gr.Button("Accept sample", elem_id="cpqa-e-accept")
            self.e_edit = gr.Button("Save edit", elem_id="cpqa-e-edit")
            self.e_reject = gr.Button("Reject sample", elem_id="cpqa-e-reject")
        with gr.Row():
            self.e_reason = gr.Dropdown(list(REJECT_REASONS), label="Reject reason", elem_id="cpqa-e-reason")
            self.e_note = gr.Textbox(label="Note", elem_id="cpqa-e-note")

    def views(self) -> list:
        """Every component a handler may update (``View.show``'s keys)."""
        return [
            self.who,
            self.at,
            self.name,
            self.progress,
            self.jump,
            self.status,
            self.clip,
            self.labels,
            self.check,
            self.heard_emotion,
            self.heard_gender,
            self.pair_list,
            self.pick,
            self.question,
            self.answer,
            self.category,
            self.reason,
            self.note,
            self.h_question,
            self.h_answer,
            self.h_category,
            self.h_list,
            self.h_pick,
            self.empathy,
            self.e_response,
            self.e_strategy,
            self.e_reason,
            self.e_note,
        ]
