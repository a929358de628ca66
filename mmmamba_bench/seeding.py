"""Seeding: carve Mamba-2 layers out of a Transformer checkpoint (paper Sec. 4.1; checkpoint_format.md "Seeding").

For every layer the layout turns from attention into Mamba-2:

- ``mimic`` (the paper's "inherit W_QKV + mimic"): q / k / v rows of ``wvkqgdt`` are the teacher's un-grouped
  ``wqkv`` rows, ``o_proj`` = ``wo``; the conv is the identity on the current token; the dt rows (W_gamma) are
  zero, dt_bias = inverse-softplus of dt drawn log-uniformly in [1e-3, 0.1] and A_log_bias = 1, so the decay
  exp(-softplus(dt_bias) exp(A_log_bias)) starts close to 1; gate rows xavier-uniform with gain 2^-2.5; gate norm
  weight 1.
- ``inherit``: q / k / v / o inherited as above; the Mamba-2-specific parameters initialised the standard Mamba-2
  way (random conv, random dt and gate rows, A_log = log U(1, 16), dt_bias from log-uniform dt).
- ``scratch``: nothing inherited in the mixer: fresh random q / k / v / g / dt rows and o_proj,
  A_log = log U(1, 16), dt_bias = 0.

Everything outside the converted mixers (MLPs, norms, embeddings, vision parts, LM head, attention layers the
layout keeps) is copied bit for bit.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable

import torch

from mmmamba_bench.checkpoint import check_state, read_state_dict, save_checkpoint
from mmmamba_bench.config import MMMAMBA, ChatConfig, StackConfig
from mmmamba_bench.layouts import parse_layout
from mmmamba_bench.model.attention import split_wqkv

log = logging.getLogger(__name__)

INIT_STRATEGIES = ("mimic", "inherit", "scratch")
DT_MIN, DT_MAX = 1e-3, 0.1
MIMIC_A_LOG = 1.0
GATE_GAIN = 2.0 ** -2.5


class SeedingError(ValueError):
    """A conversion the teacher checkpoint or layout does not allow."""


def layer_prefixes(config: ChatConfig) -> list[str]:
    """Tensor-name prefix of each global layer (embedding module first)."""
    emb = [f"embedding_model.encoder.{i}" for i in range(config.embedding_config.num_hidden_layers)]
    llm = [f"language_model.model.layers.{j}" for j in range(config.llm_config.num_hidden_layers)]
    return emb + llm


def _uniform(shape, bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound


def _dt_bias(nh: int, gen: torch.Generator) -> torch.Tensor:
    """inverse-softplus of dt ~ log-uniform [DT_MIN, DT_MAX] (the Mamba-2 dt initialisation)."""
    u = torch.rand(nh, generator=gen, dtype=torch.float64)
    dt = torch.exp(u * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN)).clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


def seed_mixer(teacher: dict[str, torch.Tensor], prefix: str, cfg: StackConfig, init: str,
               gen: torch.Generator) -> dict[str, torch.Tensor]:
    """The Mamba-2 mixer tensors (``{prefix}.attention.*``) replacing the teacher's attention at ``prefix``."""
    if init not in INIT_STRATEGIES:
        raise SeedingError(f"unknown init strategy {init!r}; choose from {INIT_STRATEGIES}")
    H, nh, nkv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    wqkv_name, wo_name = f"{prefix}.attention.wqkv.weight", f"{prefix}.attention.wo.weight"
    for name in (wqkv_name, wo_name):
        if name not in teacher:
            raise SeedingError(f"teacher checkpoint has no tensor {name!r}: layer {prefix} is not an attention layer")
    dtype = teacher[wqkv_name].dtype
    conv_dim = (2 * nkv + nh) * hd
    lin_bound = 1.0 / math.sqrt(H)  # nn.Linear's default init bound (fan_in = H)

    if init == "scratch":
        wv = _uniform((nkv * hd, H), lin_bound, gen)
        wk = _uniform((nkv * hd, H), lin_bound, gen)
        wq = _uniform((nh * hd, H), lin_bound, gen)
        wo = _uniform((H, nh * hd), 1.0 / math.sqrt(nh * hd), gen)
    else:
        wq, wk, wv = (t.to(torch.float64) for t in split_wqkv(teacher[wqkv_name], nh, nkv, hd))
        wo = teacher[wo_name].to(torch.float64)

    if init == "mimic":
        xavier = GATE_GAIN * math.sqrt(6.0 / (H + nh * hd))
        wg = _uniform((nh * hd, H), xavier, gen)
        wdt = torch.zeros(nh, H, dtype=torch.float64)
        conv_w = torch.zeros(conv_dim, 1, 2, dtype=torch.float64)
        conv_w[:, 0, 1] = 1.0  # identity on the current token
        conv_b = torch.zeros(conv_dim, dtype=torch.float64)
        dt_bias = _dt_bias(nh, gen)
        a_log = torch.full((nh,), MIMIC_A_LOG, dtype=torch.float64)
    else:  # inherit / scratch: the standard Mamba-2 initialisation of the extra parameters
        wg = _uniform((nh * hd, H), lin_bound, gen)
        wdt = _uniform((nh, H), lin_bound, gen)
        conv_bound = 1.0 / math.sqrt(2)  # nn.Conv1d default: fan_in = (in / groups) * kernel = 2
        conv_w = _uniform((conv_dim, 1, 2), conv_bound, gen)
        conv_b = _uniform((conv_dim,), conv_bound, gen)
        a_log = torch.log(torch.rand(nh, generator=gen, dtype=torch.float64) * 15 + 1)  # A ~ U(1, 16)
        dt_bias = _dt_bias(nh, gen) if init == "inherit" else torch.zeros(nh, dtype=torch.float64)

    p = f"{prefix}.attention"
    out = {
        f"{p}.wvkqgdt.weight": torch.cat([wv, wk, wq, wg, wdt], dim=0),
        f"{p}.conv1d.weight": conv_w,
        f"{p}.conv1d.bias": conv_b,
        f"{p}.dt_bias": dt_bias,
        f"{p}.A_log_bias": a_log,
        f"{p}.g_norm_swish_gate.weight": torch.ones(hd, dtype=torch.float64),
        f"{p}.o_proj.weight": wo,
    }
    return {k: v.to(dtype) for k, v in out.items()}


def seed_state_dict(teacher_config: ChatConfig, teacher: dict[str, torch.Tensor], layout: str | list[str],
                    init: str = "mimic", seed: int = 0) -> tuple[ChatConfig, dict[str, torch.Tensor]]:
    """Return the student config and state dict for ``layout`` (see :mod:`mmmamba_bench.layouts`)."""
    if init not in INIT_STRATEGIES:
        raise SeedingError(f"unknown init strategy {init!r}; choose from {INIT_STRATEGIES}")
    types = parse_layout(layout, teacher_config.num_layers) if isinstance(layout, str) else list(layout)
    student_config = teacher_config.with_family(MMMAMBA).with_block_types(types)  # a student is mmMamba, any layout
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    converted: set[str] = set()
    n_emb = teacher_config.embedding_config.num_hidden_layers
    for i, (prefix, old, new) in enumerate(zip(layer_prefixes(teacher_config), teacher_config.block_types, types)):
        if old == new:
            continue
        if old == "mamba2":
            raise SeedingError(f"global layer {i} ({prefix}) is Mamba-2 in the teacher; it cannot become attention")
        cfg = teacher_config.embedding_config if i < n_emb else teacher_config.llm_config
        out.update(seed_mixer(teacher, prefix, cfg, init, gen))
        converted.add(f"{prefix}.attention.")
    for name, tensor in teacher.items():
        if not any(name.startswith(c) for c in converted):
            out[name] = tensor  # bit-identical copy
    return student_config, out


def convert(teacher: str | os.PathLike, out: str | os.PathLike, layout: str = "linear", init: str = "mimic",
            seed: int = 0, overwrite: bool = False, max_shard_bytes: int | None = None,
            before_publish: Callable[[Path], None] | None = None) -> Path:
    """Seed a student checkpoint from a Transformer teacher directory; writes the released layout to ``out``.

    The output's config is an mmMamba one (``mmMamba_chat``, whatever the layout) with ``layers_block_type`` filled
    in for both stacks, and loads with ``load_model``.
    Tokenizer files are copied along (never code). before_publish: see :func:`mmmamba_bench.checkpoint.save_model`.
    """
    from mmmamba_bench.outputs import check_output_target

    teacher, out = Path(teacher), Path(out)
    check_output_target(out, "--out")  # a file in its place or an unwritable parent: said before reading weights
    if out.exists() and not overwrite:
        raise FileExistsError(f"output directory already exists: {out} (pass --overwrite to replace it)")
    config = ChatConfig.from_json_file(teacher / "config.json")
    types = parse_layout(layout, config.num_layers)  # fail on a bad layout before reading any weights
    state = read_state_dict(teacher)
    check_state(config, state, teacher)  # the teacher must load as load_model would: nothing missing or mis-shaped
    student_config, student = seed_state_dict(config, state, types, init=init, seed=seed)
    n_new = sum(1 for a, b in zip(config.block_types, types) if a != b)
    log.info("seeding %d of %d layers as Mamba-2 (%s init, seed %d) -> %s", n_new, len(types), init, seed, out)
    return save_checkpoint(student_config, student, out, overwrite=overwrite, max_shard_bytes=max_shard_bytes,
                           side_files_from=teacher, before_publish=before_publish)
