"""Stage 12, export: Parquet shards with the audio embedded, a dataset card, and the Hub upload.

``embed_segment_audio`` (batched map over segment rows): ``audio_path``, ``start``, ``end`` -> ``context``
(the span as 16 kHz FLAC bytes; an Audio column once cast).

``empathy_table``: one row per empathy sample (``schema.EMPATHY_SAMPLE``) -> ``id``, ``audio`` (the span
``clip_start``-``clip_end`` as FLAC bytes), ``text_context``, ``target_utterance``, ``desired_response``,
then provenance; every time in a row is relative to its ``audio``.

``write_config`` writes one config (``qa``, ``segments`` or ``empathy``) as ``data/<config>/test-XXXXX-of-YYYYY.parquet``;
``render_card`` fills ``dataset_card.md`` into the output's ``README.md`` with YAML ``configs`` so
that ``load_dataset(out_dir)`` gives the ``qa`` config and ``load_dataset(out_dir, "segments")`` the
segments. A part of the template between ``<!-- cpqa:NAME -->`` and ``<!-- /cpqa:NAME -->`` lines is
kept only when config NAME was written (``card_sections``), so the card names no config it lacks.

The export of a build (``EXPORT_ENTRIES``: the card, ``data/``, ``stats/``) is written into a staging
folder and swapped in by ``install_export`` (the old card removed first, the new one moved in last);
``remove_export`` takes away an earlier build's export when a build exports nothing. The card's YAML
carries the build's id (``cpqa_build_id``), as does ``report.json`` (``build_id``); ``check_current``
refuses a folder whose export is missing or belongs to another build than the last one, and ``push``
uploads exactly ``files_to_upload(out_dir)`` of a current export with the token from the environment.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import string
from collections import Counter
from pathlib import Path

from datasets import Audio, Dataset

from ..sources.audio import SAMPLE_RATE, decode_span
from ..core.errors import first_line
from ..core.schema import EMOTION_FAMILY

SPLIT = "test"
MAX_SHARD_BYTES = 500 * 1024 * 1024
# What a build's export consists of in its output folder; the card goes first and comes back last.
EXPORT_ENTRIES = ("README.md", "data", "stats")


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


def write_config(data: Dataset, out_dir: str | Path, config_name: str, splits: list[str] | None = None) -> list[Path]:
    """Write ``data`` as Parquet shards ``data/<config_name>/<split>-XXXXX-of-YYYYY.parquet``.

    ``splits`` names each row's split (all ``test`` when None); splits are written in order of first appearance."""
    folder = Path(out_dir) / "data" / config_name
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    splits = splits if splits is not None else [SPLIT] * len(data)
    paths = []
    for split in dict.fromkeys(splits):
        part = data.select([i for i, s in enumerate(splits) if s == split])
        n_shards = max(1, math.ceil((part.data.nbytes or 1) / MAX_SHARD_BYTES))
        for index in range(n_shards):
            path = folder / f"{split}-{index:05d}-of-{n_shards:05d}.parquet"
            part.shard(n_shards, index, contiguous=True).to_parquet(str(path))
            paths.append(path)
    return paths


def written_splits(out_dir: str | Path) -> dict[str, dict[str, list[Path]]]:
    """config -> split -> its Parquet shards, from the files under ``out_dir/data`` (configs sorted, ``qa`` first)."""
    found: dict[str, dict[str, list[Path]]] = {}
    root = Path(out_dir) / "data"
    for path in sorted(root.glob("*/*.parquet")):
        found.setdefault(path.parent.name, {}).setdefault(path.name.split("-")[0], []).append(path)
    return dict(sorted(found.items(), key=lambda kv: (kv[0] != DEFAULT_CONFIG, kv[0])))


DEFAULT_CONFIG = "qa"


def configs_yaml(out_dir: str | Path) -> str:
    """The card's ``configs``: every written config with a ``data_files`` entry per split (``qa`` the default)."""
    lines = ["configs:"]
    for name, splits in written_splits(out_dir).items():
        lines.append(f"- config_name: {name}")
        if name == DEFAULT_CONFIG:
            lines.append("  default: true")
        lines.append("  data_files:")
        for split in splits:
            lines += [f"  - split: {split}", f"    path: data/{name}/{split}-*.parquet"]
    return "\n".join(lines)


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


def dataset_info_yaml(out_dir: str | Path) -> str:
    """The card's ``dataset_info``: rows and Parquet bytes per config and split, read from the written shards.

    Besides informing the Hub viewer, it makes a rebuild load fresh: ``load_dataset`` on a local
    folder caches under the folder's name and a hash of the card's metadata (not of the data files),
    so without these numbers a rebuild into the same folder would load the previous build's cache.
    """
    import pyarrow.parquet as pq

    lines = ["dataset_info:"]
    for name, splits in written_splits(out_dir).items():
        lines += [f"- config_name: {name}", "  splits:"]
        total = 0
        for split, paths in splits.items():
            size = sum(p.stat().st_size for p in paths)
            rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
            total += size
            lines += [f"  - name: {split}", f"    num_bytes: {size}", f"    num_examples: {rows}"]
        lines += [f"  download_size: {total}", f"  dataset_size: {total}"]
    return "\n".join(lines)


def files_to_upload(out_dir: str | Path) -> list[str]:
    """The card, its plots and the Parquet shards, relative to ``out_dir``; work files and reports stay local.

    A metadata-only build (the card's ``cpqa_publication``) whose shards hold audio (rehydrated from a
    local copy) is refused: that audio is the user's own copy, not for upload."""
    import pyarrow.parquet as pq

    root = Path(out_dir)
    files = ["README.md"] if (root / "README.md").exists() else []
    shards = sorted((root / "data").rglob("*.parquet"))
    if publication_mode(root) == "metadata-only":
        for shard in shards:
            if {"context", "audio"} & set(pq.read_schema(shard).names):
                raise ValueError(f"{shard}: holds audio (rehydrated?) but {root} was built metadata-only: refusing to upload audio")
    files += [str(p.relative_to(root)) for p in shards]
    return files + sorted(str(p.relative_to(root)) for p in (root / "stats").glob("*.png"))  # the card's plots


def card_header(out_dir: str | Path) -> dict:
    """The YAML header of ``out_dir/README.md`` ({} when there is none)."""
    import yaml

    card = Path(out_dir) / "README.md"
    text = card.read_text() if card.exists() else ""
    return (yaml.safe_load(text.split("---")[1]) or {}) if text.startswith("---") else {}


def publication_mode(out_dir: str | Path) -> str:
    """``full``, ``gated`` or ``metadata-only``, as the card records it (``full`` for older builds)."""
    return card_header(out_dir).get("cpqa_publication", "full")


def written_configs(out_dir: str | Path) -> list[str]:
    """The configs with Parquet shards under ``out_dir/data`` (``qa`` first)."""
    return list(written_splits(out_dir))


_SECTION = re.compile(r"^<!-- cpqa:(\w+) -->\n(.*?)^<!-- /cpqa:\1 -->\n", re.S | re.M)


def card_sections(template: str, configs: list[str]) -> str:
    """The template with each ``<!-- cpqa:NAME -->`` ... ``<!-- /cpqa:NAME -->`` part kept (without its
    marker lines) when NAME is one of ``configs``, and removed otherwise."""
    return _SECTION.sub(lambda m: m.group(2) if m.group(1) in configs else "", template)


def remove_export(out_dir: str | Path) -> list[str]:
    """Remove an export (``EXPORT_ENTRIES``) from ``out_dir``, the card first; returns what was there
    (folders with a trailing ``/``)."""
    removed = []
    for name in EXPORT_ENTRIES:
        path = Path(out_dir) / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(f"{name}/")
        elif path.exists() or path.is_symlink():
            path.unlink()
            removed.append(name)
    return removed


def install_export(staging: str | Path, out_dir: str | Path) -> None:
    """Replace the export in ``out_dir`` by the one written in ``staging`` (then removed): the old card
    goes first and the new card comes last, so a card never stands over another build's data."""
    staging = Path(staging)
    remove_export(out_dir)
    for name in (*EXPORT_ENTRIES[1:], EXPORT_ENTRIES[0]):
        if (staging / name).exists():
            os.replace(staging / name, Path(out_dir) / name)
    shutil.rmtree(staging)


def last_build_id(out_dir: str | Path) -> str | None:
    """The ``build_id`` of ``out_dir/report.json`` (the folder's last build), None without one."""
    report = Path(out_dir) / "report.json"
    try:
        return json.loads(report.read_text()).get("build_id")
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{report}: not JSON ({exc.msg}, line {exc.lineno})") from exc


def check_current(out_dir: str | Path) -> str:
    """The build id of ``out_dir``'s export when it is the export of the folder's last build; else a
    ``FileNotFoundError`` (no export) or ``ValueError`` (another build's, or no build id) in one line."""
    root = Path(out_dir)
    last = last_build_id(root)
    if not (root / "README.md").exists() or not written_splits(root):
        done = f" (its last build, {last}, exported nothing: see report.json)" if last else ""
        expected = "README.md and data/*/*.parquet expected"
        raise FileNotFoundError(f"{root}: no exported dataset here{done}: {expected}")
    exported = card_header(root).get("cpqa_build_id")
    if last is None or exported != last:
        raise ValueError(
            f"{root}: the export (build {exported or 'without id'}) is not that of the folder's last build "
            f"({last or 'no build_id in report.json'}): rebuild with the same command, then push"
        )
    return last


def push(out_dir: str | Path, repo_id: str, private: bool = True, token_env: str = "HF_TOKEN", dry_run: bool = False) -> str:
    """Create the dataset repo (private by default), upload exactly ``files_to_upload``, and turn the Hub's
    access requests on for a gated build; returns its URL. ``dry_run`` contacts nothing."""
    import os

    from huggingface_hub import HfApi

    check_current(out_dir)
    files = files_to_upload(out_dir)
    url = f"https://huggingface.co/datasets/{repo_id}"
    if dry_run:
        return url
    api = HfApi(token=os.environ.get(token_env))  # None lets huggingface_hub use its own login
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(out_dir), repo_id=repo_id, repo_type="dataset", allow_patterns=files, commit_message="Upload cpqa build")
        if publication_mode(out_dir) == "gated":
            api.update_repo_settings(repo_id, gated="manual", repo_type="dataset")
    except Exception as exc:
        raise RuntimeError(_push_error(exc, repo_id, token_env)) from exc
    return url


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
_SEGMENT_COLUMNS = ("segment_id", "recording_id", "source_file", "source_sha256", "license", "clip_start", "clip_end", "duration", "primary_emotion", "emotions", "gender", "transcript", "words")


# Published list columns whose items carry ``start``/``end`` seconds (relative to the clip once exported).
TIMED_LISTS = ("words", "emotion_windows", "gender_windows")


def _clip_seconds(t: float | None, clip_start: float) -> float | None:
    return None if t is None else round(t - clip_start, 6)  # 1 µs: float noise of the subtraction only


def to_clip_time(batch: dict[str, list]) -> dict[str, list]:
    """Batched map: recording-time ``start``/``end`` and ``TIMED_LISTS`` -> ``clip_start``/``clip_end``
    (recording time, provenance) and every listed item's ``start``/``end`` in seconds from the clip's
    first sample (lhotse's convention for a materialised cut). Untimed words (null) stay null."""
    out: dict[str, list] = {"clip_start": list(batch["start"]), "clip_end": list(batch["end"])}
    for name in TIMED_LISTS:
        if name in batch:
            out[name] = [
                None if items is None else [{**item, "start": _clip_seconds(item["start"], s), "end": _clip_seconds(item["end"], s)} for item in items]
                for items, s in zip(batch[name], batch["start"])
            ]
    return out


def segment_table(
    segments: Dataset, models: dict[str, object], pair_counts: dict[str, int], *, licences: list[str] | None = None, audio: bool = True, source_hashes: dict[str, str] | None = None
) -> Dataset:
    """One row per clip: audio (unless ``audio`` is False: metadata-only), provenance with the source's
    sha256 and licence (``licences``, one per row; ``other`` when None), labels, words and windows
    (clip time), ``n_pairs`` (pairs kept), model ids."""
    from .publish import source_columns

    data = with_audio(segments) if audio else segments
    provenance = source_columns(segments["audio_path"], licences if licences is not None else ["other"] * len(segments), source_hashes)
    data = data.map(
        lambda b, idx: {
            "source_file": [Path(p).name for p in b["audio_path"]],
            "source_sha256": [provenance["source_sha256"][i] for i in idx],
            "license": [provenance["license"][i] for i in idx],
            "duration": [round(e - s, 3) for s, e in zip(b["start"], b["end"])],
            "words": b["tagged_words"],
            "n_pairs": [pair_counts.get(sid, 0) for sid in b["segment_id"]],
        },
        batched=True,
        with_indices=True,
        remove_columns=["tagged_words"],
    )
    data = data.map(to_clip_time, batched=True, remove_columns=["start", "end"])
    for name, value in models.items():
        data = data.add_column(name, [value] * len(data))
    keep = ["context"] if audio else []
    keep += [*_SEGMENT_COLUMNS, "emotion_counts", "emotion_windows", "gender_windows", "n_pairs", "language", "aligner", "llm_model", "prompt_version", *models]
    keep += [name for name in ("n_speakers",) if name in data.column_names]  # null without asr.diarize
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
    first = [c for c in ("context", "instruction", "answer", "category", "question_id") if c in joined.column_names]
    return joined.select_columns(first + [c for c in joined.column_names if c not in first])


_EMPATHY_FIRST = ("id", "audio", "text_context", "target_utterance", "desired_response")


def empathy_table(samples: Dataset, audio: bool = True, licence_of: dict[str, str] | None = None, source_hashes: dict[str, str] | None = None) -> Dataset:
    """One row per empathy sample: the sample's columns first, then provenance (source file, its sha256
    and licence (``licence_of`` by source path, ``other`` when absent), clip span in the recording).
    ``audio=False`` (metadata-only publication) leaves the audio out; ``cpqa.py rehydrate`` puts it back."""
    from .publish import source_columns

    licence_of = licence_of or {}
    provenance = source_columns(samples["audio_path"], [licence_of.get(p, "other") for p in samples["audio_path"]], source_hashes)

    def own(batch: dict[str, list], idx: list[int]) -> dict[str, list]:
        ids = [f"{sid}-empathy" for sid in batch["segment_id"]]
        columns = {
            "id": ids, "source_file": [Path(p).name for p in batch["audio_path"]],
            "source_sha256": [provenance["source_sha256"][i] for i in idx], "license": [provenance["license"][i] for i in idx],
        }  # fmt: skip
        if audio:
            columns["audio"] = _embedded(ids, batch["audio_path"], batch["clip_start"], batch["clip_end"])
        return columns

    data = samples.map(own, batched=True, batch_size=16, with_indices=True, desc="embed audio")
    if audio:
        data = data.cast_column("audio", Audio(sampling_rate=SAMPLE_RATE))
    rest = ("segment_id", "recording_id", "source_file", "source_sha256", "license", "clip_start", "clip_end", "prompt_version", "llm_model")
    return data.select_columns([c for c in _EMPATHY_FIRST if audio or c != "audio"] + list(rest))


def write_empathy(
    samples: Dataset | None, out_dir: str | Path, split_of_segment: dict[str, str], split_of_recording: dict[str, str], export_config, licence_of: dict[str, str] | None = None,
    source_hashes: dict[str, str] | None = None,
) -> None:
    """The ``empathy`` config, or none (an earlier build's removed) when there is no sample.

    A sample goes to the split of its clip in the ``segments`` config, else to that of its recording
    there; recordings found only here are split among themselves by recording."""
    from . import splits

    folder = Path(out_dir) / "data" / "empathy"
    if samples is None or len(samples) == 0:
        shutil.rmtree(folder, ignore_errors=True)
        return
    rows = empathy_table(samples, audio=export_config.publish != "metadata-only", licence_of=licence_of, source_hashes=source_hashes)
    others = sorted({rid for rid in rows["recording_id"] if rid not in split_of_recording})
    assigned = splits.assign_splits(splits.split_keys(others), export_config.splits, export_config.seed)
    split_of = {**split_of_recording, **dict(zip(others, assigned))}
    names = [split_of_segment.get(sid) or split_of[rid] for sid, rid in zip(rows["segment_id"], rows["recording_id"])]
    write_config(rows, out_dir, "empathy", names)


def empathy_card_values(samples: Dataset | None) -> dict[str, str]:
    """``$n_empathy`` and ``$empathy_strategy_table`` (samples per family, primary emotion and strategy); the
    card shows them only when the ``empathy`` config was written (``card_sections``)."""
    if samples is None:
        return {"n_empathy": "0", "empathy_strategy_table": "(none)"}
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


def _quota_table(quota: dict | None) -> str:
    if not quota:
        return "(none)"
    rows = [(label, q["asked"], q["candidates"], q["sampled"], q["delivered"]) for label, q in quota.items()]
    return markdown_table(("primary emotion", "asked", "candidates", "sampled (with top-ups)", "delivered"), rows)


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
        "language": "\n- ".join(sorted({l for l in segment_rows["language"] if l})) or "multilingual",  # YAML list items
        "pretty_name": "CPQA: contextual paralinguistic QA" + (" (demo build)" if c.profile == "tiny" else ""),
        "size_category": _size_category(len(qa)),
        "profile_note": PROFILE_NOTES.get(c.profile, ""),
        "load_path": load_path,
        "n_pairs": str(len(qa)),
        "n_segments": str(len(segment_rows)),
        "n_recordings": str(len(set(segment_rows["recording_id"]))),
        "hours": f"{sum(segment_rows['duration']) / 3600:.2f}",
        "quota_table": _quota_table(report.get("quota")),
        "language_table": _counts_table(segment_rows["language"], "language"),
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
        "topup_rounds": str(c.condense.topup_rounds),
        "pairs_per_segment": str(c.qa.pairs_per_segment),
        "prompt_version": ", ".join(sorted(set(qa["prompt_version"]))) if len(qa) else "(none)",
        "duplicate_threshold": f"{c.postfilter.duplicate_threshold:g}",
        "sources": sources,
    }


def publication_values(out_dir: str | Path, mode: str, licence: str, segment_splits: list[str], qa_splits: list[str], export_config) -> dict[str, str]:
    """The card fields that depend on the written files, the publication mode and the splits (every
    configured split is listed, an empty one with 0: a recording-disjoint split of few recordings can leave one empty)."""
    from .publish import gating_yaml, publication_text

    names, split_by = list(export_config.splits), export_config.split_by
    clips, pairs = Counter(segment_splits), Counter(qa_splits)
    rule = "one split" if len(names) == 1 else f"{split_by}-disjoint: no {split_by} has clips in two splits"
    return {
        "dataset_info": dataset_info_yaml(out_dir),
        "configs": configs_yaml(out_dir),
        "publish": mode,
        "gating": gating_yaml(mode),
        "publication_note": publication_text(mode, licence),
        "split_name": next((n for n in names if clips[n]), names[0]),
        "split_rule": rule,
        "split_table": markdown_table(("split", "clips", "QA pairs"), [(n, clips[n], pairs[n]) for n in names]),
    }


def write_dataset(
    segments: Dataset, pairs: Dataset, config, out_dir: str | Path, *, models: dict[str, object], report: dict,
    card_template: str, license: str, sources: str, build_id: str, licences: list[str] | None = None,
    empathy: Dataset | None = None, source_hashes: dict[str, str] | None = None, load_path: str | None = None,
) -> tuple[Dataset, Dataset]:
    """The ``qa`` and ``segments`` configs (and ``empathy`` when it has a sample) in the publication mode and
    splits of ``config.export``, and the card, which names only the configs written and carries ``build_id``.

    ``licences`` gives each segment's source licence (default: ``license`` for all); the card states the
    most restrictive. ``source_hashes`` (path -> sha256, the ingest plan's) spares hashing each source
    again; its statistics (``build.publishing.stats``) are computed from the written tables. ``load_path``: the folder
    the card tells users to load (default ``out_dir``; the build's folder when ``out_dir`` is a staging one).
    Returns the (qa, segments) tables as written (before the split into files)."""
    from . import splits
    from .publish import most_restrictive
    from .stats import card_section

    e = config.export
    licences = licences if licences is not None else [license] * len(segments)
    segment_rows = segment_table(segments, models, Counter(pairs["segment_id"]), licences=licences, audio=e.publish != "metadata-only", source_hashes=source_hashes)
    qa_rows = qa_table(pairs, segment_rows)
    segment_splits = splits.assign_splits(splits.split_keys(segment_rows["recording_id"]), e.splits, e.seed)
    split_of = dict(zip(segment_rows["segment_id"], segment_splits))
    qa_splits = [split_of[sid] for sid in qa_rows["segment_id"]]
    write_config(qa_rows, out_dir, "qa", qa_splits)
    write_config(segment_rows, out_dir, "segments", segment_splits)
    write_empathy(empathy, out_dir, split_of, dict(zip(segment_rows["recording_id"], segment_splits)), e, dict(zip(segments["audio_path"], licences)), source_hashes)
    licence = most_restrictive(licences)
    values = card_values(
        config, qa_rows, segment_rows, report, models, license=licence, sources=sources,
        load_path=load_path or str(out_dir),
    )  # fmt: skip
    values.update(empathy_card_values(empathy))
    values.update(publication_values(out_dir, e.publish, licence, segment_splits, qa_splits, e))
    values["stats_section"] = card_section(out_dir)
    values["build_id"] = build_id
    template = card_sections(card_template, written_configs(out_dir))
    (Path(out_dir) / "README.md").write_text(render_card(template, values))
    return qa_rows, segment_rows
