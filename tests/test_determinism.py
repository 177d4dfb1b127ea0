"""Determinism: the same inputs, config and seed give byte-identical Parquet files on a rebuild whose
LLM replies come from the cache.

The shared small build (tests/audited_build.py) is rebuilt into a second folder that holds only a
copy of its LLM cache; the endpoint of the rebuild fails every request, so each reply must come from
that cache. Every Parquet file under both folders (work shards, audit files, the exported dataset)
is compared byte for byte. Both builds run in this one process, with one thread count: CTranslate2's
int8 Whisper kernels round differently with another one (see README, "Bad input and audits").
"""

import shutil

from audited_build import audited_config
from openai_stub import OpenAIStub, Reply

from build import pipeline


def _parquet_files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.parquet"))}


def test_a_rebuild_from_the_llm_cache_gives_byte_identical_parquet(audited_build, tiny_config, tmp_path):
    first = audited_build.out
    second = tmp_path / "out"
    shutil.copytree(first / "work" / "llm-cache", second / "work" / "llm-cache")
    with OpenAIStub(lambda request: Reply(500, "no live replies in this test")) as stub:
        again = pipeline.build(audited_build.source, audited_config(tiny_config, stub.base_url), second, progress=False)
        assert stub.requests == []  # every reply came from the cache
    assert again.status == "built"
    before, after = _parquet_files(first), _parquet_files(second)
    assert sorted(after) == sorted(before)
    assert any(name.startswith("data/") for name in before) and any(name.startswith("work/qa/") for name in before)
    assert [name for name in before if before[name] != after[name]] == []
