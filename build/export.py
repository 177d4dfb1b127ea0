"""Stage 12, export: Parquet shards with the audio embedded, a dataset card, and the Hub upload.

``embed_segment_audio`` (batched map over segment rows): ``audio_path``, ``start``, ``end`` -> ``context``
(the span as 16 kHz FLAC bytes; an Audio column once cast).

``empathy_table``: one row per empathy sample (``schema.EMPATHY_SAMPLE``) -> ``id``, ``audio`` (the span
``clip_start``-``clip_end`` as FLAC bytes), ``text_context``, ``target_utterance``, ``desired_response``,
then provenance; every time in a row is relative to its ``audio``.

``write_config`` writes one config (``qa``, ``segments`` or ``empathy``) as ``data/<config>/test-XXXXX-of-YYYYY.parquet``;
``render_card`` fills ``dataset_card.md`` into the output's ``README.md`` with YAML ``configs`` so
that ``load_dataset(out_dir)`` gives the ``qa`` config and ``load_dataset(out_dir, "segments")`` the
segments. ``push`` uploads exactly ``files_to_upload(out_dir)`` with the token from the environment.
"""

from __future__ import annotations

import io
import math
import string
from collections import Counter
from pathlib import Path

from datasets import Audio, Dataset

from .audio import SAMPLE_RATE, decode_span
from .schema import EMOTION_FAMILY
from .errors import first_line
from .preflight import check_push

SPLIT = "test"
MAX_SHARD_BYTES = 500 * 1024 * 1024


def flac_bytes(audio) -> bytes:
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def _embedded(names: list[str], paths: list[str], starts: list[float], ends: list[float]) -> list[dict]:
    return [{"bytes": flac_bytes(decode_span(path, start, end)), "path": f"{name}.flac"} for name, path, start, end in zip(names, paths, starts, ends)]


def embed_segment_audio(batch: dict[str, list]) -> dict[str, list]:
    return {"context": _embedded(batch["segment_id"], batch["audio_path"], batch["start"], batch["end"])}


def with_audio(data: Dataset) -> Dataset:
    """Add the ``context`` Audio column (bytes embedded) to rows that carry a segment span."""
    data = data.map(embed_segment_audio, batched=True, batch_size=16, desc="embed audio")
    return data.cast_column("context", Audio(sampling_rate=SAMPLE_RATE))


def configs_yaml(names: list[str]) -> str:
    """The card's ``configs`` block: one entry per written config, the first one the default."""
    lines = ["configs:"]
    for i, name in enumerate(names):
        lines += [f"- config_name: {name}", *(["  default: true"] if i == 0 else []), "  data_files:", f"  - split: {SPLIT}", f"    path: data/{name}/{SPLIT}-*.parquet"]
    return "\n".join(lines)


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


def dataset_info_yaml(out_dir: str | Path, rows: dict[str, int]) -> str:
    """The card's ``dataset_info``: rows and Parquet bytes per config.

    Besides informing the Hub viewer, it makes a rebuild load fresh: ``load_dataset`` on a local
    folder caches under the folder's name and a hash of the card's metadata (not of the data files),
    so without these numbers a rebuild into the same folder would load the previous build's cache.
    """
    lines = ["dataset_info:"]
    for name, n in rows.items():
        size = sum(p.stat().st_size for p in (Path(out_dir) / "data" / name).glob("*.parquet"))
        lines += [f"- config_name: {name}", "  splits:", f"  - name: {SPLIT}", f"    num_bytes: {size}", f"    num_examples: {n}", f"  download_size: {size}", f"  dataset_size: {size}"]
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
    check_push(token_env)
    api = HfApi(token=os.environ.get(token_env))  # None lets huggingface_hub use its own login
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset", allow_patterns=files, commit_message="Upload cpqa build")
    except Exception as exc:
        raise RuntimeError(_push_error(exc, repo_id, token_env)) from exc
    return f"https://huggingface.co/datasets/{repo_id}"


def _push_error(exc: Exception, repo_id: str, token_env: str) -> str:
    """One line for a failed upload: no network, a refused token, or the Hub's own words."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled


    if isinstance(exc, OfflineModeIsEnabled):
        return "cannot push: HF_HUB_OFFLINE is set; unset it where the Hub is reachable, then run push again"
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(exc, HfHubHTTPError) and status in (401, 403):
        return f"the Hub refused the token (HTTP {status}) for {repo_id}: set ${token_env} to a token with write access to that namespace"
    if _network_error(exc):
        return f"cannot reach the Hugging Face Hub ({first_line(exc, with_type=False)}): check the network connection, then run push again"
    return f"push to {repo_id} failed: {first_line(exc)}"


def _network_error(exc: BaseException | None) -> bool:
    """A transport failure: an OSError (requests' errors are), or httpx's TransportError, anywhere in the chain."""
    while exc is not None:
        if isinstance(exc, OSError) or any(c.__name__ == "TransportError" for c in type(exc).__mro__):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def public_model_id(model: str) -> str:
    """Hub ids stay as they are; a local folder is named ``local:<folder name>`` (no local paths in data)."""
    return f"local:{Path(model).name}" if Path(model).exists() else model


# Columns of the published tables that come from the segment, in order (see dataset_card.md).
_SEGMENT_COLUMNS = ("segment_id", "recording_id", "source_file", "start", "end", "duration", "primary_emotion", "emotions", "gender", "transcript", "words")


def segment_table(segments: Dataset, models: dict[str, object], pair_counts: dict[str, int]) -> Dataset:
    """One row per clip: audio, provenance, labels, words and windows, ``n_pairs`` (pairs kept), model ids."""
    data = with_audio(segments)
    data = data.map(
        lambda b: {
            "source_file": [Path(p).name for p in b["audio_path"]],
            "duration": [round(e - s, 3) for s, e in zip(b["start"], b["end"])],
            "words": b["tagged_words"],
            "n_pairs": [pair_counts.get(sid, 0) for sid in b["segment_id"]],
        },
        batched=True,
        remove_columns=["tagged_words"],
    )
    for name, value in models.items():
        data = data.add_column(name, [value] * len(data))
    keep = ["context", *_SEGMENT_COLUMNS, "emotion_counts", "emotion_windows", "gender_windows", "n_pairs", "language", "aligner", "llm_model", "prompt_version", *models]
    return data.select_columns(keep)


def qa_table(pairs: Dataset, segment_rows: Dataset) -> Dataset:
    """One row per kept pair: AudioBench's ``context``/``instruction``/``answer`` first, then the rest."""
    from datasets import concatenate_datasets

    index = {sid: i for i, sid in enumerate(segment_rows["segment_id"])}
    aligned = segment_rows.select([index[sid] for sid in pairs["segment_id"]]).remove_columns(["emotion_counts", "emotion_windows", "gender_windows", "n_pairs"])
    own = pairs.map(
        lambda b: {
            "question_id": [f"{sid}-q{i:02d}" for sid, i in zip(b["segment_id"], b["pair_index"])],
            "instruction": b["question"],
        },
        batched=True,
        remove_columns=[c for c in pairs.column_names if c not in ("answer", "category")],
    )
    joined = concatenate_datasets([aligned, own], axis=1)
    first = ["context", "instruction", "answer", "category", "question_id"]
    return joined.select_columns(first + [c for c in joined.column_names if c not in first])


_EMPATHY_FIRST = ("id", "audio", "text_context", "target_utterance", "desired_response")


def empathy_table(samples: Dataset) -> Dataset:
    """One row per empathy sample: the sample's columns first, then provenance (source file, clip span in the recording)."""

    def own(batch: dict[str, list]) -> dict[str, list]:
        ids = [f"{sid}-empathy" for sid in batch["segment_id"]]
        return {
            "id": ids,
            "audio": _embedded(ids, batch["audio_path"], batch["clip_start"], batch["clip_end"]),
            "source_file": [Path(p).name for p in batch["audio_path"]],
        }

    data = samples.map(own, batched=True, batch_size=16, desc="embed audio").cast_column("audio", Audio(sampling_rate=SAMPLE_RATE))
    rest = ("segment_id", "recording_id", "source_file", "clip_start", "clip_end", "prompt_version", "llm_model")
    return data.select_columns([*_EMPATHY_FIRST, *rest])


def empathy_card_values(samples: Dataset | None) -> dict[str, str]:
    """``$n_empathy`` and ``$empathy_strategy_table`` (samples per family, primary emotion and strategy)."""
    if samples is None:
        return {"n_empathy": "0 (not built: this build was made with `--outputs qa`)", "empathy_strategy_table": "(none)"}
    counts = Counter(
        (EMOTION_FAMILY[t["emotions"]["primary"]], t["emotions"]["primary"], r["response_strategy"]) for t, r in zip(samples["target_utterance"], samples["desired_response"])
    )
    rows = sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[1], kv[0][2]))
    table = markdown_table(("emotion family", "primary emotion", "response strategy", "samples"), [(*key, n) for key, n in rows]) if rows else "(none)"
    return {"n_empathy": str(len(samples)), "empathy_strategy_table": table}


PROFILE_NOTES = {
    "paper": "",
    "tiny": (
        "> **Demo build.** This dataset was made with cpqa's offline profile: its emotion, valence and gender\n"
        "> labels come from tiny random-weight models and its QA pairs from a 135M-parameter LLM. It shows\n"
        "> the pipeline and the format; it is not a benchmark."
    ),
}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _counts_table(values: list, header: str) -> str:
    counts = Counter(v if v is not None else "(none)" for v in values)
    return markdown_table((header, "count"), sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) if counts else "(none)"


def card_values(config, qa: Dataset, segment_rows: Dataset, report: dict, models: dict, *, license: str, sources: str, load_path: str) -> dict[str, str]:
    """Every ``$field`` of dataset_card.md, from the built tables, the funnel and the config."""
    funnel_rows = [(name, count) for name, count in report["counts"].items()]
    for stage, reasons in report["drops"].items():
        funnel_rows += [(f"dropped at {stage}: {reason}", n) for reason, n in sorted(reasons.items())]
    model_rows = [(role, value if isinstance(value, str) else ", ".join(value)) for role, value in models.items()]
    if len(qa):
        model_rows += [("llm_model", ", ".join(sorted(set(qa["llm_model"])))), ("aligner", ", ".join(sorted(set(qa["aligner"]))))]
    c = config
    return {
        "license": license,
        "language": c.asr.language or "multilingual",
        "pretty_name": "CPQA: contextual paralinguistic QA" + (" (demo build)" if c.profile == "tiny" else ""),
        "size_category": _size_category(len(qa)),
        "profile_note": PROFILE_NOTES.get(c.profile, ""),
        "load_path": load_path,
        "n_pairs": str(len(qa)),
        "n_segments": str(len(segment_rows)),
        "n_recordings": str(len(set(segment_rows["recording_id"]))),
        "hours": f"{sum(segment_rows['duration']) / 3600:.2f}",
        "category_table": _counts_table(qa["category"], "category"),
        "emotion_table": _counts_table(segment_rows["primary_emotion"], "primary emotion"),
        "gender_table": _counts_table(segment_rows["gender"], "gender"),
        "funnel_table": markdown_table(("step", "count"), funnel_rows),
        "models_table": markdown_table(("role", "model"), model_rows),
        "merge_gap_s": f"{c.vad.merge_gap_s:g}",
        "min_segment_s": f"{c.min_segment_s:g}",
        "max_segment_s": f"{c.max_segment_s:g}",
        "emotion_window_s": f"{c.emotion_window.label_s:g}",
        "emotion_context_s": f"{c.emotion_window.context_s:g}",
        "gender_window_s": f"{c.gender_window.label_s:g}",
        "gender_context_s": f"{c.gender_window.context_s:g}",
        "x": f"{c.condense.x:g}",
        "y": f"{c.condense.y:g}",
        "v_neg_max": f"{c.thresholds['v_neg_max']:g}",
        "v_neu_max": f"{c.thresholds['v_neu_max']:g}",
        "alpha": ", ".join(f"{k} {v}" for k, v in c.condense.alpha.items()),
        "samples_per_category": str(c.condense.samples_per_category),
        "seed": str(c.condense.seed),
        "pairs_per_segment": str(c.qa.pairs_per_segment),
        "prompt_version": ", ".join(sorted(set(qa["prompt_version"]))) if len(qa) else "(none)",
        "duplicate_threshold": f"{c.postfilter.duplicate_threshold:g}",
        "sources": sources,
    }
