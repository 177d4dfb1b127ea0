"""The preflight: what a build cannot do without, found before any audio is processed, in one line each."""

import dataclasses
import json
import math
import os
import re
import socket
import subprocess
import sys

import pytest
from conftest import REPO, SAMPLES

from build import pipeline
from build.commands import preflight
from build.core.config import Config, field_range, paper_config


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


def _line(key: str, value, expected: str) -> str:
    return f"config value {key} = {value!r} is not {expected}: fix it with --set {key}=... or in --config"


def _numeric_settings(node=None, prefix: str = "") -> list[tuple[str, dataclasses.Field, object]]:
    """(dotted key, field, default) of every numeric setting, found from the dataclasses themselves."""
    node = Config() if node is None else node
    found = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            found += _numeric_settings(value, f"{prefix}{f.name}.")
        elif re.search(r"\b(int|float)\b", str(f.type)):
            found.append((f"{prefix}{f.name}", f, value))
    return found


def _outside(allowed) -> list:
    """A value just outside each finite end of the range (an int for an int end)."""
    values = []
    if not math.isinf(allowed.lo):
        values.append(allowed.lo if allowed.lo_open else allowed.lo - 1)
    if not math.isinf(allowed.hi):
        values.append(allowed.hi if allowed.hi_open else allowed.hi + 1)
    return values


def test_every_numeric_setting_declares_a_range_that_the_preflight_checks():
    settings = _numeric_settings()
    assert len(settings) >= 40  # every int and float of every section, WindowSpec twice
    default = paper_config()
    assert preflight.check_config(default) == []
    for key, f, value in settings:
        allowed = field_range(f)
        assert allowed is not None, f"{key} is a numeric setting without a declared range (config.ranged)"
        values = value.values() if isinstance(value, dict) else [] if value is None else [value]
        assert all(v in allowed for v in values), key  # the default is in its own range
        outside = _outside(allowed)
        assert outside, f"{key}: a range with no finite end refuses nothing"
        for bad in outside:
            if isinstance(value, dict):  # a mapping: one of its values out of range
                name, override = f"{key}.{next(iter(value))}", {**value, next(iter(value)): bad}
            else:
                name, override = key, bad
            problems = preflight.check_config(default.with_overrides([f"{key}={json.dumps(override)}"]))
            assert problems == [_line(name, bad, f"{allowed.what}in {allowed}")]


@pytest.mark.parametrize(
    ("override", "allowed"),
    [
        ("runtime.batch_size=0", "in [1, inf)"),
        ("emotion_window.label_s=0", "in (0, inf)"),
        ("gender_window.label_s=0", "in (0, inf)"),
        ("vad.block_s=0", "in [0.032, inf)"),
        ("condense.samples_per_category=-1", "in [0, inf)"),
        ("vad.threshold=1.5", "a speech probability in [0, 1]"),
        ("vad.merge_gap_s=-1", "in [0, inf)"),
        ("vad.min_speech_ms=-5", "in [0, inf)"),
        ("postfilter.duplicate_threshold=2", "a cosine similarity in [-1, 1]"),
        ("postfilter.max_question_chars=0", "in [1, inf)"),
        ("emotion_window.context_s=-1", "in [0, inf)"),
        ("emotion_window.min_last_fraction=2", "in [0, 1]"),
        ("asr.batch_size=0", "in [1, inf)"),
        ("qa.max_tokens=0", "in [1, inf)"),
        ("qa.concurrency=0", "in [1, inf)"),
        ("qa.temperature=-1", "in [0, 2]"),
        ("empathy.demos_per_sample=4", "in [1, 3]"),
        ("runtime.hours_per_shard=0", "in (0, inf)"),
        ("min_segment_s=NaN", "in (0, inf)"),
        ("max_segment_s=Infinity", "in (0, inf)"),
    ],
)
def test_settings_that_used_to_fail_after_the_audio_was_read_are_refused_first(
    tiny_config, tmp_path, override, allowed
):
    key, raw = override.split("=")
    value = float(raw) if raw in ("NaN", "Infinity") else json.loads(raw)
    with pytest.raises(preflight.PreflightError) as error:
        preflight.check_build(tiny_config.with_overrides([override]), tmp_path / "out", stop_after="condense")
    assert error.value.problems == [_line(key, value, allowed)]
    assert not (tmp_path / "out" / "work").exists()


def test_range_problems_of_mappings_name_the_entry_and_are_said_once():
    config = paper_config()
    overrides = ['condense.alpha={"sad": 0, "happy": 4}', 'export.splits={"test": 0}']
    assert preflight.check_config(config.with_overrides(overrides)) == [
        _line("condense.alpha.sad", 0, "in [1, inf)"),
        _line("export.splits.test", 0, "in (0, 1]"),
    ]
    assert preflight.check_config(config.with_overrides(['condense.alpha={"sad": 1.5}'])) == [
        _line("condense.alpha.sad", 1.5, "an integer")
    ]
    # in range, but not summing to 1: the splits' own rule
    assert preflight.check_config(config.with_overrides(['export.splits={"test": 0.5}'])) == [
        "export.splits {'test': 0.5}: fractions must be above 0 and sum to 1"
    ]
    assert preflight.check_config(config.with_overrides(["export.splits=[1]"])) == [
        _line("export.splits", [1], "a mapping")
    ]


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
    (folder / "README.md").write_text('---\ncpqa_build_id: "b1"\n---\ncard')  # the export of the last build
    (folder / "report.json").write_text('{"build_id": "b1"}')
    (folder / "data" / "qa" / "test-00000-of-00001.parquet").write_bytes(b"PAR1")
    home = {"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": ""}
    done = _cli("push", str(folder), "--repo-id", "me/set", **home)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "cpqa push: no Hugging Face token: set $HF_TOKEN to a write token (https://huggingface.co/settings/tokens) or run `huggingface-cli login` (--debug shows the traceback)\n"
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    done = _cli("push", str(folder), "--repo-id", "me/set", HF_HOME=str(tmp_path / "hf-home"), HF_TOKEN="hf_test", HF_HUB_OFFLINE="0", HF_ENDPOINT=endpoint)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("cpqa push: cannot reach the Hugging Face Hub (") and "check the network connection, then run push again" in done.stderr
