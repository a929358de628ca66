"""The exact prompt text of each mini-suite answer format (the single source for the task hooks and the trainers).

The wording follows lmms-eval's reference prompts: short answers end with
"\\nAnswer the question using a single word or phrase."; multiple choice lists "A. ..." lines and ends with
"\\nAnswer with the option's letter from the given choices directly."; yes/no questions end with
" Please answer yes or no." (MME's own suffix).
"""

from __future__ import annotations

import string
from typing import Sequence

SHORT_SUFFIX = "\nAnswer the question using a single word or phrase."
CHOICE_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
YES_NO_SUFFIX = " Please answer yes or no."

# answer format of each mini task
FORMATS: dict[str, str] = {
    "mini_mme": "yes_no",
    "mini_pope": "yes_no",
    "mini_mmbench": "choice",
    "mini_seed": "choice",
    "mini_sqa": "choice",
    "mini_textvqa": "short",
    "mini_gqa": "short",
}


def letters(n: int) -> str:
    if not 2 <= n <= 26:
        raise ValueError(f"a multiple-choice question needs 2-26 options, got {n}")
    return string.ascii_uppercase[:n]


def format_prompt(answer_format: str, question: str, options: Sequence[str] = (), hint: str = "") -> str:
    """The text the model sees for one question (the image is passed separately)."""
    if answer_format == "yes_no":
        return f"{question}{YES_NO_SUFFIX}"
    if answer_format == "short":
        return f"{question}{SHORT_SUFFIX}"
    if answer_format == "choice":
        context = f"Context: {hint}\n" if hint else ""
        lines = "\n".join(f"{letter}. {option}" for letter, option in zip(letters(len(options)), options))
        return f"{context}{question}\n{lines}{CHOICE_SUFFIX}"
    raise ValueError(f"unknown answer format {answer_format!r}")


def task_prompt(task: str, question: str, options: Sequence[str] = (), hint: str = "") -> str:
    """:func:`format_prompt` with the answer format of mini task ``task``."""
    try:
        answer_format = FORMATS[task]
    except KeyError:
        raise ValueError(f"unknown mini task {task!r}; known: {sorted(FORMATS)}") from None
    return format_prompt(answer_format, question, options, hint)
