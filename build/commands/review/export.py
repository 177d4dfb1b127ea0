"""``cpqa.py review export``: the review's configs beside ``qa``, and the card's "Human review" section.

Configs (derived from the action log alone: rerun at any time, same result for the same log):
- ``qa_reviewed``: the LLM pairs whose final verdict keeps them (``build.commands.review.state``), in ``qa``'s
  order and splits, with ``qa``'s columns (an edit replaces ``instruction``, ``answer``, ``category``)
  and ``edited`` (bool), ``reviewed_by`` (annotators, sorted), ``original_instruction`` and
  ``original_answer`` (the LLM's text when edited, else null);
- ``qa_human``: the pairs people wrote, clip by clip in ``segments`` order (a clip's in the order
  written), one row each with the same columns:
  the clip's columns from ``segments`` (audio, labels, clip-relative word times), the pair's
  ``instruction``, ``answer``, ``category``, ``question_id`` (``<segment_id>-h<action id>``),
  ``reviewed_by`` = [its author], ``edited`` false, and null ``llm_model`` / ``prompt_version``; split:
  its clip's;
- ``empathy_reviewed``: the kept empathy samples with ``empathy``'s columns (an edit replaces the
  response text and strategy) and ``edited``, ``reviewed_by``, ``original_response``.
A config with no row is not written (an earlier export's is removed). Rows are streamed a few at a time.

The card (``OUT/README.md``): its YAML ``configs`` and ``dataset_info`` are rewritten from the files
under ``data/`` (so ``load_dataset(OUT, "qa_human")`` works and loads fresh) and the section between
``SECTION_START`` and ``SECTION_END`` is replaced (appended the first time); its Table 1 plot is
``OUT/stats/human_review_categories.png``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Features, List, Value

from ...publishing.card import configs_yaml, dataset_info_yaml
from ...publishing.export import MAX_SHARD_BYTES
from ...publishing.stats import plot
from .folder import shards
from .report import FIGURE, human_review_section, table1_sets
from .state import Final, ReviewState
from .store import human_pair_id

SECTION_START = "<!-- cpqa review: start -->"
SECTION_END = "<!-- cpqa review: end -->"
REVIEW_COLUMNS = {
    "edited": Value("bool"),
    "reviewed_by": List(Value("string")),
    "original_instruction": Value("string"),
    "original_answer": Value("string"),
}
EMPATHY_COLUMNS = {
    "edited": Value("bool"),
    "reviewed_by": List(Value("string")),
    "original_response": Value("string"),
}
BATCH = 16


def _schema(path: Path, extra: dict) -> pa.Schema:
    """The Arrow schema (``datasets`` features in its metadata) of ``path``'s table plus ``extra``."""
    features = Features.from_arrow_schema(pq.read_schema(path))
    for name, feature in extra.items():
        features[name] = feature
    return features.arrow_schema


class ConfigWriter:
    """Writes ``data/<config>/<split>-XXXXX-of-YYYYY.parquet`` from batches of rows: into a temporary
    folder, each split's shards rolled over at ``MAX_SHARD_BYTES``, then swapped in whole."""

    def __init__(self, out: Path, config: str, schema: pa.Schema):
        self.final, self.schema = out / "data" / config, schema
        self.tmp = self.final.with_name(f".{config}.tmp")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.files: dict[str, list[Path]] = {}
        self.writer, self.split, self.size, self.rows = None, None, 0, 0

    def write(self, split: str, rows: list[dict]) -> None:
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=self.schema)
        if self.writer is None or split != self.split or self.size > MAX_SHARD_BYTES:
            self._close_file()
            path = self.tmp / f"{split}-{len(self.files.get(split, [])):05d}.parquet"
            self.files.setdefault(split, []).append(path)
            self.writer, self.split, self.size = pq.ParquetWriter(path, self.schema), split, 0
        self.writer.write_table(table)
        self.size += table.nbytes
        self.rows += len(rows)

    def _close_file(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def close(self) -> int:
        """Swap the written config in (or remove it when no row was written); returns the rows."""
        self._close_file()
        for split, paths in self.files.items():
            for i, path in enumerate(paths):
                path.rename(self.tmp / f"{split}-{i:05d}-of-{len(paths):05d}.parquet")
        shutil.rmtree(self.final, ignore_errors=True)
        if self.rows:
            self.tmp.rename(self.final)
        else:
            shutil.rmtree(self.tmp)
        return self.rows


def _batches(out: Path, config: str):
    """(split, rows as dicts) of ``config``, ``BATCH`` rows at a time, in written order."""
    for split, path in shards(out, config):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH):
            yield split, batch.to_pylist()


def _reviewed(row: dict, result: Final) -> dict:
    edit = result.edit
    row = {
        **row,
        "edited": edit is not None,
        "reviewed_by": result.reviewed_by,
        "original_instruction": None,
        "original_answer": None,
    }
    if edit is not None:
        row.update(original_instruction=row["instruction"], original_answer=row["answer"])
        row.update(instruction=edit.question, answer=edit.answer, category=edit.category)
    return row


def write_qa_reviewed(state: ReviewState) -> int:
    out = state.build.out
    finals = state.pair_finals()
    writer = ConfigWriter(out, "qa_reviewed", _schema(shards(out, "qa")[0][1], REVIEW_COLUMNS))
    for split, rows in _batches(out, "qa"):
        kept = [r for r in rows if r["question_id"] in finals and finals[r["question_id"]].kept]
        writer.write(split, [_reviewed(r, finals[r["question_id"]]) for r in kept])
    return writer.close()


def write_qa_human(state: ReviewState) -> int:
    """One row per human pair, clip by clip in ``segments`` order (each clip's pairs in the order written)."""
    out = state.build.out
    schema = _schema(shards(out, "qa")[0][1], REVIEW_COLUMNS)
    by_clip: dict[str, list] = {}
    for action in state.human:
        by_clip.setdefault(action.segment_id, []).append(action)
    writer = ConfigWriter(out, "qa_human", schema)
    for split, clips in _batches(out, "segments"):
        rows = []
        for clip in clips:
            for action in by_clip.get(clip["segment_id"], []):
                row = {name: clip.get(name) for name in schema.names}
                row.update(instruction=action.question, answer=action.answer, category=action.category)
                row.update(question_id=human_pair_id(action), llm_model=None, prompt_version=None)
                rows.append({**row, "edited": False, "reviewed_by": [action.annotator]})
        writer.write(split, rows)
    return writer.close()


def write_empathy_reviewed(state: ReviewState) -> int:
    out = state.build.out
    finals = state.empathy_finals()
    if not shards(out, "empathy"):
        shutil.rmtree(out / "data" / "empathy_reviewed", ignore_errors=True)
        return 0
    writer = ConfigWriter(out, "empathy_reviewed", _schema(shards(out, "empathy")[0][1], EMPATHY_COLUMNS))
    for split, rows in _batches(out, "empathy"):
        kept = []
        for row in (r for r in rows if r["id"] in finals and finals[r["id"]].kept):
            result = finals[row["id"]]
            response = dict(row["desired_response"])
            row = {
                **row,
                "edited": result.edit is not None,
                "reviewed_by": result.reviewed_by,
                "original_response": None,
            }
            if result.edit is not None:
                row["original_response"] = response["text"]
                row["desired_response"] = {
                    **response,
                    "text": result.edit.answer,
                    "response_strategy": result.edit.strategy,
                }
            kept.append(row)
        writer.write(split, kept)
    return writer.close()


def replace_yaml_block(card: str, key: str, block: str) -> str:
    """The card with the top-level YAML entry ``key:`` (its indented or listed lines too) replaced."""
    lines = card.split("\n")
    start = lines.index(f"{key}:")
    end = next(i for i in range(start + 1, len(lines)) if lines[i] and not lines[i].startswith((" ", "-")))
    return "\n".join(lines[:start] + block.split("\n") + lines[end:])


def replace_section(card: str, section: str) -> str:
    """The card with its review section replaced by ``section``, or with it appended."""
    block = f"{SECTION_START}\n{section.rstrip()}\n{SECTION_END}"
    if SECTION_START in card and SECTION_END in card:
        head, rest = card.split(SECTION_START, 1)
        return head + block + rest.split(SECTION_END, 1)[1]
    return card.rstrip("\n") + "\n\n" + block + "\n"


def export_review(state: ReviewState) -> tuple[dict[str, int], str]:
    """Write the three configs and the card's section; returns (rows per config, the section's markdown)."""
    out = state.build.out
    rows = {
        "qa_reviewed": write_qa_reviewed(state),
        "qa_human": write_qa_human(state),
        "empathy_reviewed": write_empathy_reviewed(state),
    }
    (out / FIGURE).parent.mkdir(parents=True, exist_ok=True)
    plot(table1_sets(state), "categories", out / FIGURE)  # uploaded by push with the card's other plots
    section = human_review_section(state, rows)
    card_path = out / "README.md"
    card = card_path.read_text()
    card = replace_yaml_block(card, "configs", configs_yaml(out))
    card = replace_yaml_block(card, "dataset_info", dataset_info_yaml(out))
    tmp = card_path.with_name("README.md.tmp")
    tmp.write_text(replace_section(card, section))
    tmp.replace(card_path)
    return rows, section
