"""The review's storage, derived state, agreement figures, import and export: actions in, configs out."""

import hashlib
import math
import shutil
import sqlite3

import pyarrow.parquet as pq
import pytest
from review_build import XSS, cached_review_build, write_review_build

from build.commands.review import agreement
from build.commands.review.export import SECTION_END, SECTION_START, export_review
from build.commands.review.folder import NotReviewable, open_build
from build.commands.review.imports import ImportErrors, import_pairs
from build.commands.review.session import Review
from build.commands.review.store import Action, Store, problem


@pytest.fixture
def out(tmp_path_factory, tmp_path):
    shutil.copytree(cached_review_build(tmp_path_factory), tmp_path / "out")
    return tmp_path / "out"


def act(review, annotator, segment_id, kind, **fields):
    return review.act(Action(annotator=annotator, segment_id=segment_id, kind=kind, **fields))


def build_hashes(out):
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((out / "data").glob("*/*.parquet"))
    }


# --- the log ------------------------------------------------------------------------------------------


def test_actions_are_committed_stamped_and_cannot_be_changed_or_deleted(out):
    store = Store(out)
    first = store.record(
        Action(
            annotator=" alice ",
            segment_id="ami-0000",
            kind="pair",
            target="ami-0000-q00",
            verdict="accept",
            question="ignored",
        )
    )
    assert (first.id, first.annotator, first.question, first.source) == (1, "alice", None, "app")
    assert first.at.endswith("+00:00") and len(first.at) == len("2026-01-01T00:00:00.000+00:00")
    with sqlite3.connect(store.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE actions SET verdict = 'reject'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM actions")
    assert [a.verdict for a in Store(out).actions()] == ["accept"]  # a second opening sees it


@pytest.mark.parametrize(
    "fields, why",
    [
        ({"annotator": " ", "kind": "pair", "target": "q", "verdict": "accept"}, "no annotator name"),
        (
            {"kind": "pair", "target": "q", "verdict": "reject"},
            "a reject needs a reason: wrong answer, not answerable from the recording, "
            "presupposes a transcript, duplicate, not about paralinguistics or content, garbled, other",
        ),
        (
            {"kind": "pair", "target": "q", "verdict": "reject", "reason": "other", "note": "  "},
            "reason 'other' needs a note",
        ),
        (
            {
                "kind": "pair",
                "target": "q",
                "verdict": "edit",
                "question": "",
                "answer": "a",
                "category": "other",
            },
            "the question is empty",
        ),
        (
            {
                "kind": "pair",
                "target": "q",
                "verdict": "edit",
                "question": "q",
                "answer": "a",
                "category": "mood",
            },
            "unknown category 'mood': one of emotion, speaker, contextual paralinguistic reasoning, other",
        ),
        ({"kind": "pair", "verdict": "accept"}, "a pair action needs a target"),
        (
            {"kind": "label", "verdict": "no", "gender": "male"},
            "say which emotion you hear: angry, disgusted, fearful, happy, neutral, other, sad, surprised, "
            "unknown",
        ),
        ({"kind": "label", "verdict": "no", "emotion": "sad"}, "say which gender you hear: female, male"),
        (
            {"kind": "empathy", "target": "e", "verdict": "edit", "answer": "x", "strategy": "hugging"},
            "unknown response strategy 'hugging'",
        ),
        ({"kind": "human", "question": "q", "answer": " ", "category": "other"}, "the answer is empty"),
    ],
)
def test_incomplete_actions_are_refused_with_the_reason(out, fields, why):
    action = Action(**{"annotator": "alice", "segment_id": "ami-0000", **fields})
    assert problem(action) == why
    with pytest.raises(ValueError, match="^" + __import__("re").escape(why) + "$"):
        Store(out).record(action)
    assert Store(out).actions() == []


def test_actions_must_name_this_builds_clip_pair_and_sample(out):
    review = Review.open(out)
    cases = [
        (Action("alice", "nope", "label", verdict="yes"), "unknown segment 'nope'"),
        (
            Action("alice", "ami-0000", "pair", target="ami-0001-q00", verdict="accept"),
            "no LLM pair 'ami-0001-q00' on clip ami-0000",
        ),
        (
            Action("alice", "ami-0001", "empathy", target="ami-0000-empathy", verdict="accept"),
            "no empathy sample 'ami-0000-empathy' on clip ami-0001",
        ),
    ]
    for action, why in cases:
        with pytest.raises(ValueError, match=f"^{why}$"):
            review.act(action)
    assert review.store.actions() == []


def test_latest_verdict_wins_and_only_the_author_withdraws_a_human_pair(out):
    review = Review.open(out)
    act(review, "alice", "ami-0000", "pair", target="ami-0000-q00", verdict="reject", reason="duplicate")
    act(review, "alice", "ami-0000", "pair", target="ami-0000-q00", verdict="accept")
    written = review.store.record(
        Action("alice", "ami-0000", "human", question="Q?", answer="A.", category="emotion")
    )
    pair_id = f"ami-0000-h{written.id:05d}"
    with pytest.raises(ValueError, match=f"^'{pair_id}' is not a pair bob wrote$"):
        act(review, "bob", "ami-0000", "withdraw", target=pair_id)
    state = review.state()
    assert state.pairs["ami-0000-q00"]["alice"].verdict == "accept" and len(state.human) == 1
    act(review, "alice", "ami-0000", "withdraw", target=pair_id)
    assert review.state().human == [] and len(review.store.actions()) == 4  # nothing deleted


def finish(review, annotator, segment_id, label="yes"):
    """Every verdict a clip needs from ``annotator``: accept its pairs and sample, answer its label check."""
    for pair in review.build.pairs_of(segment_id):
        act(review, annotator, segment_id, "pair", target=pair.question_id, verdict="accept")
    if segment_id in review.build.empathy:
        act(
            review,
            annotator,
            segment_id,
            "empathy",
            target=review.build.empathy[segment_id].id,
            verdict="accept",
        )
    act(
        review,
        annotator,
        segment_id,
        "label",
        verdict=label,
        **({} if label == "yes" else {"emotion": "sad", "gender": "male"}),
    )


def test_queues_progress_and_overlap(out):
    order = ["rav-0000", "ami-0000", "ami-0001"]  # segments shards in written order: test, then train
    one, two = Review(open_build(out), overlap=1), Review(open_build(out), overlap=2)
    assert [c.segment_id for c in one.build.clips] == order
    act(one, "alice", "ami-0000", "label", verdict="yes")  # alice starts ami-0000: not done yet
    state = one.state()
    assert [c.segment_id for c in state.queue("alice", 1)] == order
    assert [c.segment_id for c in state.queue("bob", 1)] == ["rav-0000", "ami-0001"]
    assert [c.segment_id for c in state.queue("bob", 2)] == order
    finish(one, "alice", "ami-0000")
    finish(two, "bob", "ami-0000")
    state = one.state()
    assert state.next_clip("alice", 1, after=0).segment_id == "ami-0001"
    assert state.next_clip("alice", 1, after=2).segment_id == "rav-0000"  # wraps round
    assert state.progress("alice", 1) == {"total": 3, "mine": 1, "complete": 1, "started": 1}
    assert state.progress("carol", 2) == {"total": 3, "mine": 0, "complete": 1, "started": 1}
    assert state.progress("carol", 3) == {"total": 3, "mine": 0, "complete": 0, "started": 1}


# --- agreement and precision against hand computations ------------------------------------------------


def test_cohen_kappa_matches_the_worked_example():
    # 50 items, two raters: yes/yes 20, yes/no 5, no/yes 10, no/no 15
    # p_o = 0.7, p_e = 0.5*0.6 + 0.5*0.4 = 0.5
    ratings = [["yes", "yes"]] * 20 + [["yes", "no"]] * 5 + [["no", "yes"]] * 10 + [["no", "no"]] * 15
    result = agreement.kappa("x", ratings)
    assert (result.method, result.items, result.raters) == ("Cohen", 50, 2)
    assert result.kappa == pytest.approx((0.7 - 0.5) / (1 - 0.5))


FLEISS_TABLE = [  # 10 subjects, 14 raters, 5 categories (Fleiss 1971's layout, the common worked example)
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_matches_the_worked_example():
    n, N = 14, len(FLEISS_TABLE)
    p_i = [(sum(c * c for c in row) - n) / (n * (n - 1)) for row in FLEISS_TABLE]
    p_j = [sum(row[j] for row in FLEISS_TABLE) / (N * n) for j in range(5)]
    p_bar, p_e = sum(p_i) / N, sum(p * p for p in p_j)
    by_hand = (p_bar - p_e) / (1 - p_e)
    assert round(by_hand, 3) == 0.210
    ratings = [[f"c{j}" for j, count in enumerate(row) for _ in range(count)] for row in FLEISS_TABLE]
    result = agreement.kappa("x", ratings)
    assert (result.method, result.items, result.raters) == ("Fleiss", 10, 14)
    assert result.kappa == pytest.approx(by_hand)


def test_kappa_needs_two_raters_and_is_undefined_when_all_agree_on_one_label():
    assert agreement.kappa("x", [["a"], ["b"]]) is None
    assert agreement.kappa("x", [["keep", "keep"], ["keep", "keep"]]).kappa is None
    # items rated three times where others twice: every item gives its first two ratings
    assert agreement.kappa("x", [["a", "a", "b"], ["b", "b"]]).raters == 2


def wilson_by_hand(k, n, z=1.959963984540054):
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def test_wilson_interval_matches_the_formula():
    for k, n in ((8, 10), (0, 3), (5, 5), (1, 1)):
        assert agreement.wilson(k, n) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)
    assert agreement.wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=5e-5)


def test_label_precision_and_agreement_from_two_annotators(out):
    review = Review.open(out, overlap=2)
    # alice: yes on all three; bob: no on ami-0000 (hears sad, female: gender still right), yes on the others
    for clip in ("rav-0000", "ami-0000", "ami-0001"):
        act(review, "alice", clip, "label", verdict="yes")
        act(
            review,
            "bob",
            clip,
            "label",
            verdict="no" if clip == "ami-0000" else "yes",
            **({"emotion": "sad", "gender": "female"} if clip == "ami-0000" else {}),
        )
    act(review, "alice", "ami-0000", "pair", target="ami-0000-q00", verdict="accept")
    act(review, "bob", "ami-0000", "pair", target="ami-0000-q00", verdict="reject", reason="wrong answer")
    act(
        review,
        "alice",
        "ami-0000",
        "pair",
        target="ami-0000-q01",
        verdict="edit",
        question="Q",
        answer="A",
        category="speaker",
    )
    act(review, "bob", "ami-0000", "pair", target="ami-0000-q01", verdict="accept")
    state = review.state()
    emotions, genders = agreement.label_precision(state)
    assert [(p.label, p.checks, p.correct) for p in emotions] == [
        ("fearful", 2, 2),
        ("happy", 2, 1),
        ("sad", 2, 2),
    ]
    assert [(p.label, p.checks, p.correct) for p in genders] == [("female", 2, 2), ("male", 4, 4)]
    assert (emotions[1].low, emotions[1].high) == pytest.approx(wilson_by_hand(1, 2))
    found = {k.what: k for k in agreement.agreements(state)}
    # pairs: (keep, reject), (keep, keep): p_o = 1/2, p_e = (1 * 1/2) + (0 * 1/2) = 1/2 -> kappa 0
    assert found["LLM pairs: keep or reject"].kappa == pytest.approx(0.0)
    # emotion heard: (fearful, fearful), (happy, sad), (sad, sad)
    # p_o = 2/3; p_e = (1/3)^2 + (1/3)(0) + (1/3)(2/3) = 1/3
    assert found["label check: emotion heard"].kappa == pytest.approx((2 / 3 - 1 / 3) / (1 - 1 / 3))
    assert found["label check: gender heard"].kappa == pytest.approx(1.0)


# --- export ---------------------------------------------------------------------------------------------


def rows_of(out, config):
    tables = {
        p.name.split("-")[0]: pq.read_table(
            p, columns=[c for c in pq.read_schema(p).names if c not in ("context", "audio")]
        )
        for p in sorted((out / "data" / config).glob("*.parquet"))
    }
    return {split: t.to_pylist() for split, t in tables.items()}


EXPORT_ACTIONS = [  # (annotator, clip, kind, fields)
    ("alice", "ami-0000", "pair", {"target": "ami-0000-q00", "verdict": "accept"}),
    ("alice", "ami-0000", "pair", {"target": "ami-0000-q01", "verdict": "edit", "question": " Man or woman? ",
                                   "answer": "A woman.", "category": "speaker"}),
    ("alice", "ami-0000", "pair", {"target": "ami-0000-q02", "verdict": "reject", "reason": "other",
                                   "note": "vague"}),
    ("alice", "rav-0000", "pair", {"target": "rav-0000-q00", "verdict": "accept"}),
    ("alice", "ami-0001", "human", {"question": XSS, "answer": "Tired.", "category": "emotion"}),
    ("bob", "rav-0000", "human", {"question": "Who speaks?", "answer": "One man.", "category": "speaker"}),
    ("alice", "ami-0000", "empathy", {"target": "ami-0000-empathy", "verdict": "edit", "answer": "Well done!",
                                      "strategy": "celebration"}),
    ("alice", "rav-0000", "empathy", {"target": "rav-0000-empathy", "verdict": "reject",
                                      "reason": "garbled"}),
]  # fmt: skip


@pytest.fixture
def exported(out):
    before = build_hashes(out)
    review = Review.open(out)
    for annotator, clip, kind, fields in EXPORT_ACTIONS:
        act(review, annotator, clip, kind, **fields)
    rows, section = export_review(review.state())
    return out, review, rows, section, before


def test_export_keeps_accepted_and_edited_llm_pairs_with_their_originals(exported):
    out, _, rows, section, _ = exported
    assert rows == {"qa_reviewed": 3, "qa_human": 2, "empathy_reviewed": 1}
    reviewed = rows_of(out, "qa_reviewed")
    got = [(r["question_id"], r["instruction"], r["answer"], r["category"], r["edited"], r["reviewed_by"])
           for r in reviewed["test"] + reviewed["train"]]  # fmt: skip
    assert got == [
        ("rav-0000-q00", "What is said about the dogs?", "They are by the door.", "other", False, ["alice"]),
        ("ami-0000-q00", "How does the speaker feel?", "Pleased.", "emotion", False, ["alice"]),
        ("ami-0000-q01", "Man or woman?", "A woman.", "speaker", True, ["alice"]),
    ]
    edited = reviewed["train"][1]
    assert (edited["original_instruction"], edited["original_answer"]) == (
        "Is the speaker a man or a woman?",
        "A woman.",
    )
    assert reviewed["train"][0]["original_instruction"] is None and edited["words"][0]["start"] == 1.0
    for line in (
        "| accepted | 2 |",
        "| edited | 1 |",
        "| rejected: other | 1 |",
        "| rejected (all reasons) | 1 |",
    ):
        assert line in section


def test_export_writes_human_pairs_with_their_clips_columns(exported):
    out, review, *_ = exported
    human = rows_of(out, "qa_human")
    ids = [a.id for a in review.store.actions() if a.kind == "human"]
    got = [(r["question_id"], r["instruction"], r["category"], r["reviewed_by"], r["llm_model"],
            r["segment_id"])
           for r in human["test"] + human["train"]]  # fmt: skip
    assert got == [
        (f"rav-0000-h{ids[1]:05d}", "Who speaks?", "speaker", ["bob"], None, "rav-0000"),
        (f"ami-0001-h{ids[0]:05d}", XSS, "emotion", ["alice"], None, "ami-0001"),
    ]
    word = {"word": "<script>x</script>", "start": 15.02, "end": 15.31, "score": 0.9, "speaker": None,
            "emotion": "sad", "gender": "male"}  # fmt: skip
    assert human["train"][0]["words"][2] == word  # clip-relative times, as in qa
    names = [
        pq.read_schema(out / "data" / c / "train-00000-of-00001.parquet").names
        for c in ("qa_human", "qa_reviewed")
    ]
    assert names[0] == names[1]


def test_export_writes_kept_empathy_samples_and_leaves_the_build_alone(exported):
    out, _, _, _, before = exported
    empathy = rows_of(out, "empathy_reviewed")["train"]
    got = [(e["id"], e["desired_response"]["text"], e["desired_response"]["response_strategy"],
            e["original_response"], e["edited"]) for e in empathy]  # fmt: skip
    assert got == [("ami-0000-empathy", "Well done!", "celebration", "That sounds hard <i>really</i>.", True)]
    after = build_hashes(out)
    assert {k: v for k, v in after.items() if k in before} == before  # the build's own tables untouched
    written = [("empathy_reviewed", "train"), ("qa_human", "test"), ("qa_human", "train"),
               ("qa_reviewed", "test"),
               ("qa_reviewed", "train")]  # fmt: skip
    assert sorted(set(after) - set(before)) == [f"data/{c}/{s}-00000-of-00001.parquet" for c, s in written]


def test_export_loads_with_datasets_and_the_card_lists_every_config(out):
    from datasets import load_dataset

    review = Review.open(out)
    act(review, "alice", "ami-0001", "human", question="Q1?", answer="A1.", category="other")
    act(review, "alice", "ami-0000", "pair", target="ami-0000-q00", verdict="accept")
    export_review(review.state())
    human = load_dataset(str(out), "qa_human", split="train")
    assert (
        human["instruction"] == ["Q1?"] and human[0]["context"].get_all_samples().data.shape[-1] == 30 * 16000
    )
    assert load_dataset(str(out), "qa_reviewed", split="train")["question_id"] == ["ami-0000-q00"]
    card = (out / "README.md").read_text()
    header = card.split("---")[1]
    for name in ("qa", "segments", "empathy", "qa_reviewed", "qa_human"):
        assert f"- config_name: {name}\n" in header.split("configs:")[1]
    assert "empathy_reviewed" not in header  # nothing kept: no config
    assert card.count(SECTION_START) == 1 and card.index("## Human review") > card.index("## Load it")


def test_export_again_replaces_the_section_and_gives_identical_files(out):
    review = Review.open(out)
    act(review, "alice", "ami-0000", "pair", target="ami-0000-q00", verdict="accept")
    export_review(review.state())
    first = build_hashes(out)
    card = (out / "README.md").read_text()
    export_review(review.state())
    assert build_hashes(out) == first and (out / "README.md").read_text() == card
    act(
        review, "bob", "ami-0000", "pair", target="ami-0000-q00", verdict="reject", reason="duplicate"
    )  # 1 keep, 1 reject: a tie rejects
    rows, _ = export_review(review.state())
    assert rows == {"qa_reviewed": 0, "qa_human": 0, "empathy_reviewed": 0}
    assert not (out / "data" / "qa_reviewed").exists()
    card = (out / "README.md").read_text()
    assert (
        card.count(SECTION_START) == card.count(SECTION_END) == 1
        and "qa_reviewed" not in card.split("---")[1]
    )


def test_majority_decides_and_the_latest_edit_of_the_keepers_gives_the_text(out):
    review = Review.open(out, overlap=3)
    target = dict(segment_id="ami-0000", kind="pair", target="ami-0000-q00")
    act(review, "alice", verdict="edit", question="Q alice", answer="A", category="emotion", **target)
    act(review, "bob", verdict="edit", question="Q bob", answer="A", category="emotion", **target)
    act(review, "carol", verdict="reject", reason="duplicate", **target)
    result = review.state().pair_finals()["ami-0000-q00"]
    assert (result.kept, result.edit.question, result.reviewed_by) == (
        True,
        "Q bob",
        ["alice", "bob", "carol"],
    )


# --- import ---------------------------------------------------------------------------------------------


def test_import_takes_every_row_or_none_with_one_line_per_bad_row(out, tmp_path):
    review = Review.open(out)
    bad = tmp_path / "pairs.csv"
    bad.write_text(
        "segment_id,question,answer,category,annotator\n"
        "ami-0000,How does she feel?,Happy.,emotion,carol\n"
        "ghost-0001,Q?,A.,emotion,carol\n"
        'ami-0001,"  ",A.,emotion,carol\n'
        "ami-0001,Q?,A.,mood,carol\n",
        encoding="utf-8",
    )
    with pytest.raises(ImportErrors) as caught:
        import_pairs(review, bad)
    assert caught.value.lines == [
        f"{bad}:3: unknown segment 'ghost-0001'",
        f"{bad}:4: empty question",
        f"{bad}:5: unknown category 'mood' (one of: emotion, speaker, contextual paralinguistic reasoning, "
        "other)",
    ]
    assert review.store.actions() == []
    good = tmp_path / "pairs.jsonl"
    good.write_text(
        '{"segment_id": "ami-0000", "question": "¿Cómo se siente?", "answer": "Feliz.", '
        '"category": "emotion", "annotator": "carol"}\n\n'
        '{"segment_id": "rav-0000", "question": "Q?", "answer": "A.", "category": "other", '
        '"annotator": "dan"}\n',
        encoding="utf-8",
    )
    assert import_pairs(review, good) == 2
    assert [(a.annotator, a.question, a.source) for a in review.state().human] == [
        ("carol", "¿Cómo se siente?", "import:pairs.jsonl"),
        ("dan", "Q?", "import:pairs.jsonl"),
    ]


def test_import_reports_unreadable_files_in_one_line(out, tmp_path):
    review = Review.open(out)
    cases = {
        "p.txt": (b"x", "{}: expected a .csv or .jsonl file"),
        "p.jsonl": (
            b'{"segment_id": "ami-0000"\n[1]\n',
            "{}:1: not JSON (Expecting ',' delimiter)\n"
            "{}:2: expected a JSON object with segment_id, question, answer, category, annotator",
        ),
        "q.csv": (
            b"segment_id,question\n",
            "{}:1: missing column(s) answer, category, annotator "
            "(need segment_id, question, answer, category, annotator)",
        ),
        "r.csv": (b"\xff\xfe\x00", "{}: not UTF-8 text (invalid start byte at byte 0)"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImportErrors) as caught:
            import_pairs(review, tmp_path / name)
        assert str(caught.value) == message.format(tmp_path / name, tmp_path / name)


# --- folders that cannot be reviewed -----------------------------------------------------------------------


def test_folders_that_are_not_reviewable_say_why_in_one_line(out, tmp_path):
    with pytest.raises(NotReviewable, match=f"^{tmp_path / 'none'}: no such folder$"):
        open_build(tmp_path / "none")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "README.md").write_text("# hello\n")
    with pytest.raises(NotReviewable, match="not a cpqa build"):
        open_build(tmp_path / "plain")
    shutil.rmtree(out / "data" / "qa")
    with pytest.raises(NotReviewable, match=r"has no qa config \(data/qa/\*\.parquet\): nothing to review$"):
        open_build(out)


def test_a_metadata_only_build_needs_the_sources_checked_by_sha256(tmp_path):
    from conftest import AMI

    out = write_review_build(tmp_path / "meta", publish="metadata-only")
    with pytest.raises(NotReviewable, match="a metadata-only build .*give --audio-root"):
        open_build(out)
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(AMI, copy / AMI.name)
    (copy / "ravdess_actor01.flac").write_bytes(b"changed")
    build = open_build(out, audio_root=copy)
    assert [c.segment_id for c in build.clips] == ["ami-0000", "ami-0001"]
    assert build.left_out == {"changed: ravdess_actor01.flac": 1}
    import soundfile as sf

    assert sf.info(str(build.audio_path(build.clips[1]))).frames == 30 * 16000


# --- a real build: review, export, push list, evaluate both sets -------------------------------------------


@pytest.fixture(scope="module")
def real_reviewed(audited_build, tmp_path_factory):
    """A copy of a real build (tests/audited_build.py) with one pair accepted, one rejected, two written."""
    out = tmp_path_factory.mktemp("real-review") / "out"
    shutil.copytree(audited_build.out, out)
    before = build_hashes(out)
    review = Review.open(out)
    clip = review.build.clips[0].segment_id
    pairs = review.build.pairs_of(clip)
    act(review, "alice", clip, "pair", target=pairs[0].question_id, verdict="accept")
    act(review, "alice", clip, "pair", target=pairs[1].question_id, verdict="reject", reason="duplicate")
    for question, answer, category in (("Why does the speaker sound tense?", "The dogs.", REASONING),
                                       ("Is the voice calm?", "No.", "emotion")):  # fmt: skip
        act(review, "alice", clip, "human", question=question, answer=answer, category=category)
    act(review, "alice", clip, "label", verdict="yes")
    rows, section = export_review(review.state())
    return out, review, rows, section, before


REASONING = "contextual paralinguistic reasoning"


def test_a_real_build_is_reviewed_and_exported(real_reviewed):
    from build.publishing.publish import files_to_upload

    out, review, rows, section, before = real_reviewed
    clip = review.build.clips[0]
    assert [p.question for p in review.build.pairs_of(clip.segment_id)] == [
        "How does the speaker feel?", "Is the speaker male or female?"]  # fmt: skip
    assert (rows["qa_reviewed"], rows["qa_human"]) == (1, 2)
    assert {k: v for k, v in build_hashes(out).items() if k in before} == before
    uploaded = set(files_to_upload(out))  # push uploads the new configs
    assert {
        "data/qa_human/test-00000-of-00001.parquet",
        "data/qa_reviewed/test-00000-of-00001.parquet",
    } <= uploaded
    assert "stats/human_review_categories.png" in uploaded  # the card's Table 1 plot of the two sets
    assert "![Table 1: pairs per category, LLM and human](stats/human_review_categories.png)" in section
    assert f"| {clip.primary_emotion} | 1 | 1 | 100.0 | 20.7–100.0 |" in section


def test_evaluate_scores_the_llm_and_the_human_set_of_one_folder(real_reviewed, tmp_path):
    import json

    from openai_stub import OpenAIStub

    import cpqa

    out, review, *_ = real_reviewed
    clip = review.build.clips[0].segment_id
    ids = [p.question_id for p in review.build.pairs_of(clip)] + [
        f"{clip}-h{a.id:05d}" for a in review.state().human
    ]
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text(
        "".join(json.dumps({"question_id": q, "prediction": "Afraid."}) + "\n" for q in ids)
    )

    def grade(request):  # the LLM's pairs get 4, the human pairs 2
        prompt = request["messages"][-1]["content"]
        return "Rating: 2" if "tense" in prompt or "calm" in prompt else "Rating: 4"

    with OpenAIStub(grade) as judge:
        argv = ["evaluate", str(out), "--name", "qa", "qa_human", "--judge",
                f"model=stub-judge,base_url={judge.base_url},name=stub", "--predictions", str(predictions),
                "--prompts", "audiobench", "--no-controls", "--out", str(tmp_path / "results")]  # fmt: skip
        assert cpqa.main(argv) == 0
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["qa"]["judges"]["stub"]["audiobench"]["score"] == pytest.approx(80.0)
    assert results["qa_human"]["judges"]["stub"]["audiobench"]["score"] == pytest.approx(40.0)
    assert "## Cell-level correlation, qa vs qa_human" in (tmp_path / "results" / "results.md").read_text()


def test_rehydrate_restores_the_audio_of_the_reviewed_configs_of_a_metadata_only_build(tmp_path):
    from conftest import AMI, ravdess_recording

    from build.publishing.publish import rehydrate

    out = write_review_build(tmp_path / "meta", publish="metadata-only")
    copy = tmp_path / "copy"
    copy.mkdir()
    for source in (AMI, ravdess_recording(1)):
        shutil.copy(source, copy / source.name)
    review = Review.open(out, audio_root=copy)
    act(review, "alice", "ami-0000", "empathy", target="ami-0000-empathy", verdict="accept")
    act(review, "alice", "ami-0000", "human", question="Q?", answer="A.", category="other")
    act(review, "alice", "ami-0000", "pair", target="ami-0000-q00", verdict="accept")
    export_review(Review.open(out, audio=False).state())  # exporting needs no audio
    for config in ("qa_reviewed", "qa_human", "empathy_reviewed"):
        assert not {"context", "audio"} & set(
            pq.read_schema(next((out / "data" / config).glob("*.parquet"))).names
        )
    report = rehydrate(out, copy, tmp_path / "rehydrated")
    assert (report.missing, report.changed) == ({}, {})
    restored = tmp_path / "rehydrated" / "data"
    assert "audio" in pq.read_schema(restored / "empathy_reviewed" / "train-00000-of-00001.parquet").names
    assert "context" in pq.read_schema(restored / "qa_human" / "train-00000-of-00001.parquet").names
    # the build itself is only read
    assert "audio" not in pq.read_schema(out / "data" / "empathy_reviewed" / "train-00000-of-00001.parquet").names


# --- the command line ---------------------------------------------------------------------------------


def test_review_export_prints_the_figures_and_import_reports_bad_rows(out, tmp_path, capsys):
    import cpqa

    good = tmp_path / "pairs.csv"
    good.write_text("segment_id,question,answer,category,annotator\nami-0000,Q?,A.,emotion,carol\n")
    assert cpqa.main(["review", "import", str(out), str(good)]) == 0
    assert capsys.readouterr().out == f"imported 1 human pairs into {out / 'review' / 'review.sqlite'}\n"
    bad = tmp_path / "bad.csv"
    bad.write_text("segment_id,question,answer,category,annotator\nami-0000,Q?,,emotion,carol\n")
    assert cpqa.main(["review", "import", str(out), str(bad)]) == 1
    assert (
        capsys.readouterr().err
        == f"cpqa review import: {bad}:2: empty answer\ncpqa review import: nothing imported\n"
    )
    assert cpqa.main(["review", "export", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "## Human review" and "| emotion | 2 | 33.3 | 0 | 0.0 | 1 | 100.0 |" in printed
    assert (
        printed[-1]
        == f"wrote qa_reviewed (none), qa_human (1 rows), empathy_reviewed (none) in {out / 'data'}"
    )


def test_review_of_a_folder_that_is_no_build_ends_in_one_line(tmp_path, capsys):
    import cpqa

    (tmp_path / "README.md").write_text("# notes\n")
    assert cpqa.main(["review", str(tmp_path)]) == 2
    assert capsys.readouterr().err == (
        f"cpqa review: {tmp_path}: not a cpqa build (no dataset card from cpqa.py build); build one first "
        "(--debug shows the traceback)\n"
    )
    assert cpqa.main(["review", "export", str(tmp_path / "none")]) == 2
    assert (
        capsys.readouterr().err
        == f"cpqa review: {tmp_path / 'none'}: no such folder (--debug shows the traceback)\n"
    )


def test_auth_files_and_variables(tmp_path, monkeypatch):
    from build.commands.review.serve import AccessRefused, check_access, read_auth

    users = tmp_path / "users"
    users.write_text("# who\nalice:s3cret\n\n bob :pa:ss\n")
    assert read_auth(str(users)) == [("alice", "s3cret"), ("bob", "pa:ss")]
    monkeypatch.setenv("REVIEW_USERS", "carol:x,dan:y")
    assert read_auth("env:REVIEW_USERS") == [("carol", "x"), ("dan", "y")]
    users.write_text("alice:s3cret\nbob\n")
    with pytest.raises(AccessRefused, match=f"^{users}:2: expected user:password$"):
        read_auth(str(users))
    with pytest.raises(
        AccessRefused, match="^--auth env:NOPE: the environment variable NOPE is not set or empty$"
    ):
        read_auth("env:NOPE")
    check_access("0.0.0.0", True, [("alice", "s3cret")])  # with auth: allowed
    check_access("localhost", False, None)


def test_actions_on_clips_a_rebuild_dropped_are_kept_but_not_exported(out):
    import dataclasses

    review = Review.open(out)
    act(review, "alice", "ami-0001", "human", question="Q?", answer="A.", category="other")
    act(review, "alice", "ami-0001", "pair", target="ami-0001-q00", verdict="accept")
    build = review.build
    clips = [c for c in build.clips if c.segment_id != "ami-0001"]
    rebuilt = dataclasses.replace(
        build, clips=clips, pairs={q: p for q, p in build.pairs.items() if p.segment_id != "ami-0001"}
    )
    state = Review(rebuilt).state()
    assert (state.human, state.pair_finals(), len(state.actions)) == ([], {}, 2)
