"""Stage 12, export: Parquet shards with the audio embedded, a dataset card, and the Hub upload.

``embed_segment_audio`` (batched map over segment rows): ``audio_path``, ``start``, ``end`` -> ``context``
(the span as 16 kHz FLAC bytes; an Audio column once cast).

``write_config`` writes one config (``qa`` or ``segments``) as ``data/<config>/test-XXXXX-of-YYYYY.parquet``;
``render_card`` fills ``dataset_card.md`` into the output's ``README.md`` with YAML ``configs`` so
that ``load_dataset(out_dir)`` gives the ``qa`` config and ``load_dataset(out_dir, "segments")`` the
segments. ``push`` uploads exactly ``files_to_upload(out_dir)`` with the token from the environment.
"""

from __future__ import annotations

import io
import math
import string
from pathlib import Path

from datasets import Audio, Dataset

from .audio import SAMPLE_RATE, decode_span

SPLIT = "test"
MAX_SHARD_BYTES = 500 * 1024 * 1024


def flac_bytes(audio) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def embed_segment_audio(batch: dict[str, list]) -> dict[str, list]:
    contexts = []
    for sid, path, start, end in zip(batch["segment_id"], batch["audio_path"], batch["start"], batch["end"]):
        contexts.append({"bytes": flac_bytes(decode_span(path, start, end)), "path": f"{sid}.flac"})
    return {"context": contexts}


def with_audio(data: Dataset) -> Dataset:
    """Add the ``context`` Audio column (bytes embedded) to rows that carry a segment span."""
    data = data.map(embed_segment_audio, batched=True, batch_size=16, desc="embed audio")
    return data.cast_column("context", Audio(sampling_rate=SAMPLE_RATE))


def write_config(data: Dataset, out_dir: str | Path, config_name: str) -> list[Path]:
    """Write ``data`` as Parquet shards under ``out_dir/data/<config_name>/``."""
    folder = Path(out_dir) / "data" / config_name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    n_shards = max(1, math.ceil((data.data.nbytes or 1) / MAX_SHARD_BYTES))
    paths = []
    for index in range(n_shards):
        path = folder / f"{SPLIT}-{index:05d}-of-{n_shards:05d}.parquet"
        data.shard(n_shards, index, contiguous=True).to_parquet(str(path))
        paths.append(path)
    return paths


def render_card(template: str, values: dict[str, str]) -> str:
    """Fill ``$name`` fields; a field the template names but ``values`` lacks is an error."""
    try:
        return string.Template(template).substitute(values)
    except KeyError as exc:
        raise KeyError(f"dataset card template needs a value for ${exc.args[0]}") from exc


def markdown_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def files_to_upload(out_dir: str | Path) -> list[str]:
    """The card and the Parquet shards, relative to ``out_dir``; work files and reports stay local."""
    root = Path(out_dir)
    files = ["README.md"] if (root / "README.md").exists() else []
    files += sorted(str(p.relative_to(root)) for p in (root / "data").rglob("*.parquet"))
    return files


def push(out_dir: str | Path, repo_id: str, private: bool = True, token_env: str = "HF_TOKEN") -> str:
    """Create the dataset repo (private by default) and upload the card and shards; returns its URL."""
    import os

    from huggingface_hub import HfApi

    files = files_to_upload(out_dir)
    if "README.md" not in files or len(files) < 2:
        raise FileNotFoundError(f"{out_dir}: no built dataset here (README.md and data/*/*.parquet expected)")
    api = HfApi(token=os.environ.get(token_env))  # None lets huggingface_hub use its own login
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset", allow_patterns=files, commit_message="Upload cpqa build")
    return f"https://huggingface.co/datasets/{repo_id}"
