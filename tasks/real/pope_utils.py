"""POPE hook: map the model's answer to yes/no with POPE's own rule, then score it as lmms-eval's built-in does."""

from __future__ import annotations

from lmms_eval.tasks.pope.utils import pope_process_results as _builtin_process_results

from mmmamba_bench.eval.metrics import parse_pope_answer


def pope_process_results(doc: dict, results: list) -> dict:
    """The built-in scoring of ``parse_pope_answer(answer)`` (POPE's evaluate.py: "no"/"not" -> no, else yes)."""
    if len(results) != 1:
        raise ValueError(f"POPE expects one answer per question, got {len(results)}")
    return _builtin_process_results(doc, [parse_pope_answer(str(results[0]))])
