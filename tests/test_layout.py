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


SHARED = {"config", "schema", "devices", "audio", "batching", "errors", "models", "llm", "llm_server", "work", "ranks", "progress", "splits", "categories", "corpora", "prompting", "diarize"}
# pipeline sequences every stage; label runs the three labellers over one decoded segment; preflight
# checks what every stage will load before any audio is read; publish rebuilds exported tables (rehydrate);
# calibrate runs the labellers and condensation over a labelled corpus; stats reads exported tables
COMPOSERS = {"pipeline", "label", "preflight", "publish", "calibrate", "stats"}


def test_stages_never_import_each_other():
    stages = [p for p in (REPO / "build").glob("*.py") if p.stem not in SHARED | COMPOSERS | {"__init__"}]
    stage_names = {p.stem for p in stages}
    for path in stages:
        text = path.read_text()
        for other in stage_names - {path.stem}:
            assert f"from .{other} import" not in text and f"from . import {other}" not in text, f"{path.name} imports {other}"


def test_tiny_model_builders_import_model_classes_not_stages():
    stage_names = {p.stem for p in (REPO / "build").glob("*.py")} - SHARED - {"__init__"}
    for path in (REPO / "build" / "tiny").glob("*.py"):
        text = path.read_text()
        for stage in stage_names:
            assert f"from ..{stage} import" not in text and f"from build.{stage} import" not in text, f"{path.name} imports {stage}"


def test_no_wheel_or_build_output_is_committed():
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    assert [f for f in tracked if f.endswith((".whl", ".parquet", ".arrow")) or f.startswith(("runs/", ".cpqa/"))] == []


def test_no_link_or_environment_is_committed():
    # a symlinked .venv once slipped past a ".venv/" ignore rule (which matches folders only); a checkout
    # of it replaced the real environment
    staged = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split("\t", 1)[1] for line in staged if line.startswith("120000 ")] == []  # mode 120000: a symbolic link
    ignored = subprocess.run(["git", "check-ignore", "-q", "--no-index", ".venv"], cwd=REPO)
    assert ignored.returncode == 0  # .venv is ignored as a file or link too


# build/review (the human review app) sits on top: it reads exported tables through these lower modules,
# and nothing in build/ or metrics/ imports it (only cpqa.py does)
REVIEW_MAY_IMPORT = {"audio", "categories", "config", "errors", "export", "publish", "schema", "stats"}


def test_the_review_package_imports_only_lower_modules_and_nothing_imports_it():
    import re

    for path in [*(REPO / "build").glob("*.py"), *(REPO / "metrics").rglob("*.py")]:
        text = path.read_text()
        assert not re.search(r"from \.review\b|from \. import review\b|build\.review\b|import review\b", text), f"{path.name} imports build.review"
    for path in (REPO / "build" / "review").glob("*.py"):
        used = set(re.findall(r"^from \.\.(\w+) import", path.read_text(), flags=re.M))
        assert used <= REVIEW_MAY_IMPORT, f"build/review/{path.name} imports {sorted(used - REVIEW_MAY_IMPORT)}"
