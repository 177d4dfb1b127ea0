"""The preflight: what a build cannot do without, found before any audio is processed, in one line each."""

import os
import socket
import subprocess
import sys

import pytest

from build import pipeline, preflight
from build.config import paper_config
from conftest import REPO, SAMPLES


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is: a connection is refused


def test_a_missing_local_model_folder(tiny_config, tmp_path):
    config = tiny_config.with_overrides([f"models.dimension={tmp_path / 'msp-dim'}"])
    with pytest.raises(preflight.PreflightError) as error:
        preflight.check_build(config, tmp_path / "out", stop_after="condense")
    assert error.value.problems == [
        f"model models.dimension = {tmp_path / 'msp-dim'}: no such folder: point it at a downloaded checkpoint, or give a Hub id, or use --profile tiny"
    ]


def test_a_local_folder_without_the_files_its_loader_reads(tiny_config, tmp_path):
    (tmp_path / "e2v").mkdir()
    (tmp_path / "e2v" / "model.pt").write_bytes(b"")
    config = tiny_config.with_overrides([f'models.emotion=["{tmp_path / "e2v"}"]'])
    with pytest.raises(preflight.PreflightError) as error:
        preflight.check_build(config, tmp_path / "out", stop_after="condense")
    assert error.value.problems == [f"model models.emotion[0] = {tmp_path / 'e2v'}: the folder lacks config.yaml, tokens.txt: point it at a complete checkpoint, or use --profile tiny"]


def test_hub_ids_not_in_the_cache_while_offline(tiny_config, tmp_path):
    # conftest sets HF_HUB_OFFLINE=1; FunASR's own name map turns iic/ into emotion2vec/
    config = tiny_config.with_overrides(['models.emotion=["iic/emotion2vec_plus_large"]', "models.gender=nobody/gender-model"])
    with pytest.raises(preflight.PreflightError) as error:
        preflight.check_build(config, tmp_path / "out", stop_after="condense")
    offline = "is not in the local cache and the Hub cannot be reached (HF_HUB_OFFLINE is set)"
    assert error.value.problems == [
        f"model iic/emotion2vec_plus_large (as emotion2vec/emotion2vec_plus_large) for models.emotion[0] {offline}: download it with "
        "`huggingface-cli download emotion2vec/emotion2vec_plus_large` where the Hub is reachable, or use --profile tiny",
        f"model nobody/gender-model for models.gender {offline}: download it with `huggingface-cli download nobody/gender-model` where the Hub is reachable, or use --profile tiny",
    ]
    assert str(error.value).splitlines()[0].endswith("or use --profile tiny [1 of 2 problems; --debug lists them all]")


def test_the_asr_size_name_is_looked_up_as_faster_whisper_does(tiny_config, tmp_path):
    with pytest.raises(preflight.PreflightError) as error:
        preflight.check_build(tiny_config.with_overrides(["asr.model=large-v3"]), tmp_path / "out")
    assert error.value.problems == [
        "model large-v3 (as Systran/faster-whisper-large-v3) for asr.model is not in the local cache and the Hub cannot be reached "
        "(HF_HUB_OFFLINE is set): download it with `huggingface-cli download Systran/faster-whisper-large-v3` where the Hub is reachable, or use --profile tiny"
    ]
    preflight.check_build(tiny_config.with_overrides(["asr.model=large-v3"]), tmp_path / "out", stop_after="condense")  # not needed: passes


def test_a_remote_endpoint_without_its_key_variable(tiny_config, tmp_path, monkeypatch):
    monkeypatch.delenv("CPQA_TEST_KEY", raising=False)
    monkeypatch.setattr(preflight, "_connects", lambda host, port, timeout_s=3.0: True)  # no network here
    config = tiny_config.with_overrides(["qa.base_url=https://llm.example.org/v1", "qa.api_key_env=CPQA_TEST_KEY"])
    with pytest.raises(preflight.PreflightError) as error:
        preflight.check_build(config, tmp_path / "out")
    assert error.value.problems == [
        "the QA endpoint https://llm.example.org/v1 needs an API key and $CPQA_TEST_KEY is not set: export it (qa.api_key_env names the variable)"
    ]
    monkeypatch.setenv("CPQA_TEST_KEY", "sk-test")
    preflight.check_build(config, tmp_path / "out")
    # a loopback endpoint (vLLM, llama.cpp server) needs no key
    assert preflight.check_qa_endpoint(tiny_config.with_overrides(["qa.base_url=http://127.0.0.1:8000/v1", "qa.api_key_env=CPQA_UNSET"]).qa) == []


def test_an_unreachable_endpoint(tiny_config, tmp_path):
    port = _closed_port()
    config = tiny_config.with_overrides([f"qa.base_url=http://127.0.0.1:{port}/v1"])
    with pytest.raises(preflight.PreflightError) as error:
        preflight.check_build(config, tmp_path / "out")
    assert error.value.problems == [
        f"the QA endpoint http://127.0.0.1:{port}/v1 cannot be reached (127.0.0.1:{port} refuses or does not answer): start the server, or fix qa.base_url / $OPENAI_BASE_URL"
    ]
    preflight.check_build(config, tmp_path / "out", stop_after="condense")  # no QA stage: not checked


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("condense.x=abc", "config value condense.x = 'abc' is not a number"),
        ("condense.y=1.5", "config value condense.y = 1.5 is not a valence threshold in [0, 1]"),
        ('condense.alpha={"joy": 2}', "config value condense.alpha.joy = 2 is not a key among angry, disgusted, fearful, happy, neutral, other, sad, surprised, unknown"),
        ("runtime.device=gpu", "config value runtime.device = 'gpu' is not auto, cpu, mps, cuda or cuda:N"),
        ("runtime.recordings_per_shard=2.5", "config value runtime.recordings_per_shard = 2.5 is not an integer"),
        ("asr.aligner=mfa", "config value asr.aligner = 'mfa' is not one of whisperx, faster-whisper"),
    ],
)
def test_bad_config_values(tiny_config, override, problem):
    key = override.split("=")[0].split(".joy")[0]
    key = "condense.alpha.joy" if "alpha" in override else key
    assert preflight.check_config(tiny_config.with_overrides([override])) == [f"{problem}: fix it with --set {key}=... or in --config"]


def test_an_output_folder_that_cannot_be_written(tiny_config, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    problems = preflight.check_output(tmp_path / "file" / "out")
    assert len(problems) == 1 and problems[0].startswith(f"output folder {tmp_path / 'file' / 'out'} cannot be written (")
    assert problems[0].endswith("): choose another --out")


def test_no_audio_is_processed_when_the_preflight_fails(tiny_config, tmp_path):
    config = tiny_config.with_overrides([f"models.gender={tmp_path / 'missing'}"])
    with pytest.raises(preflight.PreflightError):
        pipeline.build(SAMPLES, config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "work").exists()  # no plan, no VAD output


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", **env}
    return subprocess.run([sys.executable, str(REPO / "cpqa.py"), *args], cwd=REPO, env=environment, capture_output=True, text=True, timeout=300)


def test_cli_default_profile_offline_ends_in_one_line_before_any_audio(tmp_path):
    done = _cli("build", str(SAMPLES), "--out", str(tmp_path / "out"), "--quiet")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        "cpqa build: model iic/emotion2vec_plus_large (as emotion2vec/emotion2vec_plus_large) for models.emotion[0] is not in the local cache "
        "and the Hub cannot be reached (HF_HUB_OFFLINE is set): download it with `huggingface-cli download emotion2vec/emotion2vec_plus_large`"
    )
    n = len(paper_config().models.emotion) + 3  # the ensemble, the dimension and gender models, Whisper
    assert done.stderr.endswith(f"or use --profile tiny [1 of {n} problems; --debug lists them all] (--debug shows the traceback)\n")
    assert not (tmp_path / "out" / "work").exists()


def test_cli_bad_set_value_is_one_line(tmp_path):
    done = _cli("build", str(SAMPLES), "--out", str(tmp_path / "out"), "--set", "condense.x=abc")
    assert (done.returncode, done.stderr) == (2, "cpqa build: config value condense.x = 'abc' is not a number: fix it with --set condense.x=... or in --config (--debug shows the traceback)\n")


def test_cli_push_without_a_token_or_without_network_is_one_line(tmp_path):
    folder = tmp_path / "built"
    (folder / "data" / "qa").mkdir(parents=True)
    (folder / "README.md").write_text("card")
    (folder / "data" / "qa" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    home = {"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": ""}
    done = _cli("push", str(folder), "--repo-id", "me/set", **home)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "cpqa push: no Hugging Face token: set $HF_TOKEN to a write token (https://huggingface.co/settings/tokens) or run `huggingface-cli login` (--debug shows the traceback)\n"
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    done = _cli("push", str(folder), "--repo-id", "me/set", HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN="hf_test", HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("cpqa push: cannot reach the Hugging Face Hub (") and "check the network connection, then run push again" in done.stderr
