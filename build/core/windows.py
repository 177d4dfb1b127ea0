"""Stage 3: segments -> labelling windows (one table per labeller).

Input columns (``schema.SEGMENT``): ``segment_id``, ``recording_id``, ``audio_path``, ``start``, ``end``.
Output (``schema.WINDOW``, one row per window): the same ids, the labelled span ``start``/``end`` and
the span the model hears, ``ctx_start``/``ctx_end``.

Rules:
- Label spans tile the segment from its start in steps of ``label_s`` (t).
- The remainder after the last full span is kept as a shorter window when it is at least
  ``min_last_fraction`` x t long, and dropped otherwise (a 31 s segment with t = 2 s gives 15 full
  windows and a 1 s one; a 30.5 s segment gives 15).
- The model hears Δt = ``context_s`` more on each side, clipped to the segment: windows at the
  edges get less context rather than audio that the VAD put outside the segment.
"""

from __future__ import annotations


def window_spans(
    start: float, end: float, label_s: float, context_s: float, min_last_fraction: float = 0.5
) -> list[tuple[float, float, float, float]]:
    """``(start, end, ctx_start, ctx_end)`` for every window of the segment ``[start, end]``."""
    spans = []
    # Integer steps avoid drift from adding floats repeatedly.
    n_full = int((end - start + 1e-9) // label_s)
    bounds = [(start + k * label_s, start + (k + 1) * label_s) for k in range(n_full)]
    remainder = end - (start + n_full * label_s)
    if remainder > 1e-9 and remainder >= min_last_fraction * label_s - 1e-9:
        bounds.append((start + n_full * label_s, end))
    for lo, hi in bounds:
        spans.append(
            (round(lo, 6), round(hi, 6), round(max(start, lo - context_s), 6), round(min(end, hi + context_s), 6))
        )
    return spans


def explode_windows(batch: dict[str, list], *, label_s: float, context_s: float, min_last_fraction: float) -> dict[str, list]:
    out = {k: [] for k in ("segment_id", "recording_id", "audio_path", "start", "end", "ctx_start", "ctx_end")}
    for sid, rid, path, seg_start, seg_end in zip(
        batch["segment_id"], batch["recording_id"], batch["audio_path"], batch["start"], batch["end"]
    ):
        for lo, hi, ctx_lo, ctx_hi in window_spans(seg_start, seg_end, label_s, context_s, min_last_fraction):
            out["segment_id"].append(sid)
            out["recording_id"].append(rid)
            out["audio_path"].append(path)
            out["start"].append(lo)
            out["end"].append(hi)
            out["ctx_start"].append(ctx_lo)
            out["ctx_end"].append(ctx_hi)
    return out
