"""Distillation throughput through the real trainer (issue 11): every stage at 2K and 8K tokens per row, on one GPU.

Each case runs ``train.parallel.train_parallel`` (the code ``mmmamba-bench distill`` runs) on an in-memory source
of synthetic rows shaped like the paper's data: 7 image tiles of 256 tokens plus text to fill the row. Teacher:
random bf16 weights of HoVLE-2.6B's shapes; student: seeded from it as mmMamba-linear (``--layout hybrid`` for the
hybrid). A few untimed warm-up steps, then N timed optimizer steps, timed from the trainer's ``callback(step, loss)``
after a device synchronisation. Per case: ms/step, tokens/s, peak memory, model FLOPs per step counted from the
shapes (:func:`step_flops`) and MFU against the bf16 matmul rate measured in the same run.

    python3 scripts/bench_distill.py --out bench_distill_plain.json                    # one process (plain)
    accelerate launch --num_processes 1 --num_machines 1 --dynamo_backend no --use_deepspeed \\
        --deepspeed_config_file distill/zero2.json --mixed_precision bf16 \\
        scripts/bench_distill.py --out bench_distill_zero2.json                        # DeepSpeed ZeRO-2
    python3 scripts/bench_distill.py --tiny --out /tmp/tiny.json                      # CPU check of the same code
    python3 scripts/bench_distill.py --summarize a.json b.json                        # tables of finished runs

The engine is whatever ``accelerate launch`` set up (DeepSpeed only through it). ``--tiny`` runs the same code on
the CPU with the demo-sized model (float32, the torch SSD scan, lengths 128 / 256).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from mmmamba_bench.config import ChatConfig
from mmmamba_bench.model.stack import MMMambaChatModel
from mmmamba_bench.ops.backends import BackendUnavailable, resolve_backend
from mmmamba_bench.processor import Encoded, Processor
from mmmamba_bench.profiler.models import build_model
from mmmamba_bench.seeding import seed_state_dict
from mmmamba_bench.train.distill import make_accelerator, prepare_stage
from mmmamba_bench.train.parallel import StepPlan, train_parallel
from mmmamba_bench.train.recipe import DistillRecipe, load_recipe
from mmmamba_bench.train.state import TrainCheckpoint

REPO = Path(__file__).resolve().parent.parent
GIB = 1024 ** 3
A800_GIB = 80  # the paper's GPU (A800 80 GB)
SSD_CHUNK = {"mamba_ssm": 256, "torch": 64, "fla": 64}  # chunk length each SSD backend scans with
PAPER_GPUS = 8


class BenchError(RuntimeError):
    """A setup problem reported as one line (missing CUDA, kernel package or DeepSpeed)."""


class StopBench(Exception):
    """Raised from the trainer's callback after the last timed step (no final checkpoint is written)."""


# ---- synthetic rows --------------------------------------------------------------------------------------------

class SyntheticRows:
    """A :class:`~mmmamba_bench.train.parallel.RowSource` of ``n`` rows of exactly ``length`` tokens.

    Each row is laid out like the processor's image prompt (``Processor.encode_prompt``): 5 text tokens (the
    chat template's opening), ``<img>``, ``tiles x tokens_per_tile`` image-context tokens, ``</img>``, then random
    text ids up to ``length``; ``pixel_values`` are random float32 tiles [tiles, 3, S, S], as the processor returns.
    """

    def __init__(self, config: ChatConfig, length: int, tiles: int, n: int = 2, seed: int = 0):
        emb = config.embedding_config
        image = tiles * emb.tokens_per_tile
        text = length - image - 2 - 5
        if text < 0:
            raise BenchError(f"a row of {length} tokens cannot hold {tiles} tiles of {emb.tokens_per_tile} tokens")
        gen = torch.Generator().manual_seed(seed)
        sp, V, S = emb.special_token_maps, emb.llm_vocab_size, config.image_size
        self.items: list[Encoded] = []
        for _ in range(n):
            ids = (torch.randint(0, V, (5,), generator=gen).tolist() + [sp["<img>"]]
                   + [emb.img_context_token_id] * image + [sp["</img>"]]
                   + torch.randint(0, V, (text,), generator=gen).tolist())
            pixels = torch.randn(tiles, 3, S, S, generator=gen)
            self.items.append(Encoded(ids, pixels, labels=None, tiles_per_image=(tiles,)))
        self.sha256 = hashlib.sha256(f"synthetic:{length}:{tiles}:{n}:{seed}".encode()).hexdigest()

    def row_at(self, k: int) -> int:
        return k % len(self.items)

    def encode(self, row: int) -> Encoded | None:
        return self.items[row]

    def bad_rows(self) -> dict[int, str]:
        return {}

    def note_bad(self, rows: dict[int, str]) -> None:
        pass


class _NoTokenizer:
    """Random weights have no tokenizer; the collate step only needs the padding id (rows are never padded here)."""

    pad_token_id = 0

    def token_to_id(self, token: str) -> None:
        return None


# ---- model FLOPs ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shapes:
    """What the FLOP count reads from a config (both stacks of HoVLE / mmMamba share their layer shapes)."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    patch: int  # patch size p
    patches_per_tile: int  # g^2
    tokens_per_tile: int  # g^2 r^2
    shuffle_in: int  # width into the pixel-shuffle MLP (H / r^2)
    blocks: tuple[str, ...]  # per global layer: "mha" | "mamba2"

    @staticmethod
    def of(config: ChatConfig) -> Shapes:
        e, m = config.embedding_config, config.llm_config
        if (e.hidden_size, e.num_attention_heads, e.num_key_value_heads, e.intermediate_size) != \
                (m.hidden_size, m.num_attention_heads, m.num_key_value_heads, m.intermediate_size):
            raise BenchError("the FLOP count assumes both stacks share their layer shapes")
        return Shapes(e.hidden_size, e.num_attention_heads, e.num_key_value_heads, e.head_dim, e.intermediate_size,
                      m.vocab_size, e.patch_size, e.grid_size ** 2, e.tokens_per_tile,
                      int(e.hidden_size / e.downsample_ratio ** 2), tuple(config.block_types))

    @property
    def attn_weights(self) -> int:  # wqkv + wo
        return (self.heads + 2 * self.kv_heads) * self.head_dim * self.hidden + self.heads * self.head_dim * self.hidden

    @property
    def mixer_in_rows(self) -> int:  # rows of wvkqgdt: v, k, q, g, dt
        return (2 * self.kv_heads + 2 * self.heads) * self.head_dim + self.heads

    @property
    def mixer_out(self) -> int:  # o_proj
        return self.heads * self.head_dim * self.hidden

    @property
    def mlp(self) -> int:
        return 3 * self.hidden * self.intermediate

    def trained_rows(self, stage: int) -> int:
        """Rows of wvkqgdt that train: g and dt in stage 1 (paper Sec. 4.2), all of them in stages 2-3."""
        return self.heads * self.head_dim + self.heads if stage == 1 else self.mixer_in_rows


def attention_flops(s: Shapes, L: int, causal: bool = True) -> float:
    """One attention layer, one row: QK^T and PV, 2 x 2 x nh hd L^2, halved for the causal mask when ``causal``."""
    full = 4.0 * s.heads * s.head_dim * L * L
    return full / 2 if causal else full


def ssd_flops(s: Shapes, L: int, chunk: int) -> float:
    """One Mamba-2 scan, one row, forward: per head and token Q n (C B^T in the chunk) + Q p (its product with x)
    + n p (the chunk states B^T x) + n p (the read-out C S); n = p = head_dim; 2 FLOPs per multiply-add."""
    n = p = s.head_dim
    Q = min(chunk, L)
    return 2.0 * s.heads * L * (Q * n + Q * p + 2 * n * p)


def vision_flops(s: Shapes, tiles: int) -> float:
    """The image path of ``tiles`` tiles: the patch convolution (3 p^2 x H per patch) and the pixel-shuffle MLP."""
    conv = s.patches_per_tile * 3 * s.patch ** 2 * s.hidden
    mlp = s.tokens_per_tile * (s.shuffle_in * s.hidden + s.hidden * s.hidden)
    return 2.0 * tiles * (conv + mlp)


def layer_weights(s: Shapes, kind: str) -> int:
    """Matmul weights one token passes through in a decoder layer."""
    return (s.attn_weights if kind == "mha" else s.mixer_in_rows * s.hidden + s.mixer_out) + s.mlp


def step_flops(teacher: Shapes, student: Shapes, stage: int, rows: int, L: int, tiles: int, chunk: int,
               causal: bool = True) -> dict[str, float]:
    """Model FLOPs of one optimizer step on ``rows`` rows of ``L`` tokens (``tiles`` image tiles each).

    Conventions: 2 FLOPs per multiply-add; matmul-shaped work only (norms, activations, the width-2 conv, softmax,
    the KL, the optimizer are left out); recomputation by activation checkpointing is NOT counted. T = rows x L.
    A linear layer of P weights costs 2PT forward, 2PT for its input gradient and 2PT for its weight gradient, the
    last only for weights that train (for wvkqgdt only its trained rows r: g + dt in stage 1, all in stages 2-3).

    teacher forward  = 2T sum_layers (wqkv + wo + 3HI) + rows x sum_layers attn(L) + vision + head
    attn(L)          = 2 x 2 x nh hd L^2 / 2  (QK^T and PV; causal: half of the L x L products; causal=False: all)
    ssd(L)           = 2 nh L (Q n + Q p + 2 n p)  (:func:`ssd_flops`, chunk Q of the backend)
    vision           = 2 x tiles x rows x (g^2 3p^2 H + t (H/r^2 H + H H))
    head             = 2HV per position with logits: the last position only in stages 1-2, all T in stage 3

    stage 1-2 student: for every Mamba-2 layer, forward 2T (wvkqgdt + o_proj) + rows ssd(L); input gradients
      2T o_proj + 2 rows ssd(L) (the scan's backward is 2x its forward: all its operands are activations; no input
      gradient into wvkqgdt, whose input is the teacher's); weight gradients 2T H r.
    stage 3 student: forward of the whole student (layers, scans, attention, vision, full head); input gradients
      of the head (2THV) and of every layer from the first Mamba-2 layer on (2T x its weights; attention and scan
      2x their forward), except wvkqgdt's in that first layer; weight gradients 2T H r in every Mamba-2 layer.
    """
    T = rows * L
    mamba = [i for i, k in enumerate(student.blocks) if k == "mamba2"]
    r = student.trained_rows(stage)
    teach = (2.0 * T * sum(layer_weights(teacher, k) for k in teacher.blocks)
             + rows * sum(attention_flops(teacher, L, causal) for k in teacher.blocks if k == "mha")
             + rows * vision_flops(teacher, tiles) + 2.0 * teacher.hidden * teacher.vocab * (T if stage == 3 else rows))
    wgrad = 2.0 * T * student.hidden * r * len(mamba)
    if stage in (1, 2):
        fwd = len(mamba) * (2.0 * T * (student.mixer_in_rows * student.hidden + student.mixer_out)
                            + rows * ssd_flops(student, L, chunk))
        bwd = len(mamba) * (2.0 * T * student.mixer_out + 2 * rows * ssd_flops(student, L, chunk))
    else:
        def mixing(kind: str) -> float:
            return rows * (attention_flops(student, L, causal) if kind == "mha" else ssd_flops(student, L, chunk))

        head = 2.0 * student.hidden * student.vocab * T
        fwd = (2.0 * T * sum(layer_weights(student, k) for k in student.blocks)
               + sum(mixing(k) for k in student.blocks) + rows * vision_flops(student, tiles) + head)
        first = mamba[0]
        bwd = head + sum(2.0 * T * layer_weights(student, k) + 2 * mixing(k) for k in student.blocks[first:])
        bwd -= 2.0 * T * student.mixer_in_rows * student.hidden
    return {"teacher_forward": teach, "student_forward": fwd, "student_input_grads": bwd,
            "student_weight_grads": wgrad, "total": teach + fwd + bwd + wgrad}


# ---- models -----------------------------------------------------------------------------------------------------

def build_pair(teacher_spec: str, layout: str, device: torch.device, dtype: torch.dtype,
               ssd_backend: str) -> tuple[MMMambaChatModel, MMMambaChatModel]:
    """The frozen teacher (random weights of a preset's shapes) and a student seeded from it (paper Sec. 4.1, mimic).

    Seeding runs on the CPU copies of the teacher's attention tensors only; every other tensor is copied from the
    teacher on the device.
    """
    teacher = build_model(teacher_spec, device, dtype, ssd_backend="torch")
    for p in teacher.parameters():
        p.requires_grad_(False)
    state = {k: (v.cpu() if ".attention." in k else v) for k, v in teacher.state_dict().items()}
    cfg, seeded = seed_state_dict(teacher.config, state, layout)
    with torch.device(device):
        student = MMMambaChatModel(cfg, ssd_backend=ssd_backend)
    student.load_state_dict(seeded)
    student.to(dtype)
    student.set_ssd_backend(ssd_backend)
    return teacher, student


def check_ssd_grads(backend: str, shapes: Shapes, device: torch.device, dtype: torch.dtype, L: int) -> dict:
    """The backend's scan and its gradients against the float64 torch scan on fresh random inputs (and the first
    compilation of its forward and backward kernels, outside the timed cases)."""
    gen = torch.Generator().manual_seed(7)
    h, p = shapes.heads, shapes.head_dim

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(device)

    x, B, C = (rand(1, L, h, p, scale=s).to(dtype) for s in (1.0, 0.3, 0.3))
    dt = torch.nn.functional.softplus(rand(1, L, h) - 1)
    A = -torch.exp(rand(h) * 0.5)
    w = rand(1, L, h, p)

    def grads(scan, cast):
        leaves = [t.detach().to(cast(t)).requires_grad_(True) for t in (x, dt, A, B, C)]
        y, _ = scan(*leaves)
        (y.double() * w.double()).sum().backward()
        return y.detach().double(), [t.grad.double() for t in leaves]

    y, g = grads(resolve_backend(backend, device).scan, lambda t: t.dtype)
    y_ref, g_ref = grads(resolve_backend("torch", device).scan, lambda t: torch.float64)

    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-30))

    errs = {"y": rel(y, y_ref), **{f"d{n}": rel(a, b) for n, a, b in zip(("x", "dt", "A", "B", "C"), g, g_ref)}}
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-3
    return {"backend": backend, "length": L, "dtype": str(dtype), "rel_err": {k: float(f"{v:.3g}")
                                                                               for k, v in errs.items()},
            "tolerance": tol, "ok": all(v < tol for v in errs.values())}


# ---- one case ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    stage: int
    length: int
    checkpointing: bool = False

    @property
    def label(self) -> str:
        return f"stage {self.stage} @ {self.length}" + (" +ckpt" if self.checkpointing else "")


@dataclass(frozen=True)
class Setup:
    """What every case shares: the shapes the FLOP count reads, the SSD chunk, the measured peak, the step counts."""

    teacher: Shapes
    student: Shapes
    ssd_chunk: int
    peak_tflops: float | None  # bf16 matmul rate measured in this run (None on the CPU)
    tiles: int
    micro_batch: int
    accumulation: int
    warmup: int
    steps: int
    profile: bool = False  # print the timed steps' top operators (torch.profiler)


class StepTimer:
    """The trainer's callback: a synchronised timestamp after every step; stops the run after the last timed one."""

    def __init__(self, device: torch.device, warmup: int, timed: int, profiler=None):
        self.device, self.warmup, self.timed, self.profiler = device, warmup, timed, profiler
        self.stamps: dict[int, float] = {}
        self.losses: list[float] = []

    def __call__(self, step: int, loss: float) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stamps[step] = time.perf_counter()
        self.losses.append(loss)
        if self.profiler is not None:
            self.profiler.step()
        if step >= self.warmup + self.timed:
            raise StopBench

    def step_seconds(self) -> list[float]:
        """Durations of the timed steps (warmup + 1 .. warmup + timed)."""
        return [self.stamps[k] - self.stamps[k - 1] for k in range(self.warmup + 1, self.warmup + self.timed + 1)]


def engine_name(acc) -> str:
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.DEEPSPEED:
        return f"deepspeed-zero{acc.state.deepspeed_plugin.zero_stage}"
    return "plain" if acc.num_processes == 1 else "ddp"


def run_case(case: Case, teacher: MMMambaChatModel, student: MMMambaChatModel, recipe: DistillRecipe, acc,
             setup: Setup, work: Path) -> dict:
    """Train ``case`` for warm-up + timed steps through ``train_parallel``; returns its measurements."""
    deepspeed = engine_name(acc).startswith("deepspeed")
    device, dtype = student.device, student.dtype
    plan = StepPlan.make(setup.micro_batch * acc.num_processes * setup.accumulation, acc.num_processes,
                         setup.micro_batch)
    cfg = dataclasses.replace(recipe.stage(case.stage), steps=setup.warmup + setup.steps + 1,
                              batch_size=plan.global_batch, warmup_frac=0.0, decay_frac=0.0)
    source = SyntheticRows(student.config, case.length, setup.tiles)
    collate = Processor(_NoTokenizer(), student.config).collate  # type: ignore[arg-type]
    trainable, objective, _ = prepare_stage(teacher, student, case.stage, cfg.loss_scale,
                                            master_fp32=dtype != torch.float32 and not deepspeed,
                                            checkpointing=case.checkpointing)
    profiler = None
    if setup.profile:  # the timed steps only (the warm-up ones compile and tune kernels)
        from torch.profiler import ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        profiler = profile(activities=acts, schedule=schedule(wait=setup.warmup - 1, warmup=1, active=setup.steps),
                           on_trace_ready=_print_profile)
        profiler.start()
    timer = StepTimer(device, setup.warmup, setup.steps, profiler)
    n_trained = sum(p.numel() for p in trainable.params.values()) - sum(m.frozen_numel for m in trainable.row_masks)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    try:
        train_parallel(name=f"bench-s{case.stage}-{case.length}", trainable=trainable, objective=objective,
                       source=source, collate=collate, cfg=cfg, plan=plan,
                       checkpoint=TrainCheckpoint(work / f"s{case.stage}-{case.length}-{int(case.checkpointing)}",
                                                  "bench"),
                       checkpoint_every=10 ** 9, accelerator=acc, progress=False, callback=timer)
        raise BenchError("the trainer finished before the last timed step")  # steps = warmup + timed + 1
    except StopBench:
        pass
    finally:
        if profiler is not None:
            profiler.stop()
        acc.free_memory()  # the trainer's own release is skipped when the callback stops it
        student.zero_grad(set_to_none=True)
        trainable.close()
        student.gradient_checkpointing = False
        student.to(dtype)
        student.eval()
    out = measure(case, timer, plan, setup, engine_name(acc), n_trained)
    if device.type == "cuda":
        out["memory"] = memory_row(device, base, n_trained, deepspeed, plan.processes)
    return out


def _print_profile(prof) -> None:
    """The timed steps' operators: by GPU time, and by CPU time (what the host spends launching them)."""
    events = prof.key_averages()
    for key in ("cuda_time_total", "cpu_time_total"):
        try:
            print(events.table(sort_by=key, row_limit=22, max_name_column_width=60), flush=True)
        except Exception as exc:  # noqa: BLE001 - a profile table is a diagnostic, never a reason to stop
            print(f"profile table by {key}: {exc}", flush=True)


def measure(case: Case, timer: StepTimer, plan: StepPlan, setup: Setup, engine: str, n_trained: int) -> dict:
    """Step times, throughput and model FLOP rate of one case (per GPU: each process runs G / P rows a step)."""
    secs = timer.step_seconds()
    mean = sum(secs) / len(secs)
    tokens = plan.global_batch * case.length
    rows = plan.global_batch // plan.processes
    flops = step_flops(setup.teacher, setup.student, case.stage, rows, case.length, setup.tiles, setup.ssd_chunk)
    full_attn = step_flops(setup.teacher, setup.student, case.stage, rows, case.length, setup.tiles,
                           setup.ssd_chunk, causal=False)["total"]
    per_gpu = flops["total"] / mean
    row = {"stage": case.stage, "length": case.length, "activation_checkpointing": case.checkpointing,
           "engine": engine, "processes": plan.processes, "micro_batch": plan.micro_batch,
           "accumulation": plan.accumulation, "global_batch": plan.global_batch, "tokens_per_step": tokens,
           "trained_parameters": n_trained, "warmup_steps": timer.warmup, "timed_steps": len(secs),
           "step_s": [round(s, 4) for s in secs], "ms_per_step": round(1e3 * mean, 2),
           "ms_per_step_median": round(1e3 * statistics.median(secs), 2),
           "tokens_per_s": round(tokens / mean, 1), "tokens_per_s_per_gpu": round(tokens / mean / plan.processes, 1),
           "model_tflop_per_step_per_gpu": {k: round(v / 1e12, 4) for k, v in flops.items()},
           "model_tflop_per_step_per_gpu_full_attention": round(full_attn / 1e12, 4),
           "model_tflops_per_gpu": round(per_gpu / 1e12, 2),
           "losses": [float(f"{v:.5g}") for v in timer.losses]}
    if setup.peak_tflops:
        row["mfu_pct"] = round(100 * per_gpu / (setup.peak_tflops * 1e12), 1)
        row["mfu_pct_full_attention"] = round(100 * full_attn / mean / (setup.peak_tflops * 1e12), 1)
    return row


def memory_row(device: torch.device, base: int, n_trained: int, deepspeed: bool, processes: int) -> dict:
    """Peak memory of the case against the paper's 80 GB A800.

    ``fits_a800_80gb``: the caching allocator's peak reserve plus ~1 GiB of CUDA context within 80 GiB. Under ZeRO-2
    the optimizer side (fp32 master 4 B + Adam moments 8 B + fp32 gradient partition 4 B per trained parameter) is
    split over the processes, so ``zero2_8_gpus_estimate_gib`` = peak - 16 B x trained x (1/P - 1/8) estimates one
    GPU of the paper's 8 (DDP keeps all of it on every GPU).
    """
    peak, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    row = {"weights_before_gib": round(base / GIB, 2), "peak_allocated_gib": round(peak / GIB, 2),
           "peak_reserved_gib": round(reserved / GIB, 2), "fits_a800_80gb": reserved / GIB + 1.0 <= A800_GIB}
    if deepspeed:
        row["zero2_8_gpus_estimate_gib"] = round((peak - 16 * n_trained * (1 / processes - 1 / 8)) / GIB, 2)
    return row


# ---- projection of the paper's recipe ----------------------------------------------------------------------------

def project(results: list[dict], recipe: DistillRecipe, tokens_per_row: int, label: str) -> dict | None:
    """Wall time of the paper's 3 x 20K steps on 8 GPUs from the per-GPU tokens/s measured at ``tokens_per_row``.

    Assumes every row holds ``tokens_per_row`` tokens and ideal data-parallel scaling (8 x one GPU; the measured
    steps also pay a full optimizer step per micro-batch, which 16 accumulated micro-batches amortise), stage 3
    without activation checkpointing where it was measured, else with it.
    """
    stages = {}
    for k in (1, 2, 3):
        rows = [r for r in results if r.get("stage") == k and r.get("length") == tokens_per_row and "error" not in r]
        rows.sort(key=lambda r: r["activation_checkpointing"])
        if not rows:
            return None
        tps, cfg = rows[0]["tokens_per_s_per_gpu"], recipe.stage(k)
        tokens = cfg.steps * cfg.batch_size * tokens_per_row
        stages[f"stage{k}"] = {"steps": cfg.steps, "global_batch": cfg.batch_size, "tokens": tokens,
                               "tokens_per_s_per_gpu": tps,
                               "activation_checkpointing": rows[0]["activation_checkpointing"],
                               "hours_on_8_gpus": round(tokens / (tps * PAPER_GPUS) / 3600, 2)}
    total = sum(s["hours_on_8_gpus"] for s in stages.values())
    return {"assumption": label, "tokens_per_row": tokens_per_row, "gpus": PAPER_GPUS, "stages": stages,
            "total_hours_on_8_gpus": round(total, 1)}


def projections(results: list[dict], recipe: DistillRecipe, lengths: list[int]) -> dict:
    """The paper's recipe projected at each measured length (the shortest is the likely average, the longest the
    recipe's max_tokens bound); the paper's own wall time on 8 x A800 is not in paper_numbers.md."""
    out: dict = {"paper_8x_a800": "not reported (paper_numbers.md gives the recipe, not its wall time)", "cases": []}
    for L in sorted(lengths):
        why = ("the paper's length distribution is unknown; a SOLO SFT row has up to 7 tiles (6 + thumbnail) = "
               "1,792 image tokens plus a short conversation, so ~2K tokens on average is the likely case"
               if L == min(lengths) else
               "upper bound: every row at the recipe's max_tokens")
        p = project(results, recipe, L, f"every row {L} tokens ({why})")
        if p is not None:
            out["cases"].append(p)
    return out


# ---- environment, table -----------------------------------------------------------------------------------------

def versions() -> dict:
    out = {}
    for pkg in ("torch", "triton", "accelerate", "deepspeed", "mamba-ssm", "fla-core", "pydantic"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def environment(device: torch.device) -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "device": str(device), **versions(),
           "cuda": torch.version.cuda, "env": {k: os.environ.get(k) for k in
                                               ("MAMBA_DETERMINISTIC", "TRITON_CACHE_AUTOTUNING",
                                                "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_MIXED_PRECISION")}}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / GIB, 1)
    return env


def table(result: dict) -> str:
    """One line per case (peak = max allocated; "8gpu" = the ZeRO-2 estimate for one of 8 GPUs), then the
    projections."""
    lines = [(f"{'stage':>5} {'len':>5} {'engine':>15} {'ckpt':>4} {'ms/step':>8} {'tok/s/gpu':>9} "
              f"{'TFLOP/step':>10} {'TFLOP/s':>7} {'MFU%':>5} {'peak GiB':>8} {'8gpu':>5} {'<=80GB':>6}  last loss")]
    nan = float("nan")
    for r in result["cases"]:
        ckpt = "y" if r["activation_checkpointing"] else "n"
        if "error" in r:
            lines.append(f"{r['stage']:>5} {r['length']:>5} {'':>15} {ckpt:>4}  ERROR {r['error'][:100]}")
            continue
        mem = r.get("memory", {})
        lines.append(f"{r['stage']:>5} {r['length']:>5} {r['engine']:>15} {ckpt:>4} {r['ms_per_step']:>8.1f} "
                     f"{r['tokens_per_s_per_gpu']:>9.0f} {r['model_tflop_per_step_per_gpu']['total']:>10.3f} "
                     f"{r['model_tflops_per_gpu']:>7.1f} {r.get('mfu_pct', nan):>5.1f} "
                     f"{mem.get('peak_allocated_gib', nan):>8.1f} {mem.get('zero2_8_gpus_estimate_gib', nan):>5.1f} "
                     f"{mem.get('fits_a800_80gb', '-')!s:>6}  {r['losses'][-1]:.4g}")
    for p in result.get("projection", {}).get("cases", []):
        hours = " + ".join(f"{s['hours_on_8_gpus']:.1f}" for s in p["stages"].values())
        lines.append(f"paper recipe (3 x 20K steps, batch 128/128/64) on 8 GPUs at {p['tokens_per_row']} tokens/row: "
                     f"{hours} = {p['total_hours_on_8_gpus']} h")
    if "projection" in result:
        lines.append(f"paper's own time on 8 x A800: {result['projection']['paper_8x_a800']}")
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("bench_distill.json"))
    ap.add_argument("--tiny", action="store_true", help="CPU check: demo-sized model, float32, torch scan, 128/256")
    ap.add_argument("--device", default=None, help="cuda (default) or cpu (--tiny)")
    ap.add_argument("--teacher", default=None, help="preset of the teacher's shapes (default hovle-2.6b; tiny: demo)")
    ap.add_argument("--layout", default="linear", help="student layout (linear | hybrid | ...)")
    ap.add_argument("--ssd-backend", default=None, help="the student's SSD scan (default mamba_ssm; tiny: torch)")
    ap.add_argument("--recipe", type=Path, default=REPO / "distill" / "mmmamba-linear.yaml",
                    help="stage settings (lr, clipping, loss scale) and the recipe the projection uses")
    ap.add_argument("--stages", default="1,2,3")
    ap.add_argument("--lengths", default=None, help="tokens per row (default 2048,8192; tiny: 128,256)")
    ap.add_argument("--checkpointed", default=None,
                    help="stage:length cases run again with activation checkpointing (default 3:8192; tiny 3:256)")
    ap.add_argument("--tiles", type=int, default=7, help="image tiles per row (256 tokens each at the real shapes)")
    ap.add_argument("--micro-batch", type=int, default=1, help="rows per forward/backward on each process")
    ap.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per case (default 2; tiny 1)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case (default 4; tiny 2)")
    ap.add_argument("--budget-s", type=float, default=None, help="start no new case after this many seconds")
    ap.add_argument("--profile", action="store_true", help="print the timed steps' top operators (torch.profiler)")
    ap.add_argument("--summarize", nargs="+", type=Path, help="print the tables of finished runs' JSON and exit")
    args = ap.parse_args(argv)
    tiny = args.tiny
    args.device = args.device or ("cpu" if tiny else "cuda")
    args.teacher = args.teacher or ("demo" if tiny else "hovle-2.6b")
    args.ssd_backend = args.ssd_backend or ("torch" if tiny else "mamba_ssm")
    args.lengths = [int(x) for x in (args.lengths or ("128,256" if tiny else "2048,8192")).split(",")]
    args.stages = [int(x) for x in args.stages.split(",")]
    ck = args.checkpointed if args.checkpointed is not None else ("3:256" if tiny else "3:8192")
    args.checkpointed = [tuple(int(v) for v in c.split(":")) for c in ck.split(",") if c]
    args.warmup = args.warmup if args.warmup is not None else (1 if tiny else 2)
    args.steps = args.steps if args.steps is not None else (2 if tiny else 4)
    if args.steps < 1 or args.warmup < 1:
        ap.error("--steps and --warmup must be >= 1 (the first timed step is timed from the last warm-up step)")
    return args


def cases(args) -> list[Case]:
    """Every stage at every length, then the activation-checkpointed repeats."""
    out = [Case(k, L) for k in args.stages for L in args.lengths]
    out += [Case(k, L, True) for k, L in args.checkpointed if k in args.stages]
    return out


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def preflight(args) -> None:
    """One-line errors for what would otherwise fail deep inside: no GPU, no kernel package, no DeepSpeed."""
    if deepspeed_requested():
        if args.device == "cpu" and os.environ.get("DS_ACCELERATOR") != "cpu":
            raise BenchError("DeepSpeed on the CPU needs DS_ACCELERATOR=cpu (its gloo backend); or drop "
                             "--use_deepspeed")
        try:
            import deepspeed  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            raise BenchError(f"accelerate was launched with --use_deepspeed but deepspeed does not import "
                             f"({type(exc).__name__}: {exc}); install it (scripts/device_wheels.sh carries a "
                             f"pure-Python wheel)") from None
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise BenchError("no CUDA device: run on the GPU machine, or pass --tiny for the CPU check")
    try:
        resolve_backend(args.ssd_backend, args.device)
    except BackendUnavailable as exc:
        raise BenchError(f"{exc} (mamba_ssm: install the Python-only mamba-ssm wheel of scripts/device_wheels.sh; "
                         f"or pass --ssd-backend torch)") from None


def bench_recipe(args) -> DistillRecipe:
    """The recipe file's stages, in bf16 on CUDA (float32 on the CPU with --tiny).

    The trainer's accelerator (``make_accelerator``) ignores DeepSpeed when told the device is the CPU, so a --tiny
    DeepSpeed check (DeepSpeed's CPU accelerator, ``DS_ACCELERATOR=cpu``) keeps the recipe's device "cuda": accelerate
    then runs on the CPU it finds.
    """
    recipe = load_recipe(args.recipe, DistillRecipe)
    cpu = args.device == "cpu" and not deepspeed_requested()
    return dataclasses.replace(recipe, device="cpu" if cpu else "cuda", dtype="float32" if args.tiny else "bfloat16",
                               ssd_backend=args.ssd_backend)


def code_path(acc, student: MMMambaChatModel, dtype: torch.dtype, args, chunk: int) -> dict:
    """Which implementation ran: engine, precision, the student's kernels, the row layout."""
    engine = engine_name(acc)
    if dtype == torch.float32:
        trained = "float32"
    elif engine.startswith("deepspeed"):
        trained = "bf16 in the model, DeepSpeed's own fp32 master partition"
    else:
        trained = "fp32 master copies, bf16 matrix products under accelerate's autocast"
    out = {"engine": engine, "processes": acc.num_processes, "mixed_precision": acc.mixed_precision,
           "trained_params": trained, "frozen_params": str(dtype), "student": student.code_path.as_dict(),
           "ssd_chunk": chunk, "teacher": args.teacher, "layout": args.layout, "tiles_per_row": args.tiles,
           "tokens_per_tile": student.config.embedding_config.tokens_per_tile}
    if student.code_path.ssd_scan == "mamba_ssm":  # mamba_ssm.utils.determinism reads MAMBA_DETERMINISTIC
        deterministic = os.environ.get("MAMBA_DETERMINISTIC", "")[:1] == "1"
        out["mamba_ssm_kernels"] = ("deterministic: one configuration per kernel, no autotuning" if deterministic
                                    else "autotuned")
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summarize:
        for path in args.summarize:
            print(f"== {path}\n{table(json.loads(path.read_text()))}" if path.is_file() else f"== {path}: missing")
        return 0
    t_start = time.perf_counter()
    preflight(args)
    recipe = bench_recipe(args)
    acc = make_accelerator(recipe)
    main_proc = acc.is_main_process
    logging.basicConfig(level=logging.INFO if main_proc else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    def say(msg: str) -> None:
        if main_proc:
            print(f"[{time.strftime('%H:%M:%S')} +{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    device = torch.device("cpu") if args.device == "cpu" else acc.device
    dtype = torch.float32 if args.tiny else torch.bfloat16
    result: dict = {"env": environment(device), "args": {k: (str(v) if isinstance(v, Path) else v)
                                                         for k, v in vars(args).items()}, "cases": []}
    if device.type == "cuda":
        from bench_eval_generate import ceilings  # scripts/ is on sys.path when this file runs as a script

        result["env"].update(ceilings())
    say(f"environment: {json.dumps(result['env'])}")
    teacher, student = build_pair(args.teacher, args.layout, device, dtype, args.ssd_backend)
    setup = Setup(Shapes.of(teacher.config), Shapes.of(student.config), SSD_CHUNK[student.code_path.ssd_scan],
                  result["env"].get("bf16_matmul_tflops"), args.tiles, args.micro_batch, args.accumulation,
                  args.warmup, args.steps, args.profile)
    result["code_path"] = code_path(acc, student, dtype, args, setup.ssd_chunk)
    say(f"models built: teacher {args.teacher}, student {args.layout}; {json.dumps(result['code_path'])}")
    result["ssd_check"] = check_ssd_grads(args.ssd_backend, setup.student, device, dtype,
                                          min(1024, max(args.lengths)))
    say(f"SSD scan vs the float64 torch scan (forward + gradients): {json.dumps(result['ssd_check'])}")
    with tempfile.TemporaryDirectory(prefix="bench_distill_") as work:
        for case in cases(args):
            if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
                row = {"stage": case.stage, "length": case.length, "activation_checkpointing": case.checkpointing,
                       "error": f"skipped: past the --budget-s {args.budget_s:g} s"}
            else:
                say(f"{case.label}: {args.warmup} warm-up + {args.steps} timed steps")
                row = run_guarded(case, teacher, student, recipe, acc, setup, Path(work))
            result["cases"].append(row)
            say(f"{case.label}: " + (row["error"][:300] if "error" in row else
                                    f"{row['ms_per_step']} ms/step, {row['tokens_per_s_per_gpu']} tok/s/gpu, "
                                    f"{row['model_tflops_per_gpu']} TFLOP/s, MFU {row.get('mfu_pct')}%, "
                                    f"peak {row.get('memory', {}).get('peak_allocated_gib')} GiB"))
            write(result, args.out, main_proc)
    result["projection"] = projections(result["cases"], recipe, args.lengths)
    write(result, args.out, main_proc)
    if main_proc:
        print(table(result), flush=True)
        print(f"wrote {args.out}", flush=True)
    return 1 if any("error" in r for r in result["cases"]) or not result["ssd_check"]["ok"] else 0


def run_guarded(case: Case, teacher, student, recipe, acc, setup: Setup, work: Path) -> dict:
    """:func:`run_case`, with a failure (out of memory, a kernel that does not compile) recorded in the case's row
    (its traceback goes to stderr) so the other cases still run."""
    try:
        return run_case(case, teacher, student, recipe, acc, setup, work)
    except Exception as exc:  # noqa: BLE001
        traceback.print_exc()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return {"stage": case.stage, "length": case.length, "activation_checkpointing": case.checkpointing,
                "error": f"{type(exc).__name__}: {exc}"[:2000]}


def write(result: dict, path: Path, main_proc: bool) -> None:
    if main_proc:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench_distill: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
