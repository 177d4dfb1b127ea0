"""The review app: what each button does, and the page after it (Gradio Blocks over ``layout.Page``).

Every button that decides something calls ``Review.act``, which commits the action to SQLite before
the handler returns; the page then shows the state re-read from the log, so what the page says is
done is on disk. A refused action (a reject without a reason, a name not typed) shows why in the
status line and writes nothing. Deciding never reloads the clip's player (the audio keeps playing).

The annotator is the logged-in user when the server runs with ``--auth``, else the name typed in the
page, or ``?annotator=NAME`` in the URL (``&clip=SEGMENT_ID`` opens that clip).
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from . import render
from .layout import Page
from .session import Review
from .store import ACCEPT, EDIT, EMPATHY, HUMAN, LABEL, NO, PAIR, REJECT, WITHDRAW, Action, human_pair_id


def audio_url(path: Path) -> str:
    """Where Gradio serves a file of ``allowed_paths`` (byte ranges included, so the player can seek)."""
    return f"/gradio_api/file={path.resolve()}"


class App:
    def __init__(self, review: Review, named_by_login: bool = False):
        self.review, self.named_by_login = review, named_by_login
        self.waves: dict[int, str] = {}

    # --- what the page shows ----------------------------------------------------------------------

    def show(
        self, page: Page, who: str, at: int, status: str = "", selected: str | None = None, clip: bool = True
    ) -> dict:
        """Every component's value for annotator ``who`` on clip ``at``; ``clip`` False keeps the player."""
        state = self.review.state()
        out = {page.who: who, page.at: at, page.status: status}
        if not who or not 0 <= at < len(self.review.build.clips):
            return out
        c = self.review.build.clips[at]
        n = len(self.review.build.clips)
        if clip:
            out[page.clip] = render.clip_html(
                c, audio_url(self.review.build.audio_path(c)), self.wave(c), f"clip {at + 1} of {n}"
            )
        out[page.progress] = render.progress_html(
            who, state.progress(who, self.review.overlap), self.review.overlap
        )
        done = {x.segment_id for x in self.review.build.clips if state.done(x, who)}
        out[page.jump] = gr.update(
            choices=[
                (f"{i + 1}/{n} {x.segment_id}{' ✓' if x.segment_id in done else ''}", x.segment_id)
                for i, x in enumerate(self.review.build.clips)
            ],
            value=c.segment_id,
        )
        out.update(self._labels(page, state, c, who))
        out.update(self._pairs(page, state, c, who, selected))
        out.update(self._human(page, state, c, who))
        out.update(self._empathy(page, state, c, who))
        return out

    def wave(self, clip) -> str:
        if clip.index not in self.waves:
            self.waves[clip.index] = render.waveform_path(str(self.review.build.audio_path(clip)))
        return self.waves[clip.index]

    def _labels(self, page: Page, state, clip, who: str) -> dict:
        mine = state.labels.get(clip.segment_id, {}).get(who)
        no = mine is not None and mine.verdict == NO
        return {
            page.labels: render.labels_html(clip, mine),
            page.check: mine.verdict if mine else None,
            page.heard_emotion: mine.emotion if no else None,
            page.heard_gender: mine.gender if no else None,
        }

    def _pairs(self, page: Page, state, clip, who: str, selected: str | None) -> dict:
        pairs = self.review.build.pairs_of(clip.segment_id)
        mine = {
            p.question_id: state.pairs[p.question_id][who]
            for p in pairs
            if who in state.pairs.get(p.question_id, {})
        }
        others = {p.question_id: len(set(state.pairs.get(p.question_id, {})) - {who}) for p in pairs}
        ids = [p.question_id for p in pairs]
        if selected not in ids:
            selected = next((q for q in ids if q not in mine), ids[0] if ids else None)
        pair = self.review.build.pairs.get(selected) if selected else None
        edit = mine.get(selected) if selected in mine and mine[selected].verdict == EDIT else None
        choices = [(f"{i}. {render.verdict_text(mine.get(q))}", q) for i, q in enumerate(ids, 1)]
        return {
            page.pair_list: render.pairs_html(pairs, mine, others, selected),
            page.pick: gr.update(choices=choices, value=selected),
            page.question: (edit or pair).question if pair else "",
            page.answer: (edit or pair).answer if pair else "",
            page.category: (edit or pair).category if pair else None,
            page.reason: None,
            page.note: "",
        }

    def _human(self, page: Page, state, clip, who: str) -> dict:
        mine = [a for a in state.human if a.annotator == who and a.segment_id == clip.segment_id]
        choices = [(f"{a.question[:60]}", human_pair_id(a)) for a in mine]
        return {
            page.h_list: render.human_html(mine, human_pair_id),
            page.h_pick: gr.update(choices=choices, value=None),
        }

    def _empathy(self, page: Page, state, clip, who: str) -> dict:
        sample = self.review.build.empathy.get(clip.segment_id)
        mine = state.empathy.get(sample.id, {}).get(who) if sample else None
        edit = mine if mine is not None and mine.verdict == EDIT else None
        return {
            page.empathy: render.empathy_html(sample, mine),
            page.e_response: (edit.answer if edit else sample.response) if sample else "",
            page.e_strategy: (edit.strategy if edit else sample.strategy) if sample else None,
            page.e_reason: None,
            page.e_note: "",
        }

    # --- what the buttons do ----------------------------------------------------------------------

    def act(
        self, page: Page, who: str, at: int, selected: str | None = None, advance: bool = False, **fields
    ) -> dict:
        """Commit one action on clip ``at``; the page after it (or the refusal in the status line)."""
        if not who:
            return {page.status: _error("Type your name and press Start first.")}
        clip = self.review.build.clips[at]
        try:
            done = self.review.act(Action(annotator=who, segment_id=clip.segment_id, **fields))
        except ValueError as error:
            return {page.status: _error(str(error))}
        if advance:  # after a verdict on a pair, select the next one still undecided
            selected = None
        saved = f"Saved #{done.id}: {_describe(done)} ({who}, {done.at})"
        status = f'<span class="cpqa-saved">{render.esc(saved)}</span>'
        return self.show(page, who, at, status, selected, clip=False)

    def start(
        self, page: Page, name: str, at: int, request: gr.Request | None = None, clip_id: str | None = None
    ) -> dict:
        who = self.login(request) or (name or "").strip()
        if not who:
            return {page.status: _error("Type your name and press Start first.")}
        chosen = self.review.build.clip(clip_id) if clip_id else None
        if chosen is None:
            nxt = self.review.state().next_clip(who, self.review.overlap)
            chosen = nxt if nxt is not None else self.review.build.clips[max(at, 0)]
        status = (
            ""
            if not self.review.build.left_out
            else _error(f"left out (source missing or changed): {self.left_out()}")
        )
        return {page.name: who, **self.show(page, who, chosen.index, status)}

    def login(self, request: gr.Request | None) -> str | None:
        return getattr(request, "username", None) if self.named_by_login and request is not None else None

    def left_out(self) -> str:
        return ", ".join(f"{name} ({n} clips)" for name, n in sorted(self.review.build.left_out.items()))

    def load(self, page: Page, request: gr.Request) -> dict:
        params = dict(request.query_params) if request is not None else {}
        if not (self.login(request) or params.get("annotator")):
            return {page.status: "Type your name and press Start."}
        return self.start(page, params.get("annotator", ""), 0, request, params.get("clip"))

    def move(self, page: Page, who: str, at: int, step: str, target: str | None = None) -> dict:
        if not who:
            return {page.status: _error("Type your name and press Start first.")}
        n = len(self.review.build.clips)
        if step == "next":
            nxt = self.review.state().next_clip(who, self.review.overlap, after=at)
            if nxt is None:
                return self.show(
                    page, who, at, "Your queue is empty: every clip you can take is done.", clip=False
                )
            at = nxt.index
        elif step == "prev":
            at = (at - 1) % n
        else:
            chosen = self.review.build.clip(target or "")
            if chosen is None or chosen.index == at:
                return {}
            at = chosen.index
        return self.show(page, who, at)


def _error(text: str) -> str:
    return f'<span class="cpqa-error">{render.esc(text)}</span>'


def _describe(action: Action) -> str:
    what = {
        PAIR: f"pair {action.target}",
        EMPATHY: "empathy sample",
        LABEL: "label check",
        HUMAN: "your pair",
        WITHDRAW: f"withdrew {action.target}",
    }
    verdict = {
        ACCEPT: "accepted",
        EDIT: "edited",
        REJECT: f"rejected ({action.reason})",
        "yes": "yes",
        NO: f"no: {action.emotion}, {action.gender}",
    }
    return (
        f"{what[action.kind]}: {verdict.get(action.verdict, 'added')}"
        if action.kind != WITHDRAW
        else what[WITHDRAW]
    )


def make_blocks(review: Review, named_by_login: bool = False) -> gr.Blocks:
    """The review page over ``review``; ``named_by_login``: the annotator is the ``--auth`` user."""
    app = App(review, named_by_login)
    with gr.Blocks(title=f"cpqa review: {review.build.out.name}") as blocks:
        build = review.build
        title = f"cpqa review · {build.out.name} · {len(build.clips)} clips · overlap {review.overlap}"
        gr.HTML(f"<h2>{render.esc(title)}</h2>")
        page = Page(named_by_login)
        _wire(app, page, blocks)
    return blocks


def _wire(app: App, page: Page, blocks: gr.Blocks) -> None:
    views, ws = page.views(), [page.who, page.at, page.pick]

    def on_load(request: gr.Request):
        return app.load(page, request)

    def on_start(name, at, request: gr.Request):
        return app.start(page, name, at, request)

    blocks.load(on_load, None, views)
    page.start.click(on_start, [page.name, page.at], views)
    page.name.submit(on_start, [page.name, page.at], views)
    page.next.click(lambda w, a, q: app.move(page, w, a, "next"), ws, views)
    page.prev.click(lambda w, a, q: app.move(page, w, a, "prev"), ws, views)
    page.jump.input(lambda w, a, q, t: app.move(page, w, a, "jump", t), ws + [page.jump], views)
    page.pick.input(lambda w, a, q: app.show(page, w, a, selected=q, clip=False), ws, views)
    decisions = [  # button, what it records, the inputs it records them from
        (page.accept, {"kind": PAIR, "verdict": ACCEPT}, {}),
        (page.edit, {"kind": PAIR, "verdict": EDIT}, {"question": page.question, "answer": page.answer,
                                                      "category": page.category}),
        (page.reject, {"kind": PAIR, "verdict": REJECT}, {"reason": page.reason, "note": page.note}),
        (page.check_save, {"kind": LABEL}, {"verdict": page.check, "emotion": page.heard_emotion,
                                            "gender": page.heard_gender}),
        (page.h_add, {"kind": HUMAN}, {"question": page.h_question, "answer": page.h_answer,
                                       "category": page.h_category}),
        (page.h_withdraw, {"kind": WITHDRAW}, {"target": page.h_pick}),
        (page.e_accept, {"kind": EMPATHY, "verdict": ACCEPT}, {}),
        (page.e_edit, {"kind": EMPATHY, "verdict": EDIT}, {"answer": page.e_response,
                                                           "strategy": page.e_strategy}),
        (page.e_reject, {"kind": EMPATHY, "verdict": REJECT}, {"reason": page.e_reason, "note": page.e_note}),
    ]  # fmt: skip
    for button, fixed, inputs in decisions:
        button.click(_decision(app, page, fixed, tuple(inputs)), ws + list(inputs.values()), views)


def _decision(app: App, page: Page, fixed: dict, names: tuple[str, ...]):
    """The handler of one decision button: (who, clip, selected pair, *inputs) -> the page after the action.
    A pair verdict targets the selected pair (and then selects the next undecided one), an empathy
    verdict the clip's sample; a human pair once saved clears the question and answer boxes."""

    def handler(who: str, at: int, pick: str | None, *values):
        fields = {**fixed, **dict(zip(names, values))}
        if fixed["kind"] == PAIR:
            fields["target"] = pick
        if fixed["kind"] == EMPATHY and at >= 0:
            sample = app.review.build.empathy.get(app.review.build.clips[at].segment_id)
            fields["target"] = sample.id if sample else None
        shown = app.act(page, who, at, pick, fixed["kind"] == PAIR, **fields)
        if fixed["kind"] == HUMAN and page.progress in shown:  # saved
            shown.update({page.h_question: "", page.h_answer: ""})
        return shown

    return handler
