"""Secrets come from the environment and go nowhere else.

A key is planted in an environment variable (and a Hub token in $HF_TOKEN); a build (QA through a
loopback endpoint), a push dry run and an evaluation (a judge behind a loopback endpoint) run through
the CLI with debug logging, and every file they write, and everything they print, is scanned for both.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
from conftest import REPO, ravdess_recording
from openai_stub import OpenAIStub, Reply

SECRET = "sk-planted-9f8e7d6c5b4a3210fedcba"
HUB_TOKEN = "hf_plantedTOKEN0123456789abcdefABCDEF"
KEY_ENV = "CPQA_PLANTED_KEY"
ALPHA = json.dumps({label: 1 for label in ("angry", "disgusted", "fearful", "happy", "sad", "surprised")})
PAIRS = {"pairs": [{"question": "How does the speaker feel?", "answer": "Calm."}, {"question": "Is the speaker a man or a woman?", "answer": "A man."}]}


def cli(args: list[str], log) -> int:
    env = {**os.environ, KEY_ENV: SECRET, "HF_TOKEN": HUB_TOKEN, "CPQA_LOG": "DEBUG", "OPENAI_LOG": "debug", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "cpqa.py"), *args], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode


def files_containing(root, needle: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(str(path.relative_to(root)))
    return hits


def test_a_planted_key_reaches_the_endpoints_and_no_file_or_log(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.copy(ravdess_recording(1), source / "actor01.flac")
    out, results, log_path = tmp_path / "out", tmp_path / "results", tmp_path / "cli.log"
    with open(log_path, "w") as log:
        with OpenAIStub(lambda body: json.dumps(PAIRS)) as qa_server:
            sets = ["condense.x=0", "condense.y=0", f"condense.alpha={ALPHA}", f"qa.base_url={qa_server.base_url}", f"qa.api_key_env={KEY_ENV}", "qa.max_retries=0"]
            code = cli(["build", str(source), "--out", str(out), "--profile", "tiny", "--quiet", *[a for s in sets for a in ("--set", s)]], log)
        assert code == 0, log_path.read_text()[-3000:]
        assert cli(["push", str(out), "--repo-id", "someone/cpqa-test", "--dry-run"], log) == 0
        predictions = tmp_path / "predictions.jsonl"
        ids = [row["question_id"] for f in sorted((out / "data" / "qa").glob("*.parquet")) for row in pq.read_table(f, columns=["question_id"]).to_pylist()]
        predictions.write_text("".join(json.dumps({"question_id": q, "prediction": "Calm."}) + "\n" for q in ids))
        replies = iter([Reply(500, "warming up")] + ["Explanation: same.\nRating: 5"] * 100)
        with OpenAIStub(lambda body: next(replies)) as judge_server:
            judge = f"model=judge-model,base_url={judge_server.base_url},api_key_env={KEY_ENV},name=j,max_retries=1"
            code = cli(["evaluate", str(out), "--predictions", str(predictions), "--judge", judge, "--prompts", "audiobench", "--out", str(results)], log)
        assert code == 0, log_path.read_text()[-3000:]

    # the key was used: both endpoints received it
    for server in (qa_server, judge_server):
        assert server.headers and all({k.lower(): v for k, v in h.items()}["authorization"] == f"Bearer {SECRET}" for h in server.headers)
    # ... and is nowhere else
    assert ids and (out / "work" / "llm-cache").is_dir() and (results / "judge-cache").is_dir()
    log = log_path.read_text()
    assert "would upload" in log and "data/qa/" in log  # the dry run listed the files
    for secret in (SECRET, HUB_TOKEN):
        assert files_containing(out, secret) == []
        assert files_containing(results, secret) == []
        assert secret not in log
