"""Fixed-shape decoding state, allocated once before prefill.

Attention layers get a static KV cache (written by index, read up to the filled length); Mamba-2 layers get a
conv state (the previous token's pre-convolution channels; the kernel has width 2) and an SSM state kept in
float32. Shapes never change during decoding, so a later step can be captured in a CUDA graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmmamba_bench.config import ChatConfig, StackConfig


@dataclass
class AttentionCache:
    k: torch.Tensor  # [B, nkv, T_max, hd]
    v: torch.Tensor  # [B, nkv, T_max, hd]


@dataclass
class Mamba2Cache:
    conv: torch.Tensor  # [B, (2 nkv + nh) hd] the previous token's pre-conv [v | k | q]
    ssm: torch.Tensor  # [B, nh, hd(p), hd(n)] float32


class InferenceCache:
    """Per-layer state over the global layer index, plus the filled length and the key padding mask."""

    def __init__(self, layers: list[AttentionCache | Mamba2Cache], batch_size: int, max_len: int,
                 device: torch.device):
        self.layers = layers
        self.batch_size = batch_size
        self.max_len = max_len
        self.length = 0  # tokens already written
        # True where a real (not left-padding) token sits; positions past ``length`` are unused.
        self.key_mask = torch.ones(batch_size, max_len, dtype=torch.bool, device=device)
        self.has_padding = False

    @classmethod
    def allocate(cls, config: ChatConfig, batch_size: int, max_len: int, device: torch.device | str,
                 dtype: torch.dtype) -> "InferenceCache":
        device = torch.device(device)
        layers: list[AttentionCache | Mamba2Cache] = []
        for stack in (config.embedding_config, config.llm_config):
            for kind in stack.block_types:
                layers.append(_layer_cache(stack, kind, batch_size, max_len, device, dtype))
        return cls(layers, batch_size, max_len, device)

    def nbytes(self) -> int:
        total = 0
        for c in self.layers:
            for t in vars(c).values():
                total += t.numel() * t.element_size()
        return total

    def rows(self, n: int) -> "InferenceCache":
        """A cache over the first ``n`` rows of this one, sharing its memory (views; length and padding flag are
        the view's own). The batched decode keeps one cache per capacity and prefills / decodes row prefixes."""
        if not 1 <= n <= self.batch_size:
            raise ValueError(f"rows({n}) of a cache of batch {self.batch_size}")
        layers = [type(c)(*(t[:n] for t in vars(c).values())) for c in self.layers]
        view = InferenceCache.__new__(InferenceCache)
        view.layers, view.batch_size, view.max_len = layers, n, self.max_len
        view.length, view.key_mask, view.has_padding = 0, self.key_mask[:n], False
        return view

    def reset(self) -> None:
        """Forget everything (same shapes): zero the states and the filled length."""
        self.length = 0
        self.key_mask.fill_(True)
        self.has_padding = False
        for c in self.layers:
            for t in vars(c).values():
                t.zero_()


def _layer_cache(cfg: StackConfig, kind: str, batch: int, max_len: int, device: torch.device,
                 dtype: torch.dtype) -> AttentionCache | Mamba2Cache:
    hd, nh, nkv = cfg.head_dim, cfg.num_attention_heads, cfg.num_key_value_heads
    if kind == "mha":
        shape = (batch, nkv, max_len, hd)
        return AttentionCache(torch.zeros(shape, device=device, dtype=dtype),
                              torch.zeros(shape, device=device, dtype=dtype))
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return Mamba2Cache(torch.zeros(batch, (2 * nkv + nh) * hd, device=device, dtype=dtype),
                       torch.zeros(batch, nh, hd, hd, device=device, dtype=state_dtype))
