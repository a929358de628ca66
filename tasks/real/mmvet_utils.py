"""MM-Vet hook: the built-in GPT-judged scoring, but a question the judge could not score is an error, not a 0.

Importing this module imports lmms-eval's MM-Vet utils, which create the judge client (and fail without credentials).
"""

from __future__ import annotations

from lmms_eval.tasks.mmvet.utils import mmvet_process_results as _builtin_process_results


class JudgeError(RuntimeError):
    """The GPT judge gave no usable score."""


def mmvet_process_results(doc: dict, results: list) -> dict:
    out = _builtin_process_results(doc, results)
    record = out["gpt_eval_score"]
    if not record.get("eval_model"):  # the built-in's marker of "no response from the judge" (score set to 0)
        raise JudgeError(f"paper_mmvet: the GPT judge returned no score for question {doc.get('question_id')!r}; "
                         "check OPENAI_API_KEY / API_TYPE / MODEL_VERSION and the network, then rerun")
    return out
