"""The paper-faithful baseline: decoding the way Hugging Face ``generate`` ran HoVLE for the paper's numbers.

One-shot prefill of the whole prompt (no chunking; only the last position's logits, as current transformers
does), then one eager model call per token, each attention layer's KV cache growing by ``torch.cat`` (a
``DynamicCache``), no CUDA graphs. Mamba-2 layers (for the mmMamba models under this baseline) keep their
fixed-size state. Uses the model's own modules, so weights and numerics are the model's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmmamba_bench.model.layers import apply_rotary


class ConcatCacheDecoder:
    def __init__(self, model):
        self.model = model
        self.kv: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(model.layers)
        self.state = model.allocate_cache(1, 1)  # only its Mamba-2 layer states are used
        self.length = 0

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """ids [1, L] continuing the sequence (with the image's tiles for a prompt) -> last-position logits [V]."""
        model = self.model
        B, L = ids.shape
        start = self.length
        x = model.embed(ids, pixel_values).to(model.dtype)
        n_emb = model.num_embedding_layers
        for stack, layers, offset in ((0, model.embedding_model.encoder, 0), (1, model.language_model.model.layers, n_emb)):
            ctx = model.context(stack, B, L, start, None, False)
            if stack == 1 and model.config.normalize_encoder_output:
                x = F.normalize(x, dim=-1)
            for i, layer in enumerate(layers):
                gi = offset + i
                h = layer.attention_norm(x)
                if layer.kind == "mha":
                    out = self._attention(layer.attention, h, ctx, gi)
                else:
                    out = layer.attention(h, ctx, self.state.layers[gi])
                x = x + out
                x = x + layer.feed_forward(layer.ffn_norm(x))
        self.length = start + L
        return model.language_model.output(model.language_model.model.norm(x[:, -1:]))[0, -1]

    def _attention(self, att, h, ctx, gi: int) -> torch.Tensor:
        B, L, _ = h.shape
        qkv = att.wqkv(h).view(B, L, att.nkv, att.n_rep + 2, att.hd)
        q = qkv[:, :, :, : att.n_rep].reshape(B, L, att.nh, att.hd).transpose(1, 2)
        k = qkv[:, :, :, att.n_rep].transpose(1, 2)
        v = qkv[:, :, :, att.n_rep + 1].transpose(1, 2)
        q = apply_rotary(q, ctx.cos, ctx.sin)
        k = apply_rotary(k, ctx.cos, ctx.sin)
        if self.kv[gi] is not None:
            k = torch.cat([self.kv[gi][0], k], dim=2)
            v = torch.cat([self.kv[gi][1], v], dim=2)
        self.kv[gi] = (k, v)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=L > 1 and ctx.start == 0, enable_gqa=True)
        return att.wo(out.transpose(1, 2).reshape(B, L, att.nh * att.hd))

    def kv_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for kv in self.kv if kv is not None for t in kv)
