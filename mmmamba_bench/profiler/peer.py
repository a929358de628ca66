"""transformers' ``LlamaForCausalLM`` with HoVLE's LM shape: the same-GPU reference point for Fig. 1.

32 layers, hidden 2048, 16 heads / 8 KV heads, MLP 8192, vocab 92553, random bf16 weights built on the device,
SDPA attention, ``DynamicCache``, one ``model()`` call per token (no graphs): how a plain Hugging Face decode of
the Transformer runs on this GPU.
"""

from __future__ import annotations

import torch

from mmmamba_bench.profiler.models import _default_dtype

LABEL = "transformers-llama (HoVLE shape)"


def build_llama(device: torch.device, dtype: torch.dtype, max_positions: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=32, num_attention_heads=16,
                      num_key_value_heads=8, vocab_size=92553, max_position_embeddings=max(32768, max_positions),
                      rope_theta=1_000_000.0, rms_norm_eps=1e-5, attn_implementation="sdpa")
    with torch.device(device), _default_dtype(dtype):
        model = LlamaForCausalLM(cfg)
    return model.to(dtype).eval()


class LlamaDecoder:
    """Prefill once, then one ``model()`` call per token with a DynamicCache (greedy)."""

    def __init__(self, model):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache(config=model.config)
        self.tok: torch.Tensor | None = None

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        self.tok = out.logits[:, -1].argmax(-1, keepdim=True)
        return out.logits[0, -1]

    @torch.no_grad()
    def step(self) -> torch.Tensor:
        out = self.model(input_ids=self.tok, past_key_values=self.cache, use_cache=True)
        self.tok = out.logits[:, -1].argmax(-1, keepdim=True)
        return out.logits[0, -1]


def version() -> str:
    import transformers

    return transformers.__version__
