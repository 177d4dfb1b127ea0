"""`cpqa.py evaluate`: score a speech-LLM on CPQA-style QA sets, with controls and confidence intervals.

Inputs. Any AudioBench-format set: a folder this project built (config ``qa``), a local Parquet
folder, a ``save_to_disk`` folder, or a Hub id, with the columns ``context`` (audio), ``instruction``
(question) and ``answer`` (reference). Optional columns and what stands in for them when absent:

- ``question_id``: ``q-`` + sha256(clip audio bytes, question)[:16], stable across runs and copies (the
  same question again on the same clip: ``-2``, ``-3``, ... in row order); a given column must not repeat;
- ``segment_id`` (the clip, for bootstrap resampling and per-clip correlation): ``clip-`` + the
  sha256 of the clip's audio bytes[:16], so questions on the same audio group together;
- ``category``: the Table-1 rules of ``build.models.categories`` (the build's categoriser without an LLM);
  an empty category is ``unknown``;
- ``transcript`` (or ``words``, joined): needed only by the text-only control.

With ``--predictions``, a line's ``qa_set`` (when it has one) picks the set it answers, matched on the
set's label: derived question ids collide between two sets over the same clips.

Outputs in OUT: ``predictions.jsonl`` (qa_set, question_id, window, answer, error: one line per
answered window), ``results.json`` (per set the metric's results, with ``controls``) and
``results.md`` (Table 2 with 95 % bootstrap CIs over clips, per category, the controls per category,
and, for two sets, the per-clip and the cell-level correlations; clips are paired across sets by the
sha256 of their audio bytes, recorded on every item as ``audio_sha256``). Caches: ``answer-cache/``
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

from ..models.categories import categorise

REPO = Path(__file__).resolve().parents[2]

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
    audio_hashes: list[str] | None = None  # sha256 of each question's clip bytes: the key across sets


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
    check_limit(limit)
    data = open_split(source, name, split)
    missing = [c for c in ("context", "instruction", "answer") if c not in data.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; an AudioBench-format set has context (audio), instruction, answer (it has {data.column_names})")
    if limit is not None:
        data = data.select(range(min(limit, len(data))))
    questions = list(data["instruction"])
    notes = []
    audio_hashes = clip_hashes(data, source)  # also keys clips across sets (report.clip_correlation)
    if "question_id" in data.column_names:
        question_ids = list(data["question_id"])
        check_unique_ids(question_ids, source)
    else:
        question_ids = derived_question_ids(audio_hashes, questions)
        repeated = sum(q.count("-") > 1 for q in question_ids)  # "q-<hex>-2": a question asked again
        again = f" ({repeated} repeated question(s) on one clip numbered -2, -3, ...)" if repeated else ""
        notes.append(f"question ids derived from the clip audio and the question{again}")
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
                 data["context"], transcripts_of(data), notes, audio_hashes)


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"--limit {limit}: give a positive number of questions per set (none: all)")


def check_unique_ids(question_ids: list, source: str) -> None:
    """A set's own ``question_id`` column names each question once: answers are matched by it."""
    first: dict = {}
    for row, qid in enumerate(question_ids):
        if first.setdefault(qid, row) != row:
            raise ValueError(f"{source}: question_id {qid!r} is on rows {first[qid]} and {row}; "
                             "each question needs its own id")


def derived_question_ids(audio_hashes: list[str], questions: list[str]) -> list[str]:
    """``question_id`` of each row; the same question asked again on the same clip (two annotators
    can) gets ``-2``, ``-3``, ... in row order, so that every answer line names one question."""
    seen: dict[str, int] = {}
    ids = []
    for audio_hash, question in zip(audio_hashes, questions):
        base = question_id(audio_hash, question)
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


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
    """``{(qa_set, question_id): [(window, text, error), ...]}`` from UTF-8 JSONL lines of
    ``{question_id, prediction}`` (a string, or a non-empty list of strings: window answers, named
    ``full`` for one and ``window_0``, ``window_1``, ... for several) or of this command's own
    ``predictions.jsonl`` (``window``, ``answer``: a string, or null with the ``error`` that failed it).
    ``qa_set`` is the line's own field, or None on lines without one (they answer any set): derived
    question ids collide between two sets over the same clips, so a two-set file keeps them apart.

    Anything else is a one-line error naming the file and line: not UTF-8, not a JSON object, a null,
    empty or non-text prediction, and a second answer for one (qa_set, question_id, window), which
    would otherwise count as another window and let the best of the copies win."""
    out: Predictions = {}
    first_seen: dict[tuple, int] = {}  # (qa_set, question_id, window) -> its line
    with open(path, "rb") as lines:
        for n, raw in enumerate(lines, 1):
            record = _prediction_record(path, n, raw)
            if record is None:
                continue
            key, answers = _prediction_answers(f"{path}:{n}", record)
            for window, _, _ in answers:
                first = first_seen.setdefault((*key, window), n)
                if first != n:
                    of_set = f" of set {key[0]!r}" if key[0] is not None else ""
                    raise ValueError(f"{path}:{n}: a second answer for question {key[1]!r}{of_set}, "
                                     f"window {window!r} (the first is on line {first}); "
                                     "keep one line per question and window")
            out.setdefault(key, []).extend(answers)
    return out


def _prediction_record(path: str, n: int, raw: bytes) -> dict | None:
    """Line ``n`` as a JSON object, None when blank."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        byte = f"byte {raw[error.start]:#04x} at column {error.start + 1}"
        raise ValueError(f"{path}:{n}: not UTF-8 ({byte})") from error
    line = line.removeprefix("\ufeff") if n == 1 else line  # a byte-order mark some editors write
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{n}: not JSON ({error})") from error
    if not isinstance(record, dict):
        raise ValueError(f"{path}:{n}: {_json_kind(record)}, not an object with question_id and prediction")
    return record


def _prediction_answers(where: str, record: dict) -> tuple[tuple, list[tuple]]:
    """``((qa_set, question_id), [(window, text, error), ...])`` of one line, checked."""
    if "question_id" in record and "answer" in record and "window" in record:
        answers = [(record["window"], record["answer"], record.get("error"))]
        if not isinstance(answers[0][0], str) or not answers[0][0]:
            raise ValueError(f"{where}: window must be a non-empty string, not {answers[0][0]!r}")
        _check_text(where, "answer", answers[0][1], answers[0][2])
    elif "question_id" in record and "prediction" in record:
        answers = _window_answers(where, record["prediction"])
    else:
        raise ValueError(f"{where}: each line needs question_id and prediction (or window and answer)")
    qa_set, qid = record.get("qa_set"), record["question_id"]
    if not isinstance(qa_set, (str, type(None))):
        raise ValueError(f"{where}: qa_set is {_json_kind(qa_set)}, not a set label")
    if isinstance(qid, bool) or not isinstance(qid, (str, int)) or qid == "":
        raise ValueError(f"{where}: question_id must be a non-empty string (or an integer), not {qid!r}")
    return (qa_set, qid), answers


def _window_answers(where: str, prediction) -> list[tuple]:
    """A ``prediction`` field (a string or a non-empty list of strings) as ``(window, text, None)``."""
    if isinstance(prediction, str):
        return [("full", prediction, None)]
    if not isinstance(prediction, list) or not prediction:
        what = "an empty list" if prediction == [] else _json_kind(prediction)
        raise ValueError(f"{where}: prediction is {what}; give the answer text, or a list of window answers")
    for k, text in enumerate(prediction):
        if not isinstance(text, str):
            raise ValueError(f"{where}: prediction[{k}] is {_json_kind(text)}, not text")
    names = ["full"] if len(prediction) == 1 else [f"window_{k}" for k in range(len(prediction))]
    return [(name, text, None) for name, text in zip(names, prediction)]


def _check_text(where: str, field_name: str, text, error) -> None:
    """An answer is text, or null beside the error that explains it."""
    if not isinstance(error, (str, type(None))):
        raise ValueError(f"{where}: error must be a string or null, not {error!r}")
    if text is None and error is None:
        raise ValueError(f"{where}: {field_name} is null without an error; give the answer text")
    if not isinstance(text, (str, type(None))):
        raise ValueError(f"{where}: {field_name} is {_json_kind(text)}, not text")


def _json_kind(value) -> str:
    """What a JSON value is, in words: ``null``, ``a number``, ``an object``, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    kinds = {int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return kinds.get(type(value), f"a {type(value).__name__}")


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

    check_limit(options.limit)
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
        for item, audio_hash in zip(results[qa.label]["items"], qa.audio_hashes or []):
            item["audio_sha256"] = audio_hash  # what pairs clips across sets, whatever their clip ids
        check_judged(results[qa.label], qa.label, out)
        if options.controls:
            results[qa.label]["controls"] = run_controls(metric, qa, options, backend, control_client, say)
        summary = results[qa.label]
        say(f"{qa.label}: score {summary['score']:.2f} (successful only {_fmt(summary['score_successful'], 2)}, success rate {summary['success_rate']:.3f})")
        for judge_name, calls in summary.get("judge_calls", {}).items():
            say(f"  judge {judge_name}: {calls['summary']}")
    for res in results.values():
        res["config"]["cpqa_version"] = project_version()
    if len(results) == 2 and (shared := shared_clips_line(results)):
        say(shared)
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


def _pairing(res_a: dict, res_b: dict) -> str:
    return "audio (sha256)" if report.clip_key(res_a, res_b) == "audio_sha256" else "clip id"


def shared_clips_line(results: dict) -> str | None:
    """One line when two sets share fewer clips than they hold (the per-clip correlation covers only
    the shared ones); None when each set's clips are all in the other."""
    (a, res_a), (b, res_b) = results.items()
    key = report.clip_key(res_a, res_b)
    clips_a, clips_b = ({str(item.get(key)) for item in res["items"]} for res in (res_a, res_b))
    shared = len(clips_a & clips_b)
    if shared == len(clips_a) == len(clips_b):
        return None
    return (f"{a} and {b} share {shared} clip(s) by {_pairing(res_a, res_b)}; {a} holds {len(clips_a)}, "
            f"{b} {len(clips_b)}: the per-clip correlation covers the shared ones only.")


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
        lines += [f"## Per-clip correlation, {a} vs {b}", ""]
        lines += [shared_clips_line(results) or f"Clips are paired by {_pairing(res_a, res_b)}.", ""]
        lines += ["| judge | prompt | clips | Pearson | Spearman |", "|---|---|---|---|---|"]
        for judge_name, by_prompt in res_a["judges"].items():
            for prompt in by_prompt:
                c = report.clip_correlation(res_a, res_b, judge_name, prompt)
                lines.append(f"| {judge_name} | {prompt} | {c['n_clips']} | {_fmt(c['pearson'])} | {_fmt(c['spearman'])} |")
        c = report.cell_correlation(res_a, res_b)
        lines += ["", f"## Cell-level correlation, {a} vs {b}", "",
                  f"Over the {c['n_cells']} judge x prompt x category cells both sets have: Pearson {_fmt(c['pearson'])}, Spearman {_fmt(c['spearman'])}.", ""]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).rstrip("\n") + "\n"
