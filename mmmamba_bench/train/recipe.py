"""Training recipes as typed dataclasses, read from YAML with clear errors for unknown / missing / mistyped fields.

Two recipe kinds:

- :class:`TeacherRecipe` (``distill/teacher-demo.yaml``): the tiny HoVLE-architecture teacher trained from scratch.
- :class:`DistillRecipe` (``distill/{linear,hybrid}-demo.yaml``, ``distill/mmmamba-{linear,hybrid}.yaml``): the
  paper's seeding (Sec. 4.1) and three distillation stages (Sec. 4.2-4.4), hyper-parameters per stage (Sec. 5.1).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Union

import yaml


class RecipeError(ValueError):
    """A recipe file that is missing, unreadable, or has unknown / missing / mistyped fields."""


@dataclass(kw_only=True)
class OptimConfig:
    """AdamW + warmup-stable-decay + gradient clipping (paper Sec. 5.1)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.05
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 5.0
    warmup_frac: float = 0.1  # WSD: linear warm-up over the first 10% of steps
    decay_frac: float = 0.1  # WSD: linear decay to zero over the last 10% of steps

    def validate(self, where: str) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise RecipeError(f"{where}: steps and batch_size must be positive (got {self.steps}, {self.batch_size})")
        if self.lr <= 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise RecipeError(f"{where}: lr and grad_clip must be positive and weight_decay >= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise RecipeError(f"{where}: betas must be two numbers in [0, 1), got {self.betas}")
        if not (0 <= self.warmup_frac <= 1 and 0 <= self.decay_frac <= 1 and self.warmup_frac + self.decay_frac <= 1):
            raise RecipeError(f"{where}: warmup_frac and decay_frac must lie in [0, 1] and sum to at most 1")


DATA_SOURCES = ("minisuite", "internvl")


@dataclass(kw_only=True)
class DataConfig:
    """Training data: the offline mini-suite (``mmmamba_bench.data.minisuite``, a folder) or InternVL / SOLO SFT
    JSON-lines (``mmmamba_bench.train.sft``: a ``.jsonl`` file or InternVL's meta JSON), given at run time."""

    source: str = "minisuite"  # minisuite | internvl
    tasks: list[str] | None = None  # mini-suite: None = all seven mini tasks
    max_tiles: int = 1  # image tiles per image (the demo uses one 64 px tile; the paper 6 + thumbnail)
    max_examples: int | None = None  # mini-suite: cap on training examples (None: the whole train split)
    max_tokens: int = 8192  # internvl: longer rows are skipped and counted (paper: 8,192)

    def validate(self, where: str) -> None:
        if self.source not in DATA_SOURCES:
            raise RecipeError(f"{where}: data.source {self.source!r} is not one of {list(DATA_SOURCES)}")
        if self.max_tiles < 1:
            raise RecipeError(f"{where}: data.max_tiles must be >= 1")
        if self.max_tokens < 1:
            raise RecipeError(f"{where}: data.max_tokens must be >= 1")


@dataclass(kw_only=True)
class TeacherModelConfig:
    """The teacher's shape (``config.make_config``); the vocabulary comes from the trained tokenizer."""

    hidden: int = 128
    heads: int = 4
    kv_heads: int = 2
    emb_layers: int = 2
    llm_layers: int = 4
    intermediate: int = 384
    image_size: int = 64
    patch_size: int = 8
    max_position_embeddings: int = 2048
    rope_theta: float = 10_000.0
    init_std: float = 0.02
    normalize_encoder_output: bool = True  # HoVLE's per-token L2 norm between the embedding module and the LM


@dataclass(kw_only=True)
class AugmentConfig:
    """Random affine jitter of each training tile (teacher only; 0 everywhere = off). Small enough to keep what the
    questions ask about (left / right, grid cells, colours) and large enough that a from-scratch model cannot
    memorise the training images (digits especially)."""

    rotate_deg: float = 0.0  # rotation drawn from U(-rotate_deg, rotate_deg)
    scale: float = 0.0  # zoom factor drawn from U(1 - scale, 1 + scale)
    shear: float = 0.0  # shear drawn from U(-shear, shear) (radians)
    translate_px: float = 0.0  # shift drawn from U(-translate_px, translate_px) pixels, per axis

    def validate(self, where: str) -> None:
        if min(self.rotate_deg, self.scale, self.shear, self.translate_px) < 0 or self.scale >= 1:
            raise RecipeError(f"{where}: augment values must be >= 0 (and scale < 1), got {self}")

    @property
    def active(self) -> bool:
        return any((self.rotate_deg, self.scale, self.shear, self.translate_px))


@dataclass(kw_only=True)
class EvalConfig:
    """The quick greedy exact-match check on the validation split."""

    items_per_task: int = 40
    max_new_tokens: int = 4
    batch_size: int = 32


@dataclass(kw_only=True)
class TeacherRecipe:
    seed: int = 0
    model: TeacherModelConfig = field(default_factory=TeacherModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig
    tokenizer_min_count: int = 1
    # Weight of a next-token loss on the prompt's text tokens, added to the answer loss (0: answer tokens only).
    # A from-scratch model learns the image-question binding several times faster with it (scripts/teacher_sweep.py).
    text_loss_weight: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    checkpoint_every: int = 100  # steps between resumable training checkpoints
    threads: int | None = 2  # torch.set_num_threads (None: leave as is)
    device: str = "cpu"
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self, where: str) -> None:
        self.optim.validate(f"{where}: optim")
        self.data.validate(where)
        if self.checkpoint_every <= 0:
            raise RecipeError(f"{where}: checkpoint_every must be positive")
        self.augment.validate(f"{where}: augment")
        if self.text_loss_weight < 0:
            raise RecipeError(f"{where}: text_loss_weight must be >= 0, got {self.text_loss_weight}")


@dataclass(kw_only=True)
class StageConfig(OptimConfig):
    """One distillation stage: the optimiser settings plus the loss scale."""

    loss_scale: float = 1.0  # layer-wise MSE multiplier (the reference uses 1000; irrelevant to Adam but to clipping)


@dataclass(kw_only=True)
class LossRanges:
    """Where the first ``steps`` losses of each stage must lie ([low, high]; None: unchecked). A stage started from
    the wrong input (the reference's issue #4: an unchained stage 3) starts far outside."""

    steps: int = 3
    stage1: list[float] | None = None
    stage2: list[float] | None = None
    stage3: list[float] | None = None

    def validate(self, where: str) -> None:
        if self.steps < 1:
            raise RecipeError(f"{where}: first_losses.steps must be >= 1")
        for k in (1, 2, 3):
            r = getattr(self, f"stage{k}")
            if r is not None and (len(r) != 2 or not 0 <= r[0] < r[1]):
                raise RecipeError(f"{where}: first_losses.stage{k} must be [low, high] with 0 <= low < high, "
                                  f"got {r}")


@dataclass(kw_only=True)
class DistillRecipe:
    seed: int = 0
    layout: str = "linear"  # see mmmamba_bench.layouts ("hybrid" = head-interleaved:4)
    init: str = "mimic"  # seeding strategy (paper Table 4): mimic | inherit | scratch
    data: DataConfig = field(default_factory=DataConfig)
    stage1: StageConfig
    stage2: StageConfig
    stage3: StageConfig
    checkpoint_every: int = 50
    threads: int | None = 2
    device: str = "cpu"
    dtype: str = "float32"  # float32 | bfloat16 (the paper trains in BF16: mixed precision, fp32 master weights)
    eval: EvalConfig = field(default_factory=EvalConfig)
    first_losses: LossRanges = field(default_factory=LossRanges)
    # how the steps run (none changes the result beyond float rounding):
    micro_batch_size: int | None = None  # rows per forward/backward on one process (None: batch_size / processes)
    gradient_checkpointing: bool = False  # recompute decoder layers in the backward pass
    ssd_backend: str = "torch"  # the SSD scan: torch (any device) | mamba_ssm (CUDA: Triton, forward + backward)

    def stage(self, k: int) -> StageConfig:
        if k not in (1, 2, 3):
            raise RecipeError(f"there is no distillation stage {k} (stages are 1, 2, 3)")
        return getattr(self, f"stage{k}")

    def validate(self, where: str) -> None:
        from mmmamba_bench.seeding import INIT_STRATEGIES

        for k in (1, 2, 3):
            self.stage(k).validate(f"{where}: stage{k}")
        self.data.validate(where)
        if self.init not in INIT_STRATEGIES:
            raise RecipeError(f"{where}: init {self.init!r} is not one of {INIT_STRATEGIES}")
        if self.dtype not in ("float32", "bfloat16"):
            raise RecipeError(f"{where}: dtype {self.dtype!r} is not float32 or bfloat16")
        if self.checkpoint_every <= 0:
            raise RecipeError(f"{where}: checkpoint_every must be positive")
        self.first_losses.validate(where)
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise RecipeError(f"{where}: micro_batch_size must be >= 1")
        if self.ssd_backend not in ("torch", "mamba_ssm", "fla"):
            raise RecipeError(f"{where}: ssd_backend {self.ssd_backend!r} is not torch, mamba_ssm or fla")


# ---- YAML <-> dataclass ------------------------------------------------------------------------------------------

def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def from_dict(cls, data: Any, where: str):
    """Build dataclass ``cls`` from a mapping; unknown, missing or mistyped fields raise :class:`RecipeError`."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, found {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise RecipeError(f"{where}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    kwargs = {}
    for name, f in known.items():
        if name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise RecipeError(f"{where}: missing required field {name!r}")
            continue
        value, tp = data[name], hints[name]
        if is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, f"{where}.{name}")
            continue
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not _type_ok(value, tp):
            raise RecipeError(f"{where}: field {name!r} must be {tp}, found {value!r}")
        kwargs[name] = value
    return cls(**kwargs)


def load_recipe(path: str | Path, cls):
    """Read a YAML recipe file into ``cls`` (:class:`TeacherRecipe` or :class:`DistillRecipe`) and validate it."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise RecipeError(f"{path}: not valid YAML ({exc})") from None
    recipe = from_dict(cls, data, str(path))
    recipe.validate(str(path))
    return recipe


def as_recipe(recipe, cls):
    """Accept a recipe object, a path, or a dict."""
    if isinstance(recipe, cls):
        recipe.validate(cls.__name__)
        return recipe
    if isinstance(recipe, dict):
        out = from_dict(cls, recipe, cls.__name__)
        out.validate(cls.__name__)
        return out
    return load_recipe(recipe, cls)


# Recipe fields that say how or where a run executes, not what it computes: left out of the hashes that the
# finished-run records and resume checks compare, so a run started on a GPU may be resumed on a CPU.
EXECUTION_FIELDS = ("eval", "threads", "device", "checkpoint_every", "first_losses", "micro_batch_size",
                    "gradient_checkpointing", "ssd_backend")


def _hashed(recipe) -> dict[str, Any]:
    """The recipe as a dict without :data:`EXECUTION_FIELDS` and without settings that cannot apply (``data.max_tokens``
    of mini-suite data), so the hashes of recipes written before such a setting existed stay what they were."""
    payload = {k: v for k, v in asdict(recipe).items() if k not in EXECUTION_FIELDS}
    data = payload.get("data")
    if isinstance(data, dict) and data.get("source") == "minisuite":
        payload["data"] = {k: v for k, v in data.items() if k != "max_tokens"}
    return payload


def recipe_hash(recipe) -> str:
    """sha256 of the recipe's canonical JSON without :data:`EXECUTION_FIELDS` (what the teacher's record and resume
    checks compare)."""
    return hashlib.sha256(json.dumps(_hashed(recipe), sort_keys=True).encode()).hexdigest()


def stage_hash(recipe: DistillRecipe, stage: int) -> str:
    """sha256 of what determines one stage's result: its own settings plus the shared ones."""
    shared = {k: v for k, v in _hashed(recipe).items() if not k.startswith("stage")}
    payload = {"shared": shared, "stage": stage, "config": asdict(recipe.stage(stage))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _check_cap(max_steps: int) -> None:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise RecipeError(f"max_steps must be a positive integer, got {max_steps!r}")


def cap_distill_steps(recipe: DistillRecipe, max_steps: int) -> DistillRecipe:
    """``recipe`` with each stage's ``steps`` capped at ``max_steps`` (a smoke run: the same chain, a few steps).

    The stage hashes change with the steps, so a capped run never passes for, or resumes, an uncapped one.
    """
    _check_cap(max_steps)
    capped = {f"stage{k}": dataclasses.replace(recipe.stage(k), steps=min(recipe.stage(k).steps, max_steps))
              for k in (1, 2, 3)}
    return dataclasses.replace(recipe, **capped)


def cap_teacher_steps(recipe: TeacherRecipe, max_steps: int) -> TeacherRecipe:
    """``recipe`` with ``optim.steps`` capped at ``max_steps`` (changes :func:`recipe_hash`, like any step count)."""
    _check_cap(max_steps)
    return dataclasses.replace(recipe, optim=dataclasses.replace(recipe.optim,
                                                                 steps=min(recipe.optim.steps, max_steps)))
