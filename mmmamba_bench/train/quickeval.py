"""A quick validation check: greedy answers on the mini-suite validation split, exact match per task.

A proxy for the lmms-eval scores (which the lead computes with the real metrics): the normalised generated text
must equal the normalised reference answer (case, surrounding punctuation and spaces ignored).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import torch

from mmmamba_bench.processor import Processor

# Chance level of each task's answer format (yes/no 1/2, 4 options 1/4, SQA 2-4 options ~0.42, open answers ~0;
# see mmmamba_bench.benchmarks.MINI_CHANCE).
CHANCE = {"mini_mme": 0.5, "mini_pope": 0.5, "mini_mmbench": 0.25, "mini_seed": 0.25, "mini_sqa": 0.42,
          "mini_textvqa": 0.0, "mini_gqa": 0.0}


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().strip(".").strip().lower())


@torch.no_grad()
def validation_accuracy(model, processor: Processor, data_dir: Path | None, items_per_task: int = 40,
                        tasks: list[str] | None = None, batch_size: int = 32,
                        max_new_tokens: int = 4) -> dict[str, float]:
    """{task: exact-match accuracy over its first ``items_per_task`` validation rows} plus ``"mean"``."""
    from mmmamba_bench.data.minisuite import TASKS, iter_examples

    model.eval()
    scores: dict[str, float] = {}
    for task in tasks or list(TASKS):
        examples = list(itertools.islice(iter_examples(data_dir, "validation", [task]), items_per_task))
        correct = 0
        for s in range(0, len(examples), batch_size):
            chunk = examples[s:s + batch_size]
            batch = processor.collate([processor.encode_prompt(e.question_prompt, e.image) for e in chunk])
            batch = batch.to(model.device)
            out = model.generate(batch.input_ids, batch.pixel_values, attention_mask=batch.attention_mask,
                                 max_new_tokens=max_new_tokens, eos_token_id=processor.tokenizer.eos_token_id)
            L = batch.input_ids.shape[1]
            for e, row in zip(chunk, out[:, L:]):
                correct += normalise(processor.decode(row)) == normalise(e.answer)
        scores[task] = correct / max(len(examples), 1)
    scores["mean"] = sum(scores.values()) / len(scores)
    return scores


def format_scores(scores: dict[str, float]) -> str:
    return "  ".join(f"{k.removeprefix('mini_')}={v:.3f}" for k, v in scores.items())
