"""The memory-bandwidth floor of one batch-1 decode step, and the CLI's size / context-length parsing.

A decode step must read every weight it uses once (all decoder layers, the final norm, the output head and one
embedding row), read and write each Mamba-2 layer's SSM state (float32) and conv state, and read the filled part
of each attention layer's KV cache (and write one new entry). ``floor_ms = bytes / bandwidth``, with the
bandwidth measured by a device-to-device copy (bytes read + written).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmmamba_bench.config import ChatConfig, StackConfig

KIB = 1024


@dataclass(frozen=True)
class StepBytes:
    weights: int
    state: int  # SSM + conv state, read and written
    kv: int  # KV cache read up to the filled length, plus this step's write

    @property
    def total(self) -> int:
        return self.weights + self.state + self.kv


def _layer_weights(cfg: StackConfig, kind: str) -> int:
    H, I, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    nh, nkv = cfg.num_attention_heads, cfg.num_key_value_heads
    n = 2 * H + 3 * H * I  # two RMSNorms + SwiGLU MLP
    if kind == "mha":
        return n + (nh + 2 * nkv) * hd * H + nh * hd * H
    C, G = (2 * nkv + nh) * hd, nh * hd
    return n + (C + G + nh) * H + G * H + 3 * C + 2 * nh + hd  # + conv weight/bias, dt_bias, A_log, gate norm


def step_bytes(config: ChatConfig, kv_len: int, dtype_bytes: int = 2, state_dtype_bytes: int = 4) -> StepBytes:
    """Bytes one decode step must move with ``kv_len`` tokens in the KV cache."""
    weights = state = kv = 0
    for stack in (config.embedding_config, config.llm_config):
        hd, nh, nkv = stack.head_dim, stack.num_attention_heads, stack.num_key_value_heads
        for kind in stack.block_types:
            weights += _layer_weights(stack, kind) * dtype_bytes
            if kind == "mha":
                kv += 2 * nkv * hd * dtype_bytes * (kv_len + 1)
            else:
                C = (2 * nkv + nh) * hd
                state += 2 * (nh * hd * hd * state_dtype_bytes + C * dtype_bytes)
    llm = config.llm_config
    weights += (llm.hidden_size + llm.vocab_size * llm.hidden_size + llm.hidden_size) * dtype_bytes
    return StepBytes(weights, state, kv)


def floor_ms(nbytes: float, bandwidth_bytes_per_s: float) -> float:
    if bandwidth_bytes_per_s <= 0:
        raise ValueError(f"bandwidth must be positive, got {bandwidth_bytes_per_s}")
    return 1e3 * nbytes / bandwidth_bytes_per_s


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
               "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_size(text: str) -> int:
    """``"24GiB"`` -> 25769803776, ``"24GB"`` -> 24e9, ``"1024"`` -> 1024 bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"not a memory size: {text!r} (e.g. 24GiB, 24GB, 512MiB)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_context(text: str) -> int:
    """``"1k"`` -> 1024, ``"103k"`` -> 105472 (K = 1024 tokens, as the report labels them), ``"500"`` -> 500."""
    t = text.strip().lower()
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(k?)", t)
    if not m:
        raise ValueError(f"not a context length: {text!r} (e.g. 1k, 103k, 512)")
    value = float(m.group(1)) * (KIB if m.group(2) else 1)
    if value < 1 or value != int(value):
        raise ValueError(f"context length must be a positive whole number of tokens: {text!r}")
    return int(value)


def parse_contexts(text: str) -> list[int]:
    return [parse_context(t) for t in text.split(",") if t.strip()]
