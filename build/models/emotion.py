"""Stage 4, categorical SER: an emotion2vec+ ensemble loaded through FunASR, run on padded batches,
posteriors averaged.

Input columns (one row per labelling window): ``audio_path``, ``ctx_start``, ``ctx_end`` (seconds;
the span the model hears). Output columns, and only these (``schema.CATEGORICAL_OUTPUT``):

- ``emotion``: the label with the highest averaged posterior, one of ``schema.EMOTION_LABELS``;
- ``emotion_scores``: nine floats, the ensemble's mean posterior in ``EMOTION_LABELS`` order;
- ``emotion_error``: null, or a message naming the file and span, then the problem (then the other
  two are null). A window that fails never fails its batch; a member that fails on a window fails
  that window only (a batch that raises is retried clip by clip to find it). An empty clip, and a
  clip too short to give the conv front end one frame (under 400 samples for the released
  checkpoints), are refused before any model runs; a member whose posterior is not finite (half precision overflow) fails that window.

Two entry points: ``classify_clips`` labels clips that are already decoded (``build.stages.label`` slices
them out of one decode per segment), and ``label_categorical_emotion`` is the batched map function
over window rows, which decodes its spans and calls ``classify_clips``.

Each member is a FunASR ``AutoModel`` (hub id or local folder) whose network is FunASR's
``Emotion2vec``; it is loaded once per process, device and dtype. Its labels are bilingual tokens
(``生气/angry``, ``<unk>``) from the checkpoint's tokenizer; they are parsed once at load and each
member's scores are put into ``EMOTION_LABELS`` order by label, never by position, because
checkpoints differ (the 5-class releases of emotion2vec+ name four outputs ``unuse_*``; as in FunASR
their logits are set to -inf before the softmax, so they get probability 0).

Inference reproduces FunASR's ``Emotion2vec.inference`` (utterance granularity) for a batch, instead
of calling ``AutoModel.generate``, which runs one clip at a time:

1. each clip is layer-normalised over its own samples, unpadded, in float32 (FunASR's ``normalize``);
2. the clips are zero-padded to the longest, with FunASR's sample padding mask (True = padding), and
   go through the model's own ``extract_features``; the mask reaches every attention layer, so
   padded frames are never attended to;
3. FunASR's convolutional positional encoder does not take the mask: run alone, a clip's last frames
   see the conv's zero padding, in a batch they would see the frames of the padding. While a padded
   batch runs, each of its convolutions therefore gets its input with the padding frames set to
   zero, which is what the clip alone gives it;
4. the frames are mean-pooled over each clip's valid frames (the conv front end's output length,
   FunASR's formula), then ``proj`` and the softmax, in float32.

The conv front end must normalise per frame (``extractor_mode: layer_norm``, the emotion2vec+
releases) for padding to be exact: a group-norm front end (``default`` mode) normalises each
channel over the whole clip, so such a member runs only clips of equal length together
(``batching.batch_plan``). A clip's posterior then depends on its batch by float rounding only
(below 1e-6 in float32; ``tests/test_emotion.py`` holds it to FunASR's ``generate`` on the clip alone,
and a clip alone gives FunASR's posterior bit for bit).

Precision: on CUDA, ``float16`` and ``bfloat16`` build the member with FunASR's own ``fp16`` /
``bf16`` switch (the whole network cast) and feed it clips in that dtype (normalised in float32
first). Some steps stay in float32 whatever the dtype: FunASR's attention casts its scores to the
float32 ALiBi bias before the softmax, the conv front end's layer norms are float32, and so are the
pooling, the head and the softmax here. bfloat16, which FunASR's own inference cannot return (it
converts features to numpy), works on this path. ``auto`` is float16 on CUDA. On CPU the members
always run in float32. Scores come back as Python floats.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import devices
from ..core.errors import first_line, span_label
from ..core.schema import CATEGORICAL_OUTPUT, EMOTION_LABELS
from .base import funasr_side_effects_contained, model_dtype
from .batching import Span, over_windows, run_in_groups

_log = logging.getLogger(__name__)

# FunASR maps the ModelScope ids (iic/emotion2vec_plus_*) to their Hugging Face mirrors
# (emotion2vec/emotion2vec_plus_*), so "hf" serves the paper's ids through the HF cache and
# HF_HUB_OFFLINE; "ms" (FunASR's default) downloads the same checkpoints from ModelScope.
DEFAULT_HUB = "hf"
# FunASR's placeholder for a label hidden in a 5-class checkpoint; it masks these to probability 0.
_UNUSED_TOKEN_PREFIX = "unuse"
_LABEL_INDEX = {label: i for i, label in enumerate(EMOTION_LABELS)}


def parse_emotion_label(token: str, model_id: str | None = None) -> str:
    """``生气/angry`` -> ``angry``; ``<unk>`` -> ``unknown``; plain English labels pass through."""
    label = "unknown" if token.strip() == "<unk>" else token.rsplit("/", 1)[-1].strip().lower()
    if label not in _LABEL_INDEX:
        source = f" from {model_id}" if model_id else ""
        raise ValueError(f"unknown emotion2vec label token {token!r}{source}; expected one of {EMOTION_LABELS}")
    return label


def scores_in_label_order(
    labels: Sequence[str], scores: Sequence[float], model_id: str | None = None
) -> list[float]:
    """One member's (labels, scores) as nine scores in ``EMOTION_LABELS`` order; absent labels get 0."""
    if len(labels) != len(scores):
        raise ValueError(f"{model_id}: {len(labels)} labels but {len(scores)} scores")
    ordered = [0.0] * len(EMOTION_LABELS)
    seen: set[str] = set()
    for token, score in zip(labels, scores):
        if token.startswith(_UNUSED_TOKEN_PREFIX):
            continue
        label = parse_emotion_label(token, model_id)
        if label in seen:
            raise ValueError(f"{model_id}: label {label!r} appears twice in {list(labels)}")
        seen.add(label)
        ordered[_LABEL_INDEX[label]] = float(score)
    return ordered


def average_posteriors(posteriors: Sequence[Sequence[float]]) -> list[float]:
    """Mean of the members' posteriors, each renormalised to sum to 1 first."""
    if not posteriors:
        raise ValueError("no posteriors to average")
    matrix = np.asarray(posteriors, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"posteriors must all have the same length, got {[len(p) for p in posteriors]}")
    totals = matrix.sum(axis=1, keepdims=True)
    if not np.all(np.isfinite(matrix)) or np.any(matrix < 0) or np.any(totals <= 0):
        raise ValueError(f"posteriors must be finite, non-negative and not all zero: {matrix.tolist()}")
    return (matrix / totals).mean(axis=0).tolist()


def member_dtype(precision: str, device: str):
    """The dtype a member runs in: ``model_dtype`` on CUDA, float32 on any other device."""
    import torch

    dtype = model_dtype(precision, device)  # refuses an unknown precision everywhere
    return dtype if str(device).startswith("cuda") else torch.float32


@dataclass(frozen=True)
class Member:
    """One loaded ensemble member: FunASR's network and what its outputs mean."""

    model_id: str
    net: Any  # funasr.models.emotion2vec.model.Emotion2vec, in eval mode, on its device and dtype
    tokens: tuple[str, ...]  # the label token of each output, in output order
    exact_padding: bool  # the conv front end normalises per frame: clips of any length batch together

    @property
    def unused(self) -> list[int]:
        return [k for k, token in enumerate(self.tokens) if token.startswith(_UNUSED_TOKEN_PREFIX)]

    def frame_counts(self, lengths: Sequence[int]) -> list[int]:
        """Frames the conv front end gives clips of these lengths (FunASR's output-length formula)."""
        counts = []
        for n in lengths:
            for _, kernel, stride in self.net.modality_encoders["AUDIO"].feature_enc_layers:
                n = (n - kernel) // stride + 1 if n >= kernel else 0
            counts.append(n)
        return counts


def _load_auto_model(model_id: str, device: str, hub: str, dtype):
    import torch

    with funasr_side_effects_contained():
        from funasr import AutoModel
    # A second block, so that AutoModel's basicConfig(level=log_level) is the one in force while it loads.
    with funasr_side_effects_contained():
        return AutoModel(
            model=model_id,
            hub=hub,
            device=device,
            disable_update=True,  # no version check over the network
            disable_pbar=True,
            log_level="ERROR",  # its warnings (trust_remote_code: False) are banners, not problems
            # FunASR sets torch's thread count to ncpu (default 4) on load.
            ncpu=torch.get_num_threads(),
            fp16=dtype == torch.float16,
            bf16=dtype == torch.bfloat16,
        )


def _load_member(model_id: str, device: str, hub: str, dtype) -> Member:
    try:
        auto = _load_auto_model(model_id, device, hub, dtype)
    except Exception as exc:
        # FunASR prints a failed download and then fails with "model '<id>' is not registered".
        raise RuntimeError(
            f"cannot load emotion2vec model {model_id!r} (hub={hub!r}, device={device!r}): {first_line(exc)}. "
            "A hub id needs network access or a warm cache; a local folder needs config.yaml, model.pt "
            "and tokens.txt."
        ) from exc
    with funasr_side_effects_contained():
        from funasr.models.emotion2vec.model import Emotion2vec

    net = auto.model
    if not isinstance(net, Emotion2vec):
        raise TypeError(f"{model_id} builds a {type(net).__name__}, not FunASR's Emotion2vec")
    tokens = tuple(getattr(auto.kwargs.get("tokenizer"), "token_list", None) or ())
    if net.proj is None or not tokens:
        raise ValueError(f"{model_id} has no classification head or no token list: not an emotion2vec+ classifier")
    if len(tokens) != net.proj.out_features:
        raise ValueError(f"{model_id}: {len(tokens)} label tokens for {net.proj.out_features} outputs")
    scores_in_label_order(tokens, [0.0] * len(tokens), model_id)  # every token must name a label, once
    mode = net.modality_encoders["AUDIO"].modality_cfg.get("extractor_mode", "default")
    return Member(model_id, net, tokens, exact_padding=mode == "layer_norm")


def _member(model_id: str, device: str, hub: str, precision: str) -> Member:
    """The member for (model, device, dtype), loaded once per process."""
    dtype = member_dtype(precision, device)
    return devices.cached(
        ("emotion2vec", model_id, device, hub, str(dtype)), lambda: _load_member(model_id, device, hub, dtype)
    )


@contextlib.contextmanager
def _padding_zeroed_in_positional_convs(encoder, frames) -> Iterator[None]:
    """While open, each conv of ``encoder``'s positional encoder sees zeros on the padding frames
    (frame t of row b is padding when t >= frames[b]), as it does beyond the end of a clip run alone.
    The hooks are on the shared module: one thread at a time may run a member (as ``build.stages.label`` does)."""
    import torch

    def zero_padding(module, args):
        x = args[0]  # batch x channels x frames
        padding = torch.arange(x.shape[-1], device=x.device) >= frames[:, None]
        return (x.masked_fill(padding[:, None, :], 0), *args[1:])

    positional = getattr(encoder, "relative_positional_encoder", None)
    convs = [m for m in positional.modules() if isinstance(m, torch.nn.Conv1d)] if positional is not None else []
    handles = [conv.register_forward_pre_hook(zero_padding) for conv in convs]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def posteriors(member: Member, clips: Sequence[np.ndarray]) -> np.ndarray:
    """Softmax outputs of one member for a batch of 16 kHz clips, float32, one row per clip, in the
    order of ``member.tokens``. Clips of different lengths are padded (see the module docstring);
    each must give at least one frame."""
    import torch
    import torch.nn.functional as F

    net = member.net
    device, dtype = net.proj.weight.device, net.proj.weight.dtype
    lengths = [len(clip) for clip in clips]
    frames = member.frame_counts(lengths)
    if min(frames) < 1:
        raise ValueError(f"clips of {min(lengths)} samples give no frame")
    with torch.inference_mode():
        source = torch.zeros(len(clips), max(lengths), dtype=torch.float32, device=device)
        for row, clip in enumerate(clips):
            wave = torch.from_numpy(np.asarray(clip, dtype=np.float32)).to(device)
            if net.cfg.normalize:
                wave = F.layer_norm(wave, wave.shape)
            source[row, : len(clip)] = wave
        source = source.to(dtype)
        if min(lengths) == max(lengths):
            hidden = net.extract_features(source, padding_mask=None)["x"]
            pooled = hidden.float().mean(dim=1)
        else:
            padding = torch.arange(max(lengths), device=device) >= torch.tensor(lengths, device=device)[:, None]
            frame_counts = torch.tensor(frames, device=device)
            with _padding_zeroed_in_positional_convs(net.modality_encoders["AUDIO"], frame_counts):
                hidden = net.extract_features(source, padding_mask=padding)["x"].float()
            valid = torch.arange(hidden.shape[1], device=device) < frame_counts[:, None]
            pooled = (hidden * valid[..., None]).sum(dim=1) / frame_counts[:, None]
        logits = F.linear(pooled, net.proj.weight.float(), net.proj.bias.float())
        logits[:, member.unused] = float("-inf")
        return torch.softmax(logits, dim=-1).cpu().numpy()


def classify_clips(
    clips: Sequence[np.ndarray],
    spans: Sequence[Span],
    *,
    model_ids: Sequence[str],
    device: str,
    hub: str = DEFAULT_HUB,
    precision: str = "float32",
) -> dict[str, list]:
    """emotion, emotion_scores, emotion_error for decoded 16 kHz clips, in input order.

    ``spans`` (path, start, end) say where each clip comes from, for the error messages; ``device``
    is a torch device ("cpu", "cuda:0"). All clips go through each member as one batch (one per
    length for a member whose padding is not exact). Members are loaded only when some clip is
    usable; a clip that fails a member skips the members after it."""
    if not model_ids:
        raise ValueError("model_ids is empty: the emotion stage needs at least one emotion2vec model")
    if len(clips) != len(spans):
        raise ValueError(f"{len(clips)} clips but {len(spans)} spans")
    errors: list[str | None] = [None if clip.size else f"{span_label(*span)}: empty span" for clip, span in zip(clips, spans)]
    posteriors_of: dict[int, list[list[float]]] = {i: [] for i, error in enumerate(errors) if error is None}

    for model_id in model_ids:
        usable = [i for i, error in enumerate(errors) if error is None]
        if not usable:
            break
        member = _member(model_id, device, hub, precision)
        runnable = []
        for i, frames in zip(usable, member.frame_counts([len(clips[i]) for i in usable])):
            if frames < 1:
                errors[i] = f"{span_label(*spans[i])}: too short for {model_id} ({len(clips[i])} samples give no frame)"
            else:
                runnable.append(i)
        rows = run_in_groups(
            [clips[i] for i in runnable], lambda group: posteriors(member, group), member.exact_padding
        )
        for i, row in zip(runnable, rows):
            if isinstance(row, Exception):
                errors[i] = f"{span_label(*spans[i])}: {model_id} failed ({first_line(row)})"
            else:
                posteriors_of[i].append(scores_in_label_order(member.tokens, row.tolist(), model_id))

    emotions: list[str | None] = [None] * len(clips)
    scores: list[list[float] | None] = [None] * len(clips)
    for i, error in enumerate(errors):
        if error is not None:
            continue
        try:
            scores[i] = average_posteriors(posteriors_of[i])
        except ValueError as exc:
            errors[i] = f"{span_label(*spans[i])}: {exc}"
            continue
        emotions[i] = EMOTION_LABELS[int(np.argmax(scores[i]))]
    return {"emotion": emotions, "emotion_scores": scores, "emotion_error": errors}


def label_categorical_emotion(
    batch: dict[str, list],
    rank: int | None = None,
    *,
    model_ids: list[str],
    device: str = "auto",
    hub: str = DEFAULT_HUB,
    precision: str = "float32",
) -> dict[str, list]:
    """Batched map function: emotion, emotion_scores, emotion_error for each window."""
    if not model_ids:
        raise ValueError("model_ids is empty: the emotion stage needs at least one emotion2vec model")
    run_device = devices.device_for(rank, device)
    return over_windows(
        batch,
        lambda clips, spans: classify_clips(
            clips, spans, model_ids=model_ids, device=run_device, hub=hub, precision=precision
        ),
        CATEGORICAL_OUTPUT,
        "emotion_error",
    )
