"""MM-Vet hook: lmms-eval's GPT judge prompt and client, with strict scoring: a question the judge does not score
with a number in [0, 1] is an error, never a 0.

lmms-eval 0.7.3's own ``mmvet_process_results`` records 0.0 when the judge is unreachable or, after retries at
rising temperature, still answers without a number (and loops without end on a number outside [0, 1]); both would
silently lower the score. Here the judge is asked at most ``MAX_TRIES`` times (temperature 0, 0.5, 1.0, 1.5); the
first answer whose first word is a number in [0, 1] is the score; otherwise :class:`JudgeError` names the question
and the judge's last answer. Importing this module imports lmms-eval's MM-Vet utils, which create the judge client
(and fail without credentials).
"""

from __future__ import annotations

import lmms_eval.tasks.mmvet.utils as builtin

MAX_TRIES = 4
TEMPERATURE_STEP = 0.5


class JudgeError(RuntimeError):
    """The GPT judge gave no usable score."""


def parse_judge_score(content: str) -> float | None:
    """The judge's correctness score: its answer's first word as a number in [0, 1], else None."""
    words = (content or "").strip().split()
    if not words:
        return None
    try:
        score = float(words[0].rstrip(".,;"))
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None


def mmvet_process_results(doc: dict, results: list) -> dict:
    pred = results[0]
    answer = doc["answer"].replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    prompt = f"{builtin.MM_VET_PROMPT}\n{doc['question']} | {answer} | {pred} |"
    content, model_name = "", ""
    for attempt in range(MAX_TRIES):
        content, model_name = builtin.get_chat_response(prompt, temperature=attempt * TEMPERATURE_STEP)
        score = parse_judge_score(content)
        if score is not None:
            return {"gpt_eval_score": {"question_id": doc["question_id"], "question": doc["question"],
                                       "gt_answer": doc["answer"], "capabilities": doc["capability"],
                                       "pred_answer": pred, "score": score, "eval_model": model_name}}
    if not content:
        raise JudgeError(f"paper_mmvet: the GPT judge returned no score for question {doc.get('question_id')!r} "
                         f"(no response in {MAX_TRIES} tries); check OPENAI_API_KEY / API_TYPE / MODEL_VERSION and "
                         "the network, then rerun")
    raise JudgeError(f"paper_mmvet: the GPT judge gave no score in [0, 1] for question {doc.get('question_id')!r} "
                     f"in {MAX_TRIES} tries; its last answer: {content[:200]!r}")
