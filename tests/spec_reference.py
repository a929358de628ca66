"""A deliberately plain float64 reference of the HoVLE / mmMamba forward pass, for tests.

It reads a checkpoint directory in the released layout and computes logits exactly as
``/work/shared/reference/checkpoint_format.md`` ("the spec") says, section by section:

* "What the tensors compute" -> text embedding, image path, layer, attention mixer, Mamba-2 mixer.
* The Mamba-2 recurrence is also the paper's Eq. (2) (arXiv 2502.13145, Sec. 3); the attention is Eq. (1).

Written for reading, not speed: explicit per-token loops for the recurrence, an explicit causal mask,
no caches, everything in float64. It never imports ``mmmamba_bench`` (the code under test).

``mistakes`` (used only by the sensitivity test) switches on a deliberately WRONG variant of one
formula detail, to show the comparison would catch that slip. The default (empty) is the spec.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

# Deliberate slips the sensitivity test can switch on (never used by the agreement tests).
KNOWN_MISTAKES = frozenset(
    {
        "swap_conv_taps",  # weight[:, 0, 0] on the current token instead of the previous one
        "tile_kv_heads",  # head h uses KV head h % nkv instead of h // n_rep
        "ungrouped_wqkv",  # wqkv read as [all q | all k | all v] instead of per-KV-head groups
        "interleaved_rope",  # rotate pairs (0,1),(2,3).. instead of rotate-half
        "pos_interp_align_corners",  # bicubic position interpolation with align_corners=True
        "pixel_shuffle_v1",  # omit the final permute of the "v2" pixel shuffle
    }
)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config dict, {name: float64 tensor}) from config.json + one or more safetensors files
    (spec "Directory"). A sharded checkpoint is read through ``model.safetensors.index.json``."""
    path = Path(path)
    config = json.loads((path / "config.json").read_text())
    index = path / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights: dict[str, torch.Tensor] = {}
    for fname in files:
        for name, tensor in load_file(str(path / fname)).items():
            weights[name] = tensor.to(torch.float64)  # bf16 / fp32 values are exact in float64
    return config, weights


# ----------------------------------------------------------------------------------------------
# Small building blocks
# ----------------------------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Spec "Layer": x * rsqrt(mean(x^2) + eps) * weight, over the last dimension."""
    return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + eps) * weight


def silu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU, as torch.nn.GELU() in pixel_shuffle_proj."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def softplus(x: torch.Tensor) -> torch.Tensor:
    return torch.log1p(torch.exp(-x.abs())) + x.clamp(min=0)


def rope_cos_sin(seq_len: int, head_dim: int, sub_config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin: [L, hd] for positions 0..L-1 (InternLM2 rotary embedding, non-interleaved).

    inv_freq = 1 / base^(arange(0, hd, 2) / hd); with rope_scaling {"type": "dynamic", "factor": f}
    and L > max_position_embeddings: base = base * ((f L / max_pos) - (f - 1))^(hd / (hd - 2)).
    """
    base = float(sub_config["rope_theta"])
    scaling = sub_config.get("rope_scaling")
    max_pos = sub_config["max_position_embeddings"]
    if scaling is not None:
        assert scaling["type"] == "dynamic", scaling
        f = float(scaling["factor"])
        if seq_len > max_pos:
            base = base * ((f * seq_len / max_pos) - (f - 1)) ** (head_dim / (head_dim - 2))
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [hd/2]
    t = torch.arange(seq_len, dtype=torch.float64)  # [L]
    freqs = t[:, None] * inv_freq[None, :]  # [L, hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)  # [L, hd]
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """x: [B, heads, L, hd] -> x * cos + rotate_half(x) * sin, rotate_half(x) = [-x2, x1]."""
    if interleaved:  # WRONG variant, for the sensitivity test only
        half = x.shape[-1] // 2
        x_pairs = x.reshape(*x.shape[:-1], half, 2)
        rot = torch.stack([-x_pairs[..., 1], x_pairs[..., 0]], dim=-1).reshape(x.shape)
        c = cos[:, :half].repeat_interleave(2, dim=-1)
        s = sin[:, :half].repeat_interleave(2, dim=-1)
        return x * c + rot * s
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat([-x2, x1], dim=-1)
    return x * cos + rotated * sin


# ----------------------------------------------------------------------------------------------
# Mixers
# ----------------------------------------------------------------------------------------------


def attention_mixer(x: torch.Tensor, W: dict, sub_config: dict, mistakes: frozenset) -> torch.Tensor:
    """Spec "Attention mixer". x: [B, L, H] (already normed) -> [B, L, H].

    wqkv rows are grouped per KV head g: n_rep query heads (query head g*n_rep + j), then the key
    head, then the value head, hd rows each. RoPE (rotate-half), causal softmax with scale
    1/sqrt(hd), query head h reads KV head h // n_rep, then wo.
    """
    B, L, H = x.shape
    nh = sub_config["num_attention_heads"]
    nkv = sub_config["num_key_value_heads"]
    hd = H // nh
    n_rep = nh // nkv

    qkv = x @ W["wqkv.weight"].T  # [B, L, (nh + 2 nkv) hd]
    if "ungrouped_wqkv" in mistakes:  # WRONG variant
        q = qkv[..., : nh * hd].reshape(B, L, nh, hd)
        k = qkv[..., nh * hd : (nh + nkv) * hd].reshape(B, L, nkv, hd)
        v = qkv[..., (nh + nkv) * hd :].reshape(B, L, nkv, hd)
    else:
        grouped = qkv.reshape(B, L, nkv, n_rep + 2, hd)  # "(h gs d)", gs = n_rep + 2
        q = grouped[:, :, :, :n_rep, :].reshape(B, L, nh, hd)  # query head g*n_rep + j
        k = grouped[:, :, :, n_rep, :]  # [B, L, nkv, hd]
        v = grouped[:, :, :, n_rep + 1, :]  # [B, L, nkv, hd]

    q = q.transpose(1, 2)  # q: [B, nh, L, hd]
    k = k.transpose(1, 2)  # k: [B, nkv, L, hd]
    v = v.transpose(1, 2)  # v: [B, nkv, L, hd]
    cos, sin = rope_cos_sin(L, hd, sub_config)  # [L, hd]
    interleaved = "interleaved_rope" in mistakes
    q = apply_rope(q, cos, sin, interleaved)
    k = apply_rope(k, cos, sin, interleaved)

    causal = torch.tril(torch.ones(L, L, dtype=torch.bool))  # causal[i, j]: key j visible to query i
    out = torch.empty(B, nh, L, hd, dtype=x.dtype)
    for h in range(nh):
        g = (h % nkv) if "tile_kv_heads" in mistakes else (h // n_rep)
        scores = q[:, h] @ k[:, g].transpose(-1, -2) / math.sqrt(hd)  # [B, L, L]
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = torch.softmax(scores, dim=-1)  # [B, L, L]
        out[:, h] = probs @ v[:, g]  # [B, L, hd]
    out = out.transpose(1, 2).reshape(B, L, nh * hd)  # [B, L, nh hd], head-major
    return out @ W["wo.weight"].T  # [B, L, H]


def mamba2_mixer(x: torch.Tensor, W: dict, sub_config: dict, mistakes: frozenset) -> torch.Tensor:
    """Spec "Mamba-2 mixer" (paper Eq. 2). x: [B, L, H] (already normed) -> [B, L, H].

    [v | k | q | g | dt] = wvkqgdt x; [v | k | q] = SiLU(causal depthwise conv, kernel 2);
    dt = softplus(dt + dt_bias); A = -exp(A_log_bias);
    S_t = exp(dt A) S_{t-1} + dt v_t k_t^T;  y_t = S_t q_t;
    out = o_proj(RMSNorm_hd(y) * g_norm_weight * silu(g)).
    """
    B, L, H = x.shape
    nh = sub_config["num_attention_heads"]
    nkv = sub_config["num_key_value_heads"]
    hd = H // nh
    n_rep = nh // nkv
    conv_dim = (2 * nkv + nh) * hd

    proj = x @ W["wvkqgdt.weight"].T  # [B, L, (2 nkv + 2 nh) hd + nh]
    vkq = proj[..., :conv_dim]  # [B, L, (2 nkv + nh) hd], order v | k | q
    g = proj[..., conv_dim : conv_dim + nh * hd]  # [B, L, nh hd]
    dt_raw = proj[..., conv_dim + nh * hd :]  # [B, L, nh]
    assert dt_raw.shape[-1] == nh

    # Depthwise causal conv, kernel 2: tap 1 on the current token, tap 0 on the previous one.
    w_prev = W["conv1d.weight"][:, 0, 0]  # [conv_dim]
    w_curr = W["conv1d.weight"][:, 0, 1]  # [conv_dim]
    if "swap_conv_taps" in mistakes:  # WRONG variant
        w_prev, w_curr = w_curr, w_prev
    conv_out = torch.empty_like(vkq)
    for t in range(L):
        prev = vkq[:, t - 1] if t > 0 else torch.zeros_like(vkq[:, 0])
        conv_out[:, t] = w_curr * vkq[:, t] + w_prev * prev + W["conv1d.bias"]
    conv_out = silu(conv_out)

    v = conv_out[..., : nkv * hd].reshape(B, L, nkv, hd)  # x of Mamba-2
    k = conv_out[..., nkv * hd : 2 * nkv * hd].reshape(B, L, nkv, hd)  # B of Mamba-2
    q = conv_out[..., 2 * nkv * hd :].reshape(B, L, nh, hd)  # C of Mamba-2

    dt = softplus(dt_raw + W["dt_bias"])  # [B, L, nh]
    A = -torch.exp(W["A_log_bias"])  # [nh]

    y = torch.empty(B, L, nh, hd, dtype=x.dtype)
    for b in range(B):
        for h in range(nh):
            kv_head = (h % nkv) if "tile_kv_heads" in mistakes else (h // n_rep)
            S = torch.zeros(hd, hd, dtype=x.dtype)  # S: [hd (x dim), hd (state dim)]
            for t in range(L):
                decay = torch.exp(dt[b, t, h] * A[h])
                v_t = v[b, t, kv_head]  # [hd]
                k_t = k[b, t, kv_head]  # [hd]
                S = decay * S + dt[b, t, h] * torch.outer(v_t, k_t)
                y[b, t, h] = S @ q[b, t, h]

    # Gated RMSNorm over each head's hd values, eps 1e-5.
    y = rms_norm(y, W["g_norm_swish_gate.weight"], eps=1e-5)  # [B, L, nh, hd]
    y = y * silu(g.reshape(B, L, nh, hd))
    return y.reshape(B, L, nh * hd) @ W["o_proj.weight"].T  # [B, L, H]


def decoder_layer(
    x: torch.Tensor, W: dict, block_type: str, sub_config: dict, mistakes: frozenset
) -> torch.Tensor:
    """Spec "Layer": x = x + mixer(RMSNorm(x)); x = x + w2(silu(w1 h) * w3 h), h = RMSNorm(x)."""
    eps = sub_config["rms_norm_eps"]
    attn_W = {k[len("attention.") :]: v for k, v in W.items() if k.startswith("attention.")}
    h = rms_norm(x, W["attention_norm.weight"], eps)
    if block_type == "mha":
        x = x + attention_mixer(h, attn_W, sub_config, mistakes)
    elif block_type == "mamba2":
        x = x + mamba2_mixer(h, attn_W, sub_config, mistakes)
    else:
        raise ValueError(block_type)
    h = rms_norm(x, W["ffn_norm.weight"], eps)
    ff = silu(h @ W["feed_forward.w1.weight"].T) * (h @ W["feed_forward.w3.weight"].T)
    return x + ff @ W["feed_forward.w2.weight"].T


# ----------------------------------------------------------------------------------------------
# Image path
# ----------------------------------------------------------------------------------------------


def pixel_shuffle_v2(x: torch.Tensor, r: float) -> torch.Tensor:
    """InternVL pixel shuffle "v2", the spec's reshape/permute sequence. x: [n, l, c] -> [n, l r^2, c / r^2]."""
    n, l, c = x.shape
    h = w = int(round(math.sqrt(l)))
    x = x.reshape(n, w, int(h * r), int(c / r))  # N, W, H*r, C/r
    x = x.permute(0, 2, 1, 3)  # N, H*r, W, C/r
    x = x.reshape(n, int(h * r), int(w * r), int(c / (r * r)))  # N, H*r, W*r, C/r^2
    x = x.permute(0, 2, 1, 3)  # back: N, W*r, H*r, C/r^2
    return x.reshape(n, int(l * r * r), int(c / (r * r)))


def image_features(pixel_values: torch.Tensor, weights: dict, emb_config: dict, mistakes: frozenset) -> torch.Tensor:
    """Spec "Image": tiles [N, 3, S, S] -> image rows [N, (S/p)^2 r^2, H]."""
    e = "embedding_model."
    p = emb_config["patch_size"]
    r = emb_config["downsample_ratio"]
    x = F.conv2d(
        pixel_values.to(torch.float64),
        weights[e + "vision_embeddings.patch_embedding.weight"],
        weights[e + "vision_embeddings.patch_embedding.bias"],
        stride=p,
    )  # [N, H, gh, gw]
    N, H, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)  # [N, gh*gw, H], row-major over the patch grid

    pos = weights[e + "vision_embeddings.position_embedding"][:, 1:, :]  # drop the class slot: [1, G*G, H]
    G = emb_config["image_size"] // p
    if (gh, gw) != (G, G):
        align_corners = "pos_interp_align_corners" in mistakes  # True only in the WRONG variant
        grid = pos.reshape(1, G, G, H).permute(0, 3, 1, 2)  # [1, H, G, G]
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=align_corners)  # [1, H, gh, gw]
        pos = grid.reshape(1, H, gh * gw).permute(0, 2, 1)  # [1, gh*gw, H]
    x = x + pos

    if "pixel_shuffle_v1" in mistakes:  # WRONG variant: no final permute
        n, l, c = x.shape
        h = w = int(round(math.sqrt(l)))
        x = x.reshape(n, w, int(h * r), int(c / r)).permute(0, 2, 1, 3)
        x = x.reshape(n, int(l * r * r), int(c / (r * r)))
    else:
        x = pixel_shuffle_v2(x, r)  # [N, l r^2, H / r^2]
    x = x @ weights[e + "pixel_shuffle_proj.0.weight"].T + weights[e + "pixel_shuffle_proj.0.bias"]
    x = gelu(x)
    x = x @ weights[e + "pixel_shuffle_proj.2.weight"].T + weights[e + "pixel_shuffle_proj.2.bias"]
    return x  # [N, l r^2, H]


# ----------------------------------------------------------------------------------------------
# The whole model
# ----------------------------------------------------------------------------------------------


def _layer_weights(weights: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def _block_types(sub_config: dict) -> list[str]:
    n = sub_config["num_hidden_layers"]
    types = sub_config.get("layers_block_type") or ["mha"] * n  # absent in HoVLE: all attention
    assert len(types) == n, (types, n)
    return list(types)


class SpecReference:
    """Float64 reference model read straight from a checkpoint directory.

    ``ref.logits(input_ids, pixel_values)`` -> [B, L, V] float64;
    ``ref.greedy(input_ids, pixel_values, max_new_tokens)`` -> [B, L + n] (full recompute per token).
    """

    def __init__(self, path: str | Path, mistakes: frozenset | set = frozenset()):
        self.config, self.weights = load_checkpoint(path)
        self.emb_config = self.config["embedding_config"]
        self.llm_config = self.config["llm_config"]
        # Spec, "Checked against the released code": mmMamba's attention layers build their rotary embedding from
        # rope_theta alone (rope_scaling ignored, in both stacks); HoVLE's InternLM2 attention applies rope_scaling.
        if self.config.get("model_type") == "mmMamba_chat":
            self.emb_config = {**self.emb_config, "rope_scaling": None}
            self.llm_config = {**self.llm_config, "rope_scaling": None}
        self.mistakes = frozenset(mistakes)
        unknown = self.mistakes - KNOWN_MISTAKES
        assert not unknown, unknown

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Spec "Text embedding": [B, L] ids -> [B, L, H]."""
        V_llm = self.emb_config["llm_vocab_size"]
        text = self.weights["embedding_model.llm_text_embeddings.weight"]  # [V_llm, H]
        special = self.weights["embedding_model.special_text_embeddings.weight"]  # [S, H]
        B, L = input_ids.shape
        out = torch.empty(B, L, text.shape[1], dtype=torch.float64)
        for b in range(B):
            for t in range(L):
                i = int(input_ids[b, t])
                out[b, t] = text[i] if i < V_llm else special[i - V_llm]
        return out

    def logits(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] ids (+ tiles) -> logits [B, L, V], float64."""
        x = self.embed_tokens(input_ids)  # [B, L, H]
        if pixel_values is not None:
            rows = image_features(pixel_values, self.weights, self.emb_config, self.mistakes)
            rows = rows.reshape(-1, rows.shape[-1])  # [N * tokens per tile, H], tile order
            positions = (input_ids == self.emb_config["img_context_token_id"]).nonzero().tolist()  # row-major
            assert len(positions) == rows.shape[0], (len(positions), rows.shape)
            x = x.clone()
            for row, (b, t) in zip(rows, positions):
                x[b, t] = row

        for i, block_type in enumerate(_block_types(self.emb_config)):
            W = _layer_weights(self.weights, f"embedding_model.encoder.{i}.")
            x = decoder_layer(x, W, block_type, self.emb_config, self.mistakes)
        # The embedding module has no final norm.

        if self.config.get("normalize_encoder_output", False):
            x = x / x.norm(dim=-1, keepdim=True)  # per-token L2 normalisation

        for j, block_type in enumerate(_block_types(self.llm_config)):
            W = _layer_weights(self.weights, f"language_model.model.layers.{j}.")
            x = decoder_layer(x, W, block_type, self.llm_config, self.mistakes)
        x = rms_norm(x, self.weights["language_model.model.norm.weight"], self.llm_config["rms_norm_eps"])
        return x @ self.weights["language_model.output.weight"].T  # [B, L, V]

    def greedy(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None, max_new_tokens: int = 8
    ) -> torch.Tensor:
        """Greedy decoding that recomputes the full forward for every new token (no cache)."""
        ids = input_ids.clone()
        for _ in range(max_new_tokens):
            next_id = self.logits(ids, pixel_values)[:, -1].argmax(dim=-1)  # [B]
            ids = torch.cat([ids, next_id[:, None]], dim=1)
        return ids


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64."""
    out = out.detach().to(torch.float64)
    ref = ref.to(torch.float64)
    return float((out - ref).norm() / ref.norm())
