"""Top-up: sampled segments that lose every pair are replaced from the unused candidates of their category."""

import shutil

import pyarrow.parquet as pq
import pytest
from conftest import ravdess_recording
from openai_stub import OpenAIStub

from build import pipeline
from build.core.config import PAPER_ALPHA
from build.stages import condense, qa

PAIRS = "Q: How does the speaker feel?\nA: Afraid.\nQ: Is the speaker male or female?\nA: Male."
QUOTA = 2


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    folder = tmp_path_factory.mktemp("topup-source")
    for actor in range(1, 6):
        shutil.copy(ravdess_recording(actor), folder / f"actor{actor:02d}.flac")
    return folder


def _config(tiny_config, stub_url, rounds):
    # x = y = 0 and α = 1: every target-emotion window counts, so every segment is a candidate.
    config = tiny_config.with_overrides(["condense.x=0", "condense.y=0", "qa.structured_output=text", f"qa.base_url={stub_url}", f"condense.samples_per_category={QUOTA}", f"condense.topup_rounds={rounds}"])
    config.condense.alpha = {label: 1 for label in PAPER_ALPHA}
    return config


@pytest.fixture(scope="module")
def builds(source, tiny_config, tmp_path_factory):
    """One output folder built three times: no top-up, one round, two rounds; the QA stub loses chosen segments."""
    out = tmp_path_factory.mktemp("topup-out")
    real = qa.generate_qa
    lose: set[str] = set()

    def losing_qa(batch, *args, **kwargs):
        result = real(batch, *args, **kwargs)
        result["qa_pairs"] = [[] if sid in lose else pairs for sid, pairs in zip(batch["segment_id"], result["qa_pairs"])]
        return result

    with OpenAIStub(lambda request: PAIRS) as stub, pytest.MonkeyPatch.context() as mp:
        mp.setattr(qa, "generate_qa", losing_qa)
        pipeline.build(source, _config(tiny_config, stub.base_url, 0), out, stop_after="condense", progress=False)
        # every candidate, as condensation wrote them (the sample holds only the quota)
        tables = [pq.read_table(p).to_pydict() for p in sorted((out / "work" / "condense").glob("r*.parquet")) if "dropped" not in p.name]
        ids = [sid for t in tables for sid in t["segment_id"]]
        primary = [label for t in tables for label in t["primary_emotion"]]
        orders = condense.sampling_order(ids, primary, seed=0)
        (label, order), *_ = sorted(orders.items(), key=lambda kv: -len(kv[1]))
        assert len(order) >= 5, orders  # the tiny models put most segments in one category
        # the first two drawn and the first replacement lose every pair
        lose.update([order[0], order[1], order[2]])
        results = {}
        for rounds in (0, 1, 2):
            before = len(stub.requests)
            results[rounds] = pipeline.build(source, _config(tiny_config, stub.base_url, rounds), out, progress=False, outputs=("qa",))  # QA requests only
            results[rounds, "requests"] = len(stub.requests) - before
    return results, label, order, orders, out


def test_without_top_up_the_lost_segments_leave_the_quota_empty(builds):
    results, label, order, orders, _ = builds
    quota = results[0].report()["quota"][label]
    assert quota == {"asked": QUOTA, "candidates": len(order), "sampled": QUOTA, "delivered": 0}
    assert results[0].status == "no pairs" or label not in set(results[0].segments["primary_emotion"])


def test_one_round_replaces_both_lost_segments_and_one_is_lost_again(builds):
    results, label, order, _, _ = builds
    quota = results[1].report()["quota"][label]
    assert quota == {"asked": QUOTA, "candidates": len(order), "sampled": QUOTA + 2, "delivered": 1}
    assert [s for s, p in zip(results[1].segments["segment_id"], results[1].segments["primary_emotion"]) if p == label] == [order[3]]
    assert results[1, "requests"] == 2  # only the two replacements were sent to the LLM; round 0 was resumed


def test_two_rounds_fill_the_quota_with_the_next_candidates_in_draw_order(builds):
    results, label, order, orders, out = builds
    result = results[2]
    assert result.report()["quota"][label] == {"asked": QUOTA, "candidates": len(order), "sampled": QUOTA + 3, "delivered": QUOTA}
    delivered = sorted(s for s, p in zip(result.segments["segment_id"], result.segments["primary_emotion"]) if p == label)
    assert delivered == sorted([order[3], order[4]])
    assert results[2, "requests"] == 1
    # the funnel: candidates taken by a top-up are no longer counted as over quota
    n_candidates = sum(len(ids) for ids in orders.values())
    n_sampled = sum(min(QUOTA, len(ids)) for ids in orders.values()) + 3
    assert result.funnel.counts["sampling"] == n_sampled
    over = n_candidates - n_sampled
    assert result.funnel.drop_counts().get("sampling", {}) == ({"over the per-category quota": over} if over else {})
    assert results[0].funnel.drop_counts()["sampling"] == {"over the per-category quota": n_candidates - n_sampled + 3}
    assert result.funnel.drop_counts()["qa"] == {"no pairs in the reply": 3}
    # rounds are tasks of their own, resumable like the first sample
    manifest = pq.read_table(out / "work" / "sample" / "topup-2.parquet").to_pydict()
    assert manifest["segment_id"] == [order[4]] and manifest["shard"] == ["t2s00000"]
    assert (out / "work" / "postfilter" / "t2s00000.parquet").is_file()
    card = (out / "README.md").read_text()
    assert f"| {label} | {QUOTA} | {len(order)} | {QUOTA + 3} | {QUOTA} |" in card
    assert f"quota per primary emotion (delivered/asked): {label} {QUOTA}/{QUOTA}" in pipeline.format_report(result)


def test_topup_picks_follow_the_order_and_skip_sampled_ids():
    orders = condense.sampling_order(["a", "b", "c", "d", "e"], ["sad", "sad", "sad", "happy", "happy"], seed=3)
    assert sorted(orders) == ["happy", "sad"] and sorted(orders["sad"]) == ["a", "b", "c"]
    assert condense.sampling_order(["e", "d", "c", "b", "a"], ["happy", "happy", "sad", "sad", "sad"], seed=3) == orders
    sampled = set(orders["sad"][:1]) | set(orders["happy"][:1])
    assert condense.topup_picks(orders, sampled, {"sad": 1, "happy": 5}) == [orders["happy"][1], orders["sad"][1]]
    assert condense.topup_picks(orders, sampled, {"sad": 0}) == []
    assert condense.balanced_sample(["a", "b", "c", "d", "e"], ["sad", "sad", "sad", "happy", "happy"], 1, seed=3) == sampled
