"""`cpqa.py evaluate`: score a speech-LLM on CPQA-style QA sets, with controls and confidence intervals.

Inputs. Any AudioBench-format set: a folder this project built (config ``qa``), a local Parquet
folder, a ``save_to_disk`` folder, or a Hub id, with the columns ``context`` (audio), ``instruction``
(question) and ``answer`` (reference). Optional columns and what stands in for them when absent:

- ``question_id``: ``q-`` + sha256(clip audio bytes, question)[:16], stable across runs and copies;
- ``segment_id`` (the clip, for bootstrap resampling and per-clip correlation): ``clip-`` + the
  sha256 of the clip's audio bytes[:16], so questions on the same audio group together;
- ``category``: the Table-1 rules of ``build.categories`` (the build's categoriser without an LLM);
  an empty category is ``unknown``;
- ``transcript`` (or ``words``, joined): needed only by the text-only control.

With ``--predictions``, a line's ``qa_set`` (when it has one) picks the set it answers, matched on the
set's label: derived question ids collide between two sets over the same clips.

Outputs in OUT: ``predictions.jsonl`` (qa_set, question_id, window, answer, error: one line per
answered window), ``results.json`` (per set the metric's results, with ``controls``) and
``results.md`` (Table 2 with 95 % bootstrap CIs over clips, per category, the controls per category,
and, for two sets, the per-clip and the cell-level correlations). Caches: ``answer-cache/``
(speech-LLM answers by model, parameters, window audio hash and question), ``judge-cache/`` and
``llm-cache/`` (text-only control), so a rerun after any interruption generates and judges only
what is missing.

Controls (on unless ``--no-controls``): (a) ``text_only``: a text LLM answers from the transcript
alone; (b) ``silenced``: the same speech-LLM answers on the clip with every sample set to zero (same
length, same windows). A category where ``text_only`` scores as well as the audio does not need the
voice.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from metrics.cpqa import report, speech_llm  # metrics/ sits beside build/ at the repository root
from metrics.cpqa.judge import check_endpoint, make_judges

from .categories import categorise

REPO = Path(__file__).resolve().parents[1]

CONTROL_PROMPT = (
    "You read the transcript of a recording; you cannot hear it. Answer the question about the recording "
    "as well as the transcript allows, in one or two sentences.\n\nTranscript:\n{transcript}\n\nQuestion: {question}"
)
CONTROL_WINDOW = "transcript"
UNKNOWN_CATEGORY = "unknown"


@dataclass
class QaSet:
    """One QA set, one entry per question in every list; ``audio`` is the lazily decoded column."""

    label: str
    source: str
    question_ids: list[str]
    questions: list[str]
    references: list[str]
    categories: list[str]
    clip_ids: list[str]
    audio: object
    transcripts: list[str] | None
    notes: list[str] = field(default_factory=list)


# --- reading sets ------------------------------------------------------------------------------------


def open_split(source: str, name: str | None, split: str):
    """A ``datasets.Dataset`` from a save_to_disk folder, a built or Parquet folder, or a Hub id."""
    import datasets

    path = Path(source)
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        data = datasets.load_from_disk(source)
    else:
        if name is None:
            configs = datasets.get_dataset_config_names(source)
            name = "qa" if "qa" in configs else None  # this project's builds: the QA pairs
        data = datasets.load_dataset(source, name)
    if isinstance(data, datasets.DatasetDict):
        if split in data:
            data = data[split]
        elif len(data) == 1:  # a Parquet folder without split names reads as "train"
            data = next(iter(data.values()))
        else:
            raise ValueError(f"{source}: no split {split!r}; it has {sorted(data)}")
    return data


def load_qa_set(source: str, label: str, *, name: str | None = None, split: str = "test", limit: int | None = None) -> QaSet:
    """Read one set and fill in what an AudioBench-format set may lack (see the module docstring)."""
    data = open_split(source, name, split)
    missing = [c for c in ("context", "instruction", "answer") if c not in data.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; an AudioBench-format set has context (audio), instruction, answer (it has {data.column_names})")
    if limit:
        data = data.select(range(min(limit, len(data))))
    questions = list(data["instruction"])
    notes = []
    audio_hashes = None
    if "question_id" not in data.column_names or "segment_id" not in data.column_names:
        audio_hashes = clip_hashes(data, source)
    if "question_id" in data.column_names:
        question_ids = list(data["question_id"])
    else:
        question_ids = [question_id(h, q) for h, q in zip(audio_hashes, questions)]
        notes.append("question ids derived from the clip audio and the question")
    if "segment_id" in data.column_names:
        clip_ids = list(data["segment_id"])
    else:
        clip_ids = [f"clip-{h[:16]}" for h in audio_hashes]
        notes.append(f"clips grouped by audio hash: {len(set(clip_ids))} clips")
    if "category" in data.column_names:
        categories = [c or UNKNOWN_CATEGORY for c in data["category"]]
    else:
        categories = categorise(questions)
        notes.append("no category column: categories from the Table-1 rules (build/categories.py)")
    return QaSet(label, source, question_ids, questions, list(data["answer"]), categories, clip_ids,
                 data["context"], transcripts_of(data), notes)


def clip_hashes(data, source: str) -> list[str]:
    """sha256 of each clip's encoded audio (the file bytes), read without decoding."""
    import datasets

    column = data.select_columns(["context"])
    if isinstance(column.features["context"], datasets.Audio):
        column = column.cast_column("context", datasets.Audio(decode=False))
    hashes = []
    for index, row in enumerate(column):
        clip = row["context"]
        if isinstance(clip, dict) and clip.get("bytes"):
            payload = clip["bytes"]
        else:
            file = clip.get("path") if isinstance(clip, dict) else clip
            try:
                payload = Path(file).read_bytes()
            except (OSError, TypeError) as error:
                raise ValueError(f"{source}: row {index}: cannot read the audio to derive its ids ({error})") from error
        hashes.append(hashlib.sha256(payload).hexdigest())
    return hashes


def question_id(audio_hash: str, question: str) -> str:
    return "q-" + hashlib.sha256(f"{audio_hash}\n{question}".encode("utf-8")).hexdigest()[:16]


def transcripts_of(data) -> list[str] | None:
    if "transcript" in data.column_names:
        return [t or "" for t in data["transcript"]]
    if "words" in data.column_names:
        return [" ".join(w["word"].strip() for w in words or []) for words in data["words"]]
    return None


Predictions = dict[tuple[str | None, str], list[tuple[str, str | None, str | None]]]


def read_predictions(path: str) -> Predictions:
    """``{(qa_set, question_id): [(window, text, error), ...]}`` from JSONL lines of ``{question_id,
    prediction}`` (a string, or a list of window answers) or of this command's own ``predictions.jsonl``.
    ``qa_set`` is the line's own field, or None on lines without one (they answer any set): derived
    question ids collide between two sets over the same clips, so a two-set file keeps them apart."""
    out: Predictions = {}
    with open(path) as lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{n}: not JSON ({error})") from error
            key = (record.get("qa_set"), record.get("question_id"))
            if "question_id" in record and "answer" in record and "window" in record:
                out.setdefault(key, []).append((record["window"], record["answer"], record.get("error")))
            elif "question_id" in record and "prediction" in record:
                texts = record["prediction"] if isinstance(record["prediction"], list) else [record["prediction"]]
                names = ["full"] if len(texts) == 1 else [f"window_{k}" for k in range(len(texts))]
                out[key] = [(w, t, None) for w, t in zip(names, texts)]
            else:
                raise ValueError(f"{path}:{n}: each line needs question_id and prediction (or window and answer)")
    return out


def set_predictions(predictions: Predictions, qa: QaSet, path: str) -> list[list[speech_llm.Answer]]:
    """The answers to each of ``qa``'s questions: its own lines (``qa_set`` = its label), else lines
    without ``qa_set``; a question with neither is an error naming the file."""
    found = [predictions.get((qa.label, q), predictions.get((None, q))) for q in qa.question_ids]
    lacking = [q for q, answers in zip(qa.question_ids, found) if answers is None]
    if lacking:
        labels = sorted({label for label, _ in predictions if label is not None})
        hint = f" (its qa_set labels: {', '.join(labels)}; --labels names the sets)" if labels else ""
        raise ValueError(f"{path}: no prediction for {len(lacking)} question(s) of {qa.label}, e.g. {lacking[0]}{hint}")
    return [[speech_llm.Answer(*answer) for answer in answers] for answers in found]


# --- the run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvaluateOptions:
    """What ``cpqa.py evaluate`` was asked (see its ``--help``)."""

    datasets: list[str]
    judges: list[dict]
    out: str
    labels: list[str] | None = None
    name: str | list[str] | None = None  # one config for all datasets, or one per dataset
    split: str = "test"
    limit: int | None = None
    prompts: tuple[str, ...] = ("audiobench", "paralinguistic")
    backend: str = "transformers"  # transformers | openai | predictions
    model: str = speech_llm.DEFAULT_MODEL
    base_url: str | None = None
    api_key_env: str | None = None  # none for local servers
    predictions: str | None = None
    batch_size: int = 4
    concurrency: int = 8
    device: str | None = None
    window_s: float | None = speech_llm.WINDOW_SECONDS  # None: the whole clip
    controls: bool = True
    control_model: dict | None = None  # default: the first endpoint judge's model
    quiet: bool = False


def evaluate_sets(options: EvaluateOptions, say: Callable[[str], None] = print) -> dict:
    """Answer, judge and report every set; returns ``{label: results}`` as written to results.json."""
    import evaluate

    labels = options.labels or [Path(d).name or d for d in options.datasets]
    if len(labels) != len(options.datasets) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels: give one distinct name per dataset ({len(options.datasets)}), got {labels}")
    out = Path(options.out)
    # everything that can fail fast does, before any audio is decoded or any answer generated
    judges = make_judges(options.judges)  # presets resolved, settings checked
    for judge in judges:
        if judge.call is None:
            check_endpoint(f"judge {judge.name!r}", judge.base_url, judge.api_key_env)
    backend = make_backend(options)
    names = config_names(options)
    sets = [load_qa_set(d, label, name=n, split=options.split, limit=options.limit) for d, label, n in zip(options.datasets, labels, names)]
    predictions = read_predictions(options.predictions) if options.backend == "predictions" else None
    given = [set_predictions(predictions, qa, options.predictions) for qa in sets] if predictions is not None else None
    control_client = text_control_client(options, judges) if options.controls else None
    metric = evaluate.load(str(REPO / "metrics" / "cpqa"))

    out.mkdir(parents=True, exist_ok=True)
    results, prediction_lines = {}, []
    for index, qa in enumerate(sets):
        for note in qa.notes:
            say(f"{qa.label}: {note}")
        if given is not None:
            answers = given[index]
        else:
            answers = generate(backend, qa, options, "answer", say)
        prediction_lines += [
            {"qa_set": qa.label, "question_id": q, "window": a.window, "answer": a.text, "error": a.error}
            for q, item in zip(qa.question_ids, answers) for a in item
        ]
        # written before judging: a judge outage loses nothing, and the answers are cached as well
        write_jsonl(out / "predictions.jsonl", prediction_lines)
        answered_by = backend.name if backend is not None else f"predictions:{options.predictions}"
        results[qa.label] = judge_answers(metric, qa, answers, options, answered_by)
        check_judged(results[qa.label], qa.label, out)
        if options.controls:
            results[qa.label]["controls"] = run_controls(metric, qa, options, backend, control_client, say)
        summary = results[qa.label]
        say(f"{qa.label}: score {summary['score']:.2f} (successful only {_fmt(summary['score_successful'], 2)}, success rate {summary['success_rate']:.3f})")
        for judge_name, calls in summary.get("judge_calls", {}).items():
            say(f"  judge {judge_name}: {calls['summary']}")
    for res in results.values():
        res["config"]["cpqa_version"] = project_version()
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "results.md").write_text(results_markdown(results))
    say(f"wrote {out / 'predictions.jsonl'}, {out / 'results.json'} and {out / 'results.md'}")
    return results


def config_names(options: EvaluateOptions) -> list[str | None]:
    """The config of each dataset: ``name`` for all, or a list with one per dataset (or one for all)."""
    names = list(options.name) if isinstance(options.name, (list, tuple)) else [options.name]
    if len(names) == 1:
        return names * len(options.datasets)
    if len(names) != len(options.datasets):
        raise ValueError(f"--name: give one config for every dataset, or one per dataset ({len(options.datasets)}), got {names}")
    return names


def make_backend(options: EvaluateOptions):
    """The speech-LLM backend, loaded now: missing weights or an unreachable server end the run here."""
    if options.backend == "predictions":
        if not options.predictions:
            raise ValueError("--backend predictions needs --predictions FILE")
        return None
    if options.predictions:
        raise ValueError(f"--predictions is judged as it is, with --backend predictions; --backend {options.backend} would answer anew")
    if options.backend == "openai":
        if not options.base_url:
            raise ValueError("--backend openai needs --base-url (e.g. http://localhost:8000/v1 for vllm serve)")
        check_endpoint(f"speech-LLM {options.model!r}", options.base_url, options.api_key_env)
        return speech_llm.OpenAiBackend(options.model, options.base_url, options.api_key_env, concurrency=options.concurrency)
    if options.backend == "transformers":
        return speech_llm.TransformersBackend(options.model, options.device, batch_size=options.batch_size)
    raise ValueError(f"--backend {options.backend!r}: one of transformers, openai, predictions")


def generate(backend, qa: QaSet, options: EvaluateOptions, stage: str, say, silence: bool = False) -> list[list]:
    """Every window answered (from OUT/answer-cache where it can be); says how many were cached."""
    from tqdm.auto import tqdm

    with tqdm(desc=f"{stage:<10}{qa.label}", unit=" windows", disable=options.quiet, file=sys.stderr) as bar:
        answers = speech_llm.answer_questions(
            qa.questions, qa.audio, model=backend, window_seconds=options.window_s,
            cache_dir=Path(options.out) / "answer-cache", silence=silence, progress=bar.update,
        )
    windows = [a for item in answers for a in item]
    failed = sum(a.error is not None for a in windows)
    say(f"{qa.label}: {stage}: {len(windows)} windows, {sum(a.cached for a in windows)} from the answer cache, {failed} failed")
    return answers


def judge_answers(metric, qa: QaSet, answers: list[list], options: EvaluateOptions, answered_by: str) -> dict:
    return metric.compute(
        questions=qa.questions,
        references=qa.references,
        predictions=[[a.text or "" for a in item] for item in answers],
        prediction_windows=[[a.window for a in item] for item in answers],
        prediction_errors=[[a.error for a in item] for item in answers],
        categories=qa.categories,
        clip_ids=qa.clip_ids,
        judges=options.judges,
        prompts=list(options.prompts),
        cache_dir=str(Path(options.out) / "judge-cache"),
        max_concurrency=options.concurrency,
        speech_llm=answered_by,
        window_seconds=options.window_s,
    )


def check_judged(results: dict, label: str, out: Path) -> None:
    """No judgement succeeded: one line with the first judge error; the answers are already saved."""
    if results["success_rate"] == 0:
        errors = (j["error"] for item in results["items"] for per in item["judgements"].values() for j in per.values())
        first = next((e for e in errors if e), "no error recorded")
        raise ValueError(f"{label}: every judgement failed (first: {first}); answers are saved in {out / 'predictions.jsonl'} and cached, rerun when the judge is back")


def text_control_client(options: EvaluateOptions, judges: list):
    """The text LLM of the text-only control: ``--control-model``, else the first endpoint judge's model."""
    from metrics.cpqa.llm_client import LlmClient

    if options.control_model is not None:
        spec = make_judges([options.control_model])[0]
        check_endpoint(f"control model {spec.name!r}", spec.base_url, spec.api_key_env)
    else:
        spec = next((j for j in judges if j.call is None), None)
    if spec is None:
        return None
    return LlmClient(spec.base_url, spec.model, api_key_env=spec.api_key_env,
                     cache_dir=Path(options.out) / "llm-cache", concurrency=options.concurrency)


def text_only_answers(client, qa: QaSet) -> list[list]:
    requests = [
        {"messages": [{"role": "user", "content": CONTROL_PROMPT.format(transcript=t, question=q)}], "temperature": 0.0, "max_tokens": 256}
        for q, t in zip(qa.questions, qa.transcripts)
    ]
    return [[speech_llm.Answer(CONTROL_WINDOW, r.text, r.error)] for r in client.complete_many(requests)]


def run_controls(metric, qa: QaSet, options: EvaluateOptions, backend, client, say) -> dict:
    """``{"text_only": results | {"skipped": why}, "silenced": results | {"skipped": why}}``."""
    controls = {}
    if qa.transcripts is None:
        controls["text_only"] = {"skipped": "the set has no transcript or words column"}
    elif client is None:
        controls["text_only"] = {"skipped": "no text LLM: give --control-model or an endpoint judge"}
    else:
        controls["text_only"] = judge_answers(metric, qa, text_only_answers(client, qa), options, f"text-only:{client.model}")
    if backend is None:
        controls["silenced"] = {"skipped": "answers come from a predictions file: no speech-LLM to ask"}
    else:
        silenced = generate(backend, qa, options, "silenced", say, silence=True)
        controls["silenced"] = judge_answers(metric, qa, silenced, options, f"silenced:{backend.name}")
    for name, result in controls.items():
        if "skipped" in result:
            say(f"{qa.label}: {name} control skipped: {result['skipped']}")
    return controls


# --- writing -----------------------------------------------------------------------------------------


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    tmp.replace(path)


def project_version() -> str:
    """The git commit of this checkout (``-dirty`` with local changes), or ``unknown`` outside git."""
    try:
        described = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return described.stdout.strip() or "unknown"


def _window(seconds) -> str:
    return "whole clip" if seconds is None else f"first and last {seconds:g} s"


def _fmt(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_markdown(results: dict) -> str:
    config = next(iter(results.values()))["config"]
    judges = ", ".join(f"{j['name']} ({j.get('model') or j.get('kind')}, temperature {j.get('params', {}).get('temperature', '–')})" for j in config["judges"])
    lines = [
        "# CPQA evaluation", "",
        f"speech-LLM: {config['speech_llm']} · window: {_window(config['window_seconds'])} · judges: {judges} · "
        f"judge prompt version: {config['prompt_version']} · cpqa {config.get('cpqa_version', 'unknown')}", "",
        "Scores 0-100 (failed judgements count 0); 95 % CI: bootstrap over clips.", "",
        report.table2_markdown({label: res for label, res in results.items()}), "",
    ]
    for label, res in results.items():
        lines += [f"## {label}: by QA category", "", report.category_table_markdown(res), ""]
        controls = res.get("controls")
        if controls:
            lines += [f"## {label}: controls (does the answer need the voice?)", ""]
            lines += [f"- {name}: skipped ({c['skipped']})" for name, c in controls.items() if "skipped" in c]
            lines += ["", report.controls_markdown(res, controls.get("text_only"), controls.get("silenced")), ""]
    if len(results) == 2:
        (a, res_a), (b, res_b) = results.items()
        lines += [f"## Per-clip correlation, {a} vs {b}", "", "| judge | prompt | clips | Pearson | Spearman |", "|---|---|---|---|---|"]
        for judge_name, by_prompt in res_a["judges"].items():
            for prompt in by_prompt:
                c = report.clip_correlation(res_a, res_b, judge_name, prompt)
                lines.append(f"| {judge_name} | {prompt} | {c['n_clips']} | {_fmt(c['pearson'])} | {_fmt(c['spearman'])} |")
        c = report.cell_correlation(res_a, res_b)
        lines += ["", f"## Cell-level correlation, {a} vs {b}", "",
                  f"Over the {c['n_cells']} judge x prompt x category cells both sets have: Pearson {_fmt(c['pearson'])}, Spearman {_fmt(c['spearman'])}.", ""]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip("\n") + "\n"
