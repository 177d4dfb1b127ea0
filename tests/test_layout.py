"""The repository promises of the foundation issue."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_import_build_is_our_pipeline_package_not_pypa_build():
    import build

    assert Path(build.__file__).resolve().parent == REPO / "build"
    from build import pipeline  # a module PyPA's build does not have

    assert pipeline.STAGES[0] == "ingest"


def test_gitignore_does_not_ignore_the_build_package():
    result = subprocess.run(["git", "check-ignore", "-q", "build/__init__.py"], cwd=REPO)
    assert result.returncode == 1  # 1: not ignored


def test_stages_never_import_each_other():
    shared = {"config", "schema", "devices", "audio", "batching", "llm", "llm_server"}
    stages = [p for p in (REPO / "build").glob("*.py") if p.stem not in shared | {"__init__", "pipeline"}]
    stage_names = {p.stem for p in stages}
    for path in stages:
        text = path.read_text()
        for other in stage_names - {path.stem}:
            assert f"from .{other} import" not in text and f"from . import {other}" not in text, f"{path.name} imports {other}"
