"""The tiny teacher: a HoVLE-architecture model (every layer attention) trained from scratch on the mini-suite.

Plays the role of HoVLE for the demo's distillation (paper Sec. 4: mmMamba is distilled from a trained
Transformer VLM). Steps: train a word-level tokenizer on the train split's chat prompts + answers; build the
``demo``-shaped config with that vocabulary; initialise (normal std 0.02, residual out-projections ``wo`` / ``w2``
scaled by 1/sqrt(2 * layers), norms 1, biases 0); train with next-token cross-entropy on the answer tokens, plus
optionally (``text_loss_weight``) on the prompt's text tokens, on tiles optionally jittered by a random affine map
(``augment``) (AdamW, WSD, clipping; resumable, also on another device); report the held-out validation loss and a
greedy exact-match accuracy per task; save in the released layout with ``tokenizer.json``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmmamba_bench.config import ChatConfig, make_config
from mmmamba_bench.model.stack import MMMambaChatModel
from mmmamba_bench.processor import IGNORE, Batch, Processor
from mmmamba_bench.train.data import BatchStream, data_sha256, load_encoded
from mmmamba_bench.train.loop import StepCallback, Trainable, train
from mmmamba_bench.train.recipe import (AugmentConfig, TeacherRecipe, as_recipe, cap_teacher_steps,
                                        recipe_hash)
from mmmamba_bench.train.state import TrainCheckpoint, read_stage_record, write_stage_record

log = logging.getLogger(__name__)


def tokenizer_texts(data_dir: Path | None, tasks: list[str] | None) -> list[str]:
    """The train split's chat prompts (without image tokens) and answers: the tokenizer's training text."""
    from mmmamba_bench.data.minisuite import iter_examples
    from mmmamba_bench.preprocessing import MINI_TEMPLATE, chat_prompt

    texts = []
    for ex in iter_examples(data_dir, "train", tasks):
        texts += [chat_prompt(ex.question_prompt, num_tiles=0, template=MINI_TEMPLATE), ex.answer]
    return texts


def teacher_config(recipe: TeacherRecipe, vocab_size: int) -> ChatConfig:
    """The tiny teacher's config: HoVLE family, the demo models' chat template (no system turn, no BOS)."""
    from mmmamba_bench.preprocessing import MINI_TEMPLATE

    m = recipe.model
    return make_config(template=MINI_TEMPLATE, hidden=m.hidden, heads=m.heads, kv_heads=m.kv_heads, emb_layers=m.emb_layers,
                       llm_layers=m.llm_layers, intermediate=m.intermediate, vocab=vocab_size,
                       image_size=m.image_size, patch_size=m.patch_size, normalize_encoder_output=m.normalize_encoder_output,
                       max_position_embeddings=m.max_position_embeddings, rope_theta=m.rope_theta,
                       model_type="internvl_chat")


@torch.no_grad()
def init_weights(model: MMMambaChatModel, std: float, seed: int) -> None:
    """GPT-2 style: N(0, std) weights, zero biases, unit norms; residual outputs (wo, w2) std / sqrt(2 n_layers)."""
    gen = torch.Generator().manual_seed(seed)
    residual_std = std / math.sqrt(2 * model.config.num_layers)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith(".bias") or name.endswith("class_embedding"):
            p.zero_()
        elif name.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
            p.copy_(torch.randn(p.shape, generator=gen) * residual_std)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def text_targets(batch: Batch, vocab_size: int) -> torch.Tensor:
    """[B, L] next-token targets on the prompt's text: the token at t + 1 where positions t and t + 1 are real
    (unpadded), the token is text (id < ``vocab_size``: not an image / special token) and t is outside the answer
    (labels IGNORE); IGNORE elsewhere."""
    assert batch.labels is not None
    nxt = torch.full_like(batch.input_ids, IGNORE)
    nxt[:, :-1] = batch.input_ids[:, 1:]
    real = torch.zeros_like(batch.attention_mask, dtype=torch.bool)
    real[:, :-1] = batch.attention_mask[:, 1:].bool()
    keep = batch.attention_mask.bool() & real & (nxt >= 0) & (nxt < vocab_size) & (batch.labels == IGNORE)
    return torch.where(keep, nxt, torch.full_like(nxt, IGNORE))


def augment_tiles(pixel_values: torch.Tensor, aug: AugmentConfig) -> torch.Tensor:
    """[N, 3, S, S] tiles -> the same tiles under one random affine map each (rotation, zoom, shear, shift), edges
    replicated. Draws from torch's global CPU generator (saved in training checkpoints, so resumes repeat it)."""
    n, _, S, _ = pixel_values.shape
    u = lambda: torch.rand(n) * 2 - 1  # noqa: E731  U(-1, 1) per tile
    angle = u() * math.radians(aug.rotate_deg)
    zoom = 1 + u() * aug.scale
    shear = u() * aug.shear
    shift = torch.stack([u(), u()], 1) * (2 * aug.translate_px / S)  # in grid units ([-1, 1] spans S pixels)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin + shear * cos, shift[:, 0]], 1),
                         torch.stack([sin, cos + shear * sin, shift[:, 1]], 1)], 1)  # [N, 2, 3] output -> input
    theta = theta.to(pixel_values.device, pixel_values.dtype)
    grid = F.affine_grid(theta, list(pixel_values.shape), align_corners=False)
    return F.grid_sample(pixel_values, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augmented(batch: Batch, aug: AugmentConfig) -> Batch:
    """``batch`` with :func:`augment_tiles` applied to its pixel values (unchanged when ``aug`` is off)."""
    if not aug.active or batch.pixel_values is None:
        return batch
    return dataclasses.replace(batch, pixel_values=augment_tiles(batch.pixel_values, aug))


def answer_loss(model: MMMambaChatModel, batch: Batch, text_weight: float = 0.0) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens (labels != IGNORE), plus ``text_weight`` x the mean
    cross-entropy over the prompt's text tokens (:func:`text_targets`) when ``text_weight`` > 0."""
    logits = model(batch.input_ids, batch.pixel_values, attention_mask=batch.attention_mask).logits  # [B, L, V]
    assert batch.labels is not None
    flat = logits.flatten(0, 1).float()
    loss = F.cross_entropy(flat, batch.labels.flatten(), ignore_index=IGNORE)
    if text_weight:
        targets = text_targets(batch, logits.shape[-1]).flatten()
        loss = loss + text_weight * F.cross_entropy(flat, targets, ignore_index=IGNORE)
    return loss


@torch.no_grad()
def held_out_loss(model: MMMambaChatModel, processor: Processor, items, batch_size: int = 64) -> float:
    model.eval()
    total, count = 0.0, 0
    for s in range(0, len(items), batch_size):
        batch = processor.collate(items[s:s + batch_size]).to(model.device)
        n = int((batch.labels != IGNORE).sum())
        total += float(answer_loss(model, batch)) * n
        count += n
    return total / max(count, 1)


def train_teacher(recipe: TeacherRecipe | str | os.PathLike, data_dir: str | os.PathLike | None,
                  out_dir: str | os.PathLike, *, progress: bool = True,
                  callback: StepCallback | None = None, device: str | None = None,
                  max_steps: int | None = None) -> Path:
    """Train the tiny teacher and write it to ``out_dir`` (released layout + tokenizer.json); returns ``out_dir``.

    Rerunning the same call resumes from ``<out_dir>.work`` (the resumable checkpoint) or returns at once when
    ``out_dir`` already holds the finished teacher of this recipe; a finished teacher of another recipe or data is
    refused. A second run on the same ``out_dir`` is refused while the first holds it (:mod:`mmmamba_bench.outputs`).
    ``max_steps`` caps the recipe's steps (a smoke run; :func:`~mmmamba_bench.train.recipe.cap_teacher_steps`,
    recorded as ``max_steps`` in the teacher's record).
    """
    from mmmamba_bench.outputs import check_output_target, output_lock

    check_output_target(out_dir, "--out")
    with output_lock(out_dir, "train-teacher"):
        return _train_teacher(recipe, data_dir, out_dir, progress=progress, callback=callback, device=device,
                              max_steps=max_steps)


def _train_teacher(recipe: TeacherRecipe | str | os.PathLike, data_dir: str | os.PathLike | None,
                   out_dir: str | os.PathLike, *, progress: bool, callback: StepCallback | None,
                   device: str | None, max_steps: int | None) -> Path:
    recipe = as_recipe(recipe, TeacherRecipe)
    if max_steps is not None:
        recipe = cap_teacher_steps(recipe, max_steps)
    if device is not None:
        recipe = dataclasses.replace(recipe, device=device)
    data_dir = Path(data_dir) if data_dir is not None else None
    out_dir = Path(out_dir)
    rhash = recipe_hash(recipe)
    data_hash = data_sha256(data_dir)
    work = out_dir.with_name(out_dir.name + ".work")
    record = read_stage_record(out_dir)
    if record is not None:
        if record.get("recipe_sha256") != rhash:
            raise FileExistsError(f"{out_dir} holds a teacher trained with another recipe; choose a new --out")
        if record.get("data_manifest_sha256") != data_hash:
            raise FileExistsError(f"{out_dir} holds a teacher trained on other data (manifest sha256 "
                                  f"{str(record.get('data_manifest_sha256'))[:12]}..., this data "
                                  f"{data_hash[:12]}...); choose a new --out")
        shutil.rmtree(work, ignore_errors=True)  # left by a kill between publishing and cleaning up
        log.info("teacher already trained: %s", out_dir)
        return out_dir
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists but is not a finished teacher of this recipe; choose a new --out")
    if recipe.threads:
        torch.set_num_threads(recipe.threads)
    checkpoint = TrainCheckpoint(work, f"{rhash}:{data_hash}")
    checkpoint.check_tag()  # an interrupted run of another recipe or on other data: refused before any work
    t0 = time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)

    from mmmamba_bench.tokenizer import load_tokenizer, train_word_tokenizer

    vocab = train_word_tokenizer(tokenizer_texts(data_dir, recipe.data.tasks), work / "tokenizer.json",
                                 min_count=recipe.tokenizer_min_count)
    config = teacher_config(recipe, vocab)
    processor = Processor(load_tokenizer(work), config, max_tiles=recipe.data.max_tiles)
    torch.manual_seed(recipe.seed)
    model = MMMambaChatModel(config, ssd_backend="torch")
    init_weights(model, recipe.model.init_std, recipe.seed)
    model.to(recipe.device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("teacher: vocab %d, %d layers, hidden %d, %.2fM parameters", vocab, config.num_layers,
             recipe.model.hidden, n_params / 1e6)

    train_items, _ = load_encoded(processor, data_dir, "train", recipe.data.tasks, recipe.data.max_examples)
    val_items, _ = load_encoded(processor, data_dir, "validation", recipe.data.tasks)
    stream = BatchStream(train_items, processor, recipe.optim.batch_size, recipe.seed)
    t_train = time.perf_counter()
    model.train()
    train(name="teacher", trainable=Trainable(dict(model.named_parameters())),
          loss_fn=lambda b: answer_loss(model, augmented(b, recipe.augment), recipe.text_loss_weight),
          stream=stream, cfg=recipe.optim,
          checkpoint=checkpoint, checkpoint_every=recipe.checkpoint_every,
          device=recipe.device, progress=progress, callback=callback)
    train_s = time.perf_counter() - t_train
    model.eval()
    val_loss = held_out_loss(model, processor, val_items)
    from mmmamba_bench.train.quickeval import format_scores, validation_accuracy

    scores = validation_accuracy(model, processor, data_dir, recipe.eval.items_per_task, recipe.data.tasks,
                                 recipe.eval.batch_size, recipe.eval.max_new_tokens)
    log.info("teacher: validation loss %.4f; exact match %s", val_loss, format_scores(scores))
    from mmmamba_bench.checkpoint import save_model

    record = {"stage": "teacher", "recipe_sha256": rhash, "max_steps": max_steps, "validation_loss": val_loss,
              "data_manifest_sha256": data_hash, "device": str(recipe.device),
              "validation_exact_match": scores, "train_seconds": round(train_s, 1),
              "total_seconds": round(time.perf_counter() - t0, 1), "parameters": n_params}
    # weights and record are published together (one rename): a kill leaves either both or neither
    save_model(model, out_dir, side_files_from=work, before_publish=lambda tmp: write_stage_record(tmp, record))
    shutil.rmtree(work, ignore_errors=True)
    return out_dir
