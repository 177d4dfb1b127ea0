"""What a build leaves in ``OUT`` besides its work files (rank 0): the run's id, the export that
replaces the previous one whole, the condensed segments of a build that stops after condensation.

The export is written into ``OUT/.export-<build id>`` and then replaces the previous one
(``export.install_export``), so ``OUT`` never mixes the files of two builds; a build that exports
nothing removes the previous export and says so. ``report.json`` and the card carry the build id,
which ``push`` compares.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from datasets import Dataset

from ..core.config import Config
from ..core.work import WorkDir, atomic_write
from ..publishing import card, export
from .funnel import BuildResult, write_report

BUILD_ID_FILE = "build.json"  # under OUT/work: the id rank 0 gave this run, read by every rank


def new_build_id(work: WorkDir) -> str:
    """A fresh id for this run of ``build``, written for the other ranks to read after the barrier."""
    build_id = uuid.uuid4().hex[:16]
    atomic_write(work.root / BUILD_ID_FILE, lambda p: p.write_text(json.dumps({"build_id": build_id}) + "\n"))
    return build_id


def read_build_id(work: WorkDir) -> str:
    return json.loads((work.root / BUILD_ID_FILE).read_text())["build_id"]


def no_export(out_dir: Path, say: Callable[[str], None]) -> None:
    """A build that exports nothing leaves no earlier build's export behind, and says so."""
    removed = export.remove_export(out_dir)
    if removed:
        say(f"removed the previous build's export ({', '.join(removed)}): this build exported nothing")


def save_condensed(segments: Dataset, path: Path) -> None:
    """``segments`` as a ``save_to_disk`` folder that replaces ``path`` whole (no shard of an earlier run
    left); an empty result is written as one empty shard, so that ``load_from_disk`` opens it with its
    features."""
    token = uuid.uuid4().hex[:8]
    staging, old = path.with_name(f".{path.name}-{token}"), path.with_name(f".{path.name}-old-{token}")
    segments.save_to_disk(str(staging), num_shards=None if len(segments) else 1)
    if path.exists():
        path.rename(old)
    staging.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def model_ids(config: Config) -> dict[str, object]:
    """The models behind the labels, as published (local folders by name only)."""
    return {
        "emotion_models": [card.public_model_id(m) for m in config.models.emotion],
        "dimension_model": card.public_model_id(config.models.dimension),
        "gender_model": card.public_model_id(config.models.gender),
        "asr_model": card.public_model_id(config.asr.model),
    }


def export_dataset(
    result: BuildResult,
    config: Config,
    out_dir: str | Path,
    *,
    license: str,
    sources: str,
    card_template: str | None = None,
    licences: list[str] | None = None,
    source_hashes: dict[str, str] | None = None,
) -> Path:
    """Parquet shards for the ``qa``, ``segments`` and ``empathy`` configs (those built), the card as
    README.md, and the reports (``licences``: each segment's source licence, default ``license``;
    ``source_hashes``: path -> sha256), written aside and swapped in."""
    out_dir = Path(out_dir)
    if card_template is None:
        card_template = (Path(__file__).resolve().parents[2] / "dataset_card.md").read_text()
    for stale in out_dir.glob(".export-*"):  # left by a run that died while exporting
        shutil.rmtree(stale)
    staging = out_dir / f".export-{result.build_id}"
    export.write_dataset(
        result.segments, result.pairs, config, staging, models=model_ids(config), report=result.report(),
        card_template=card_template, license=license, sources=sources, build_id=result.build_id,
        licences=licences, empathy=result.empathy, source_hashes=source_hashes, load_path=str(out_dir),
    )  # fmt: skip
    export.install_export(staging, out_dir)
    write_report(result, out_dir)
    return out_dir
