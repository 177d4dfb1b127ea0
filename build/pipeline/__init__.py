"""The one orchestrator: the only package that knows the stage order. The CLI and the benchmarks call
``build()``.

    funnel     what a build counts: FUNNEL, drop reasons, the ledger, report.json
    columns    helpers over column dicts; the features of the intermediate tables
    steps      the per-shard steps (vad, label, condense, asr, qa, postfilter, empathy)
    executor   the loop around a step (skip if done, stats, drops, progress); the LLM endpoint
    plan       the ingest step (global)
    sampling   balanced sampling and the top-up rounds (global)
    audit      the funnel and the dropped rows read back from every task
    output     the run's id, the export swapped in whole, the condensed segments
    builder    build(): the steps in order, then export
"""

from .builder import EMPATHY, OUTPUTS, RECORDING_STEPS, SAMPLE_STEPS, STOP_AFTER, build, step_params
from .funnel import (
    DROP_REASONS,
    FUNNEL,
    STAGES,
    BuildResult,
    Drop,
    Funnel,
    format_report,
    llm_calls,
    registered,
    write_report,
)
from .output import export_dataset, model_ids

__all__ = [
    "DROP_REASONS",
    "EMPATHY",
    "FUNNEL",
    "OUTPUTS",
    "RECORDING_STEPS",
    "SAMPLE_STEPS",
    "STAGES",
    "STOP_AFTER",
    "BuildResult",
    "Drop",
    "Funnel",
    "build",
    "export_dataset",
    "format_report",
    "llm_calls",
    "model_ids",
    "registered",
    "step_params",
    "write_report",
]
