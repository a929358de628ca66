"""The lmms-eval tasks this project runs, and which task and metric give each Table-1 column.

Task names and groups (:data:`MINI_TASKS`, :data:`PAPER_TASKS`, :func:`resolve_tasks`) live here, below both the
data descriptions (``mmmamba_bench.data.real``: which datasets each ``paper_*`` task reads) and the preflight checks
(``mmmamba_bench.eval.tasks``), so that neither has to import the other for them.

Table 1: one row per paper column. ``real`` names the lmms-eval tasks and metric of the real benchmark (the paper's
headline number); ``mini`` names the offline mini-suite task standing in for that answer format (see ``tasks/mini/``).
The report reads lmms-eval's own results JSON and looks scores up through this table only.
"""

from __future__ import annotations

from dataclasses import dataclass

MINI_TASKS: tuple[str, ...] = (
    "mini_mme", "mini_mmbench", "mini_pope", "mini_seed", "mini_sqa", "mini_textvqa", "mini_gqa",
)
# The paper's nine benchmarks, POPE as its three splits (tasks/real/paper_*.yaml; their local data: data/real.py).
PAPER_TASKS: tuple[str, ...] = (
    "paper_mme", "paper_mmbench_en_dev", "paper_pope_adv", "paper_pope_pop", "paper_pope_random", "paper_seedbench",
    "paper_mmmu_val", "paper_mmvet", "paper_textvqa_val", "paper_scienceqa_img", "paper_gqa",
)
JUDGE_TASKS: frozenset[str] = frozenset({"paper_mmvet"})
GROUPS: dict[str, tuple[str, ...]] = {
    "mini": MINI_TASKS,
    "paper": PAPER_TASKS,
    "paper_no_judge": tuple(t for t in PAPER_TASKS if t not in JUDGE_TASKS),
    "paper_pope": ("paper_pope_adv", "paper_pope_pop", "paper_pope_random"),
}
KNOWN_TASKS: frozenset[str] = frozenset(MINI_TASKS) | frozenset(PAPER_TASKS)


class TaskSetupError(RuntimeError):
    """A task cannot run as set up; ``problems`` lists ``(task, what is missing)``."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        lines = "\n".join(f"  - {task}: {what}" for task, what in problems)
        super().__init__(f"{len(problems)} task setup problem(s):\n{lines}")


def resolve_tasks(spec: str) -> list[str]:
    """Expand a comma-separated task spec; groups: ``mini``, ``paper``, ``paper_no_judge``, ``paper_pope``.

    Order is kept and duplicates dropped. Unknown names raise :class:`TaskSetupError`.
    """
    out: list[str] = []
    unknown = []
    for name in (part.strip() for part in spec.split(",")):
        if not name:
            continue
        names = GROUPS.get(name, (name,))
        for task in names:
            if task not in KNOWN_TASKS:
                unknown.append(task)
            elif task not in out:
                out.append(task)
    if unknown:
        raise TaskSetupError([(t, f"unknown task; known tasks: {sorted(KNOWN_TASKS)}, groups: {sorted(GROUPS)}")
                              for t in unknown])
    if not out:
        raise TaskSetupError([("*", f"empty task spec {spec!r}")])
    return out


@dataclass(frozen=True)
class Headline:
    """How to read one headline number out of lmms-eval's ``results`` dict.

    tasks: the lmms-eval task names whose ``"<metric>,none"`` values are read.
    metric: the metric name (without the ``,none`` filter suffix).
    reduce: ``"single"`` (exactly one task), ``"mean"`` (average over tasks, e.g. POPE's three splits)
        or ``"sum"``.
    scale: multiply the stored value by this to get the number in the paper's units (e.g. 100 for a 0-1 accuracy).
    """

    tasks: tuple[str, ...]
    metric: str
    reduce: str = "single"
    scale: float = 1.0


@dataclass(frozen=True)
class Column:
    name: str  # the paper's column header in Table 1
    answer_format: str
    real: Headline
    mini: Headline | None


# Real columns read this project's tasks/real/paper_*.yaml, each a copy of an lmms-eval 0.7.3 built-in task (named in
# the YAML's metadata.builtin_task: mme, mmbench_en_dev_static, pope_adv/pop/random, seedbench, mmmu_val, mmvet,
# textvqa_val, scienceqa_img, gqa) with the overrides listed there. Units as lmms-eval stores them: MME points,
# MMBench and MM-Vet already x100, everything else 0-1. Mini columns read tasks/mini/mini_*.yaml.
TABLE1: tuple[Column, ...] = (
    Column("MME", "yes/no pairs", Headline(("paper_mme",), "mme_perception_score"),
           Headline(("mini_mme",), "mme_score")),
    Column("MMB", "multiple choice (circular)", Headline(("paper_mmbench_en_dev",), "gpt_eval_score"),
           Headline(("mini_mmbench",), "circular_accuracy", scale=100.0)),
    Column("POPE", "presence yes/no", Headline(("paper_pope_adv", "paper_pope_pop", "paper_pope_random"),
                                               "pope_f1_score", reduce="mean", scale=100.0),
           Headline(("mini_pope",), "f1_mean", scale=100.0)),
    Column("SEED", "multiple choice", Headline(("paper_seedbench",), "seed_image", scale=100.0),
           Headline(("mini_seed",), "accuracy", scale=100.0)),
    Column("MMMU", "multiple choice", Headline(("paper_mmmu_val",), "mmmu_acc", scale=100.0), None),
    Column("MM-Vet", "open-ended (GPT judge)", Headline(("paper_mmvet",), "gpt_eval_score"), None),
    Column("TQA", "short answer (VQA soft accuracy)", Headline(("paper_textvqa_val",), "exact_match", scale=100.0),
           Headline(("mini_textvqa",), "vqa_accuracy", scale=100.0)),
    Column("SQA-I", "multiple choice (letter)", Headline(("paper_scienceqa_img",), "exact_match", scale=100.0),
           Headline(("mini_sqa",), "accuracy", scale=100.0)),
    Column("GQA", "short answer (exact match)", Headline(("paper_gqa",), "exact_match", scale=100.0),
           Headline(("mini_gqa",), "exact_match", scale=100.0)),
)


# Expected mini-suite score of a model answering uniformly at random among the allowed answers, in the table's units
# (the report's "chance" row). MME: per category acc 50 + acc+ 25 (both answers of a pair right), 5 categories;
# MMBench circular: all 4 rotations right, (1/4)^4; POPE: yes/no balanced, so precision = recall = F1 = 0.5;
# SEED: 4 options; ScienceQA: its 5 categories in equal numbers with 2 (parity), 3 (arithmetic), 4
# (classification), 2 (comparison), 2 (living things) options; TextVQA / GQA: open answers, ~0.
MINI_CHANCE: dict[str, float] = {
    "MME": 5 * (50.0 + 25.0),
    "MMB": 100.0 * 0.25**4,
    "POPE": 50.0,
    "SEED": 25.0,
    "TQA": 0.0,
    "SQA-I": 100.0 * (1 / 2 + 1 / 3 + 1 / 4 + 1 / 2 + 1 / 2) / 5,
    "GQA": 0.0,
}


def columns_by_name() -> dict[str, Column]:
    return {c.name: c for c in TABLE1}
