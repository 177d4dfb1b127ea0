"""CPQA: LLM-judged accuracy of a speech-LLM's answers to contextual paralinguistic questions."""

from __future__ import annotations

import os

import datasets
import evaluate

from .judge import DEFAULT_PROMPTS
from .judge import PROMPT_VERSION
from .judge import PROMPTS
from .judge import Grade
from .judge import check_endpoint
from .judge import grade_all
from .judge import make_judges
from .judge import require_api_key
from .llm_client import summary_line
# re-exported so the copy evaluate makes of this folder includes report.py
from .report import category_table_markdown
from .report import clip_correlation
from .report import table2_markdown
from .scores import best_window
from .scores import bootstrap_ci
from .scores import overall
from .scores import summarize
from .scores import summarize_by_category
from .speech_llm import DEFAULT_MODEL
from .speech_llm import WINDOW_SECONDS
from .speech_llm import answer_questions
from .speech_llm import is_bare_array
from .speech_llm import make_backend

_CITATION = """\
@inproceedings{wang2025contextual,
  title     = {Contextual Paralinguistic Data Creation for Multi-Modal Speech-{LLM}: Data Condensation and Spoken {QA} Generation},
  author    = {Wang, Qiongqiong and Sailor, Hardik B. and Liu, Tianchi and Aw, Ai Ti},
  booktitle = {Proc. Interspeech 2025},
  year      = {2025}
}
"""

_DESCRIPTION = """\
CPQA scores a speech-LLM on spoken questions about what is said and how it is said (emotion, gender,
speaker changes, and reasoning that joins them with the content), as in the CPQA evaluation set of
Wang et al. (Interspeech 2025). Each answer is graded 0-5 against the reference answer by one or more
LLM judges (any OpenAI-compatible endpoint, or a Python callable) under two prompts: `audiobench`, the
AudioBench open-ended rubric, and `paralinguistic`, which also credits correct paralinguistic
conclusions and does not penalise short answers. Scores are mean rating x 20 (0-100), reported per
judge x prompt, per QA category, with the judgement success rate; failed or unparseable judgements are
counted both ways (as 0, AudioBench's convention, and left out).

Without predictions the metric first runs the speech-LLM (default Qwen/Qwen2-Audio-7B-Instruct through
transformers) on the audio. Audio longer than 30 s is answered on its first and on its last 30 s; both
answers are judged and the higher rating counts, and the winning window is recorded.
"""

_KWARGS_DESCRIPTION = """
Args:
    questions (`list` of `str`): the spoken-QA questions.
    references (`list` of `str`): the reference answers.
    predictions (`list` of `str`, or `list` of `list` of `str`, *optional*): the speech-LLM's answers.
        A list per item holds answers on several windows of its audio; the best-rated one counts
        (name the windows with `prediction_windows`). Without predictions, `audio` is required and
        `model` answers first.
    judges (`list`): one or more judges. A dict `{"model", "base_url", "api_key_env", "name"?,
        "max_retries"?, "timeout"?, "max_tokens"?, "temperature"?, "samples"?}` for an OpenAI-compatible
        endpoint (the key is read from the variable `api_key_env` names; leave it out for local
        servers), or `{"preset": "gpt-4o" | "llama3-70b-awq", ...}` (the paper's judges; other keys
        override), or a callable `judge(messages) -> reply text` (optionally as `{"name", "call",
        "samples"?}`). `samples` K > 1 asks K times (temperature 0.7 unless given, one seed each) and
        averages the ratings given.
    prompts (`list` of `str`, *optional*): judge prompts, default `["audiobench", "paralinguistic"]`.
    categories (`list` of `str`, *optional*): the QA category of each item, for per-category scores.
    clip_ids (`list` of `str`, *optional*): the clip each question is about (default: the audio's file
        path when there is one); needed for per-clip correlations.
    audio (`list`, *optional*): file paths, `{"array", "sampling_rate"}` dicts, datasets' Audio values
        (dicts or torchcodec decoders), `(array, rate)` pairs, or arrays with `sampling_rate`.
    sampling_rate (`int`, *optional*): the rate of bare arrays in `audio`.
    model (`str`, backend or callable, *optional*): a Qwen2-Audio checkpoint (hub id or local folder),
        default `Qwen/Qwen2-Audio-7B-Instruct`; a dict `{"model", "base_url", "api_key_env"?, "max_tokens"?,
        "concurrency"?}` for a served audio model (`input_audio` chat requests, e.g. vLLM); or `model(questions, waveforms, sampling_rate)
        -> answers`.
    batch_size (`int`, *optional*, 4), max_new_tokens (`int`, *optional*, 256), device (`str`,
        *optional*: cuda when available), dtype (`str`, *optional*: bfloat16 on cuda, else float32):
        settings of the in-process Qwen2-Audio.
    window_seconds (`float` or None, *optional*, 30): longer audio is answered on its first and last
        window, named after its length (`first_30s`, `last_30s`; `first_10s`, `last_10s` for 10); shorter
        audio, or any audio when None, is sent whole as `full`. With predictions, recorded in the config only.
    answer_cache_dir (`str`, *optional*): a folder caching the speech-LLM's answers by model, generation
        parameters, window audio hash and question, so a rerun generates only what is missing.
    prediction_windows (`list` of `list` of `str`, *optional*): window names of list predictions.
    cache_dir (`str`, *optional*): a folder caching judge replies (keyed by model, messages and
        parameters), so a re-run only pays for what changed. No cache when left out.
    max_concurrency (`int`, *optional*, 8): judge requests in flight at once.
Returns:
    score (`float`): mean over judge x prompt of the 0-100 score, failed judgements counted as 0.
    score_successful (`float`): the same over successful judgements only.
    success_rate (`float`): the share of judgements that gave a rating.
    judges (`dict`): `{judge: {prompt: {score, score_successful, success_rate, n, n_judged, ci95,
        ci95_successful, by_category}}}`; `ci95` is the 95 % percentile bootstrap interval of the
        score over clips (1000 resamples, seed 0; an item without a clip id is its own clip), also per category.
    items (`list`): per question: its predictions (window, text, error) and, per judge and prompt,
        `rating`, `window` (the one that won), `raw` (the judge's reply), `error` and every window's grade.
    judge_calls (`dict`): per endpoint judge, its calls: `requests`, `cached`, `sent`, `attempts`, `retried`,
        `failed`, `retry_reasons`, `failure_reasons` and a one-line `summary`.
    config (`dict`): judges (never their keys), prompts, prompt version, speech-LLM, window length.
Examples:
    A judge may be any callable from chat messages to a reply. This toy one reads the model's answer
    out of the rendered prompt; its third reply holds no rating, so that judgement fails:

    >>> import evaluate
    >>> cpqa = evaluate.load("metrics/cpqa")  # from the repository root
    >>> def toy_judge(messages):
    ...     answer = messages[-1]["content"].split("<answer>")[1].split("</answer>")[0]
    ...     if "angry" in answer:
    ...         return "Explanation: the same emotion as the reference.\\nRating: 5"
    ...     if "calm" in answer:
    ...         return "Explanation: a different emotion.\\nRating: 2"
    ...     return "I cannot grade this."
    >>> results = cpqa.compute(
    ...     questions=["How does the speaker feel?"] * 3,
    ...     references=["The speaker sounds angry."] * 3,
    ...     predictions=["She is angry.", "She sounds calm.", "Hard to say."],
    ...     categories=["emotion", "emotion", "speaker"],
    ...     judges=[toy_judge],
    ...     prompts=["audiobench"],
    ... )
    >>> summary = results["judges"]["toy_judge"]["audiobench"]
    >>> round(summary["score"], 2), summary["score_successful"], round(summary["success_rate"], 3)
    (46.67, 70.0, 0.667)
    >>> summary["by_category"]["emotion"]["score"], summary["by_category"]["speaker"]["success_rate"]
    (70.0, 0.0)
    >>> results["items"][2]["judgements"]["toy_judge"]["audiobench"]["error"]
    'no "Rating: N" line in the reply'
"""

_GENERATION_SETTINGS = (
    "model", "batch_size", "max_new_tokens", "device", "dtype", "window_seconds", "sampling_rate", "answer_cache_dir"
)

_STRING = datasets.Value("string")


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Cpqa(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features({"questions": _STRING, "references": _STRING, "predictions": _STRING}),
                datasets.Features(
                    {"questions": _STRING, "references": _STRING, "predictions": datasets.Sequence(_STRING)}
                ),
            ],
            homepage="https://huggingface.co/datasets/MERaLiON/CPQA-Evaluation-Set",
            reference_urls=["https://github.com/AudioLLMs/AudioBench"],
        )

    def compute(self, *, questions=None, references=None, predictions=None, audio=None, **kwargs):
        """Judge answers to CPQA questions, running the speech-LLM on `audio` first when no predictions are given."""
        if self.num_process > 1:
            # per-item keyword arguments (categories, windows, ...) are not gathered across processes
            raise ValueError("cpqa computes in a single process; gather predictions first, then call compute once")
        settings = {key: kwargs.pop(key) for key in _GENERATION_SETTINGS if key in kwargs}
        if kwargs.get("clip_ids") is None and audio is not None:
            kwargs["clip_ids"] = _clip_ids_from_audio(audio)
        if predictions is not None:
            ignored = sorted(set(settings) - {"sampling_rate", "window_seconds"})
            if ignored:
                raise ValueError(f"{ignored} only apply when the speech-LLM answers (predictions=None)")
            if "window_seconds" in settings:  # how given predictions were made, recorded in the config
                kwargs["window_seconds"] = settings["window_seconds"]
        else:
            if audio is None:
                raise ValueError("give either predictions or audio (for the speech-LLM to answer)")
            _check_before_generating(questions, audio, kwargs, settings.get("sampling_rate"))
            predictions, kwargs = _generate(questions, audio, settings, kwargs)
        return super().compute(questions=questions, references=references, predictions=predictions, **kwargs)

    def _compute(
        self,
        questions,
        references,
        predictions,
        judges=None,
        prompts=DEFAULT_PROMPTS,
        categories=None,
        clip_ids=None,
        prediction_windows=None,
        prediction_errors=None,
        speech_llm=None,
        window_seconds=None,
        cache_dir=None,
        max_concurrency=8,
    ):
        if judges is None:
            raise ValueError("judges=[...] is required: OpenAI-compatible endpoint dicts or callables")
        judges = make_judges(judges)
        prompts = _check_prompts(prompts)
        _check_lengths(len(questions), categories=categories, clip_ids=clip_ids)
        answers = _answers(predictions, prediction_windows, prediction_errors)

        graded, judge_calls = _grade(judges, prompts, questions, references, answers, cache_dir, max_concurrency)
        items = [
            {
                "question": questions[i],
                "reference": references[i],
                "category": categories[i] if categories is not None else None,
                "clip_id": clip_ids[i] if clip_ids is not None else None,
                "predictions": item_answers,
                "judgements": {
                    judge.name: {prompt: _judgement(item_answers, graded, judge.name, i, prompt) for prompt in prompts}
                    for judge in judges
                },
            }
            for i, item_answers in enumerate(answers)
        ]
        by_judge = {
            judge.name: {prompt: _summary(items, judge.name, prompt, categories) for prompt in prompts} for judge in judges
        }
        return {
            **overall([summary for per_prompt in by_judge.values() for summary in per_prompt.values()]),
            "judges": by_judge,
            "judge_calls": judge_calls,
            "items": items,
            "config": {
                "judges": [judge.describe() for judge in judges],
                "prompts": list(prompts),
                "prompt_version": PROMPT_VERSION,
                "speech_llm": speech_llm,
                "window_seconds": window_seconds,
            },
        }


def _check_before_generating(questions, audio, kwargs, sampling_rate=None):
    """Settings errors surface now, not after hours of speech-LLM time."""
    if sampling_rate is None:
        _check_audio_rates(audio)
    if kwargs.get("judges") is None:
        raise ValueError("judges=[...] is required: OpenAI-compatible endpoint dicts or callables")
    for judge in make_judges(kwargs["judges"]):
        if judge.call is None:
            require_api_key(judge)
            check_endpoint(f"judge {judge.name!r}", judge.base_url, judge.api_key_env)
    _check_prompts(kwargs.get("prompts", DEFAULT_PROMPTS))
    _check_lengths(len(questions), audio=audio, categories=kwargs.get("categories"), clip_ids=kwargs.get("clip_ids"))


def _check_audio_rates(audio):
    """Bare arrays need ``sampling_rate=``: one line before any generation, not an error on every item.
    A ``datasets`` column is not walked: its Audio values always carry their rate."""
    if type(audio).__module__.split(".")[0] == "datasets":
        return
    bare = [index for index, clip in enumerate(audio) if is_bare_array(clip)]
    if bare:
        raise ValueError(
            f"audio[{bare[0]}] ({len(bare)} of {len(audio)} items) is a bare array without its sampling "
            "rate: pass sampling_rate=..., or (array, rate) pairs, or {'array', 'sampling_rate'} dicts"
        )


def _generate(questions, audio, settings, kwargs):
    """Run the speech-LLM; returns per-window predictions and the kwargs that carry windows and errors."""
    backend = make_backend(
        settings.get("model", DEFAULT_MODEL),
        batch_size=settings.get("batch_size", 4),
        max_new_tokens=settings.get("max_new_tokens", 256),
        device=settings.get("device"),
        dtype=settings.get("dtype"),
    )
    window_seconds = settings.get("window_seconds", WINDOW_SECONDS)
    answers = answer_questions(
        questions,
        audio,
        model=backend,
        window_seconds=window_seconds,
        source_rate=settings.get("sampling_rate"),
        cache_dir=settings.get("answer_cache_dir"),
    )
    # arrow cannot hold None inside these lists reliably: failed answers travel as "" plus an error
    predictions = [[answer.text or "" for answer in item] for item in answers]
    kwargs = {
        **kwargs,
        "prediction_windows": [[answer.window for answer in item] for item in answers],
        "prediction_errors": [[answer.error for answer in item] for item in answers],
        "speech_llm": backend.name,
        "window_seconds": window_seconds,
    }
    return predictions, kwargs


def _clip_ids_from_audio(audio):
    """File paths make natural clip ids: one per item that has a path, None for the others."""
    ids = []
    for clip in audio:
        if isinstance(clip, (str, os.PathLike)):
            ids.append(os.fspath(clip))
        elif isinstance(clip, dict) and clip.get("path"):
            ids.append(clip["path"])
        else:
            ids.append(None)
    return ids if any(i is not None for i in ids) else None


def _check_prompts(prompts):
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    unknown = [p for p in prompts if p not in PROMPTS]
    if unknown or not prompts:
        raise ValueError(f"unknown judge prompts {unknown}; known: {sorted(PROMPTS)}")
    return prompts


def _check_lengths(n, **columns):
    for name, column in columns.items():
        if column is not None and len(column) != n:
            raise ValueError(f"{name} has {len(column)} entries for {n} questions")


def _answers(predictions, windows, errors):
    """Per item, a list of {window, text, error}; a None prediction, or one with an error, has no text."""
    answers = []
    for item, prediction in enumerate(predictions):
        texts = prediction if isinstance(prediction, list) else [prediction]
        names = windows[item] if windows is not None else _default_window_names(len(texts))
        problems = errors[item] if errors is not None else [None] * len(texts)
        if len(names) != len(texts):
            raise ValueError(f"item {item}: {len(texts)} predictions but {len(names)} window names")
        answers.append([_answer(name, text, problem) for name, text, problem in zip(names, texts, problems)])
    return answers


def _default_window_names(count):
    return ["full"] if count == 1 else [f"window_{k}" for k in range(count)]


def _answer(window, text, problem):
    if problem is None and text is None:
        problem = "no prediction"
    return {"window": window, "text": None if problem else text, "error": problem}


def _grade(judges, prompts, questions, references, answers, cache_dir, max_concurrency):
    """``{(judge, item, window, prompt): Grade}`` for every answer that has text, and per endpoint judge
    its call counts with a one-line summary."""
    requests, slots = [], []
    for item, item_answers in enumerate(answers):
        for window, answer in enumerate(item_answers):
            if answer["text"] is not None:
                for prompt in prompts:
                    requests.append((prompt, questions[item], references[item], answer["text"]))
                    slots.append((item, window, prompt))
    grades, calls = grade_all(judges, requests, cache_dir=cache_dir, max_concurrency=max_concurrency)
    graded = {(judge.name, *slot): grades[(judge.name, index)] for judge in judges for index, slot in enumerate(slots)}
    return graded, {name: {**counts, "summary": summary_line(counts)} for name, counts in calls.items()}


def _judgement(item_answers, graded, judge, item, prompt):
    """The best window's grade for one item, judge and prompt, with every window's grade beside it."""
    grades = [
        graded.get((judge, item, w, prompt)) or Grade(None, None, f"no answer to judge ({answer['error']})")
        for w, answer in enumerate(item_answers)
    ]
    windows = [
        {"window": answer["window"], "rating": grade.rating, "raw": grade.raw, "error": grade.error}
        for answer, grade in zip(item_answers, grades)
    ]
    best = best_window([grade.rating for grade in grades])
    if best is not None:
        winner = grades[best]
        return {"rating": winner.rating, "window": windows[best]["window"], "raw": winner.raw, "error": None, "windows": windows}
    if len(windows) == 1:
        return {"rating": None, "window": None, "raw": grades[0].raw, "error": grades[0].error, "windows": windows}
    error = "; ".join(f"{w['window']}: {w['error']}" for w in windows)
    return {"rating": None, "window": None, "raw": None, "error": error, "windows": windows}


def _summary(items, judge, prompt, categories):
    """``summarize`` with 95 % bootstrap intervals over clips (``ci95``: failures as 0,
    ``ci95_successful``: failures left out), overall and per category."""
    ratings = [item["judgements"][judge][prompt]["rating"] for item in items]
    clips = [item["clip_id"] for item in items]
    by_category = summarize_by_category(ratings, categories)
    for category, summary in by_category.items():
        members = [i for i, c in enumerate(categories) if (c if c is not None else "unknown") == category]
        summary.update(_intervals([ratings[i] for i in members], [clips[i] for i in members]))
    return {**summarize(ratings), **_intervals(ratings, clips), "by_category": by_category}


def _intervals(ratings, clips):
    return {"ci95": bootstrap_ci(ratings, clips), "ci95_successful": bootstrap_ci(ratings, clips, "score_successful")}
