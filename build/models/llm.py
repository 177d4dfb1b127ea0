"""The LLM client of the build: the metric's client (``metrics/cpqa/llm_client.py``), re-exported.

One client writes the QA pairs and the judgements, with the same retries, cache and call counts; it
lives with the metric because `evaluate` loads a metric folder on its own.
"""

from metrics.cpqa.llm_client import CallStats, LlmClient, LlmResult, cache_key, stats_delta, summary_line

__all__ = ["CallStats", "LlmClient", "LlmResult", "cache_key", "stats_delta", "summary_line"]
