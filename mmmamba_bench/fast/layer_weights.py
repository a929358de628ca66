"""One decoder layer's weights as the fused decode steps read them (shared by the batch-1 :mod:`.decoder` and the
batched :mod:`.batched` step): views of the model's own parameters, nothing copied."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerWeights:
    kind: str  # "mamba2" or "mha"
    stack: int  # 0: the embedding module's layers, 1: the language model's
    eps: float  # RMSNorm epsilon of the layer's stack
    norm1: torch.Tensor  # attention_norm [H]
    norm2: torch.Tensor  # ffn_norm [H]
    w1: torch.Tensor  # [I, H]
    w3: torch.Tensor  # [I, H]
    w2: torch.Tensor  # [H, I]
    w_o: torch.Tensor  # the mixer's output projection
    # Mamba-2
    w_in: torch.Tensor | None = None  # wvkqgdt
    conv_w: torch.Tensor | None = None  # [conv_dim, 2]
    conv_b: torch.Tensor | None = None
    dt_bias: torch.Tensor | None = None
    a_log: torch.Tensor | None = None
    gate_w: torch.Tensor | None = None
    # attention
    w_qkv: torch.Tensor | None = None


def layer_weights(model, i: int) -> dict[str, object]:
    """The fields of :class:`LayerWeights` for the model's global layer ``i`` (embedding layers first), as keyword
    arguments (a step's own layer record adds its cache views to them)."""
    layer = model.layers[i]
    stack = 0 if i < model.num_embedding_layers else 1
    scfg = model.config.embedding_config if stack == 0 else model.config.llm_config
    ff, mix = layer.feed_forward, layer.attention
    common = {"kind": layer.kind, "stack": stack, "eps": scfg.rms_norm_eps, "norm1": layer.attention_norm.weight,
              "norm2": layer.ffn_norm.weight, "w1": ff.w1.weight, "w3": ff.w3.weight, "w2": ff.w2.weight}
    if layer.kind == "mamba2":
        return {**common, "w_o": mix.o_proj.weight, "w_in": mix.wvkqgdt.weight,
                "conv_w": mix.conv1d.weight.view(mix.conv_dim, 2), "conv_b": mix.conv1d.bias,
                "dt_bias": mix.dt_bias, "a_log": mix.A_log_bias, "gate_w": mix.g_norm_swish_gate.weight}
    return {**common, "w_o": mix.wo.weight, "w_qkv": mix.wqkv.weight}
