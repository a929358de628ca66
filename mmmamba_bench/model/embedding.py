"""The holistic embedding module's input side: text / special-token embeddings and image tokens.

Image path (checkpoint_format.md, "What the tensors compute"): tiles [N, 3, S, S] -> patch conv -> [N, g*g, H]
+ position embedding (class slot dropped; the g0 x g0 grid bicubic-interpolated when g != g0) -> pixel shuffle
with ratio r (InternVL "v2") -> [N, g*g*r^2, H/r^2] -> Linear, GELU, Linear -> [N, g*g*r^2, H]. These rows replace,
in order, the embeddings at the positions whose id is ``img_context_token_id``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmmamba_bench.config import EmbeddingConfig


class InputError(ValueError):
    """Model inputs that do not fit the checkpoint (token ids out of range, image tokens vs tiles)."""


class VisionEmbeddings(nn.Module):
    def __init__(self, cfg: EmbeddingConfig):
        super().__init__()
        H, p = cfg.hidden_size, cfg.patch_size
        self.grid = cfg.grid_size
        self.class_embedding = nn.Parameter(torch.zeros(1, 1, H))  # present in the checkpoint, unused
        self.patch_embedding = nn.Conv2d(cfg.num_channels, H, kernel_size=p, stride=p)
        self.position_embedding = nn.Parameter(torch.zeros(1, self.grid**2 + 1, H))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values: [N, 3, S, S] -> patch tokens [N, g, g, H] with position embeddings added."""
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # [N, H, g, g]
        N, H, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)  # [N, g*g, H]
        pos = self.position_embedding[:, 1:]  # drop the class slot: [1, g0*g0, H]
        if (gh, gw) != (self.grid, self.grid):
            cd = torch.promote_types(pos.dtype, torch.float32)  # interpolate in >= float32 (as the reference)
            grid = pos.to(cd).reshape(1, self.grid, self.grid, H).permute(0, 3, 1, 2)
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False)
            pos = grid.reshape(1, H, gh * gw).permute(0, 2, 1).to(x.dtype)
        return (x + pos).reshape(N, gh, gw, H)


def pixel_shuffle_v2(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """InternVL's pixel shuffle ("v2"): [n, w, h, c] -> [n, w*r, h*r, c/r^2]."""
    n, w, h, c = x.shape
    x = x.reshape(n, w, int(h * ratio), int(c / ratio))
    x = x.permute(0, 2, 1, 3).contiguous()
    x = x.reshape(n, int(h * ratio), int(w * ratio), int(c / (ratio * ratio)))
    return x.permute(0, 2, 1, 3).contiguous()


class HolisticEmbedding(nn.Module):
    """``embedding_model``: embeddings plus the decoder layers in ``encoder`` (run by the stack)."""

    def __init__(self, cfg: EmbeddingConfig, encoder_layers: nn.ModuleList):
        super().__init__()
        H = cfg.hidden_size
        self.cfg = cfg
        self.vision_embeddings = VisionEmbeddings(cfg)
        self.llm_text_embeddings = nn.Embedding(cfg.llm_vocab_size, H)
        self.special_text_embeddings = nn.Embedding(max(cfg.num_special_tokens, 1), H)
        ratio = cfg.downsample_ratio
        self.pixel_shuffle_proj = nn.Sequential(nn.Linear(int(H / ratio**2), H), nn.GELU(), nn.Linear(H, H))
        self.encoder = encoder_layers

    def embed_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N, 3, S, S] -> [N, tokens_per_tile, H]."""
        if pixel_values.dim() != 4 or pixel_values.shape[1] != self.cfg.num_channels:
            raise InputError(f"pixel_values must be [N_tiles, {self.cfg.num_channels}, S, S], "
                             f"got {tuple(pixel_values.shape)}")
        if pixel_values.shape[-1] != pixel_values.shape[-2] or pixel_values.shape[-1] % self.cfg.patch_size:
            raise InputError(f"pixel_values tiles must be square multiples of patch_size {self.cfg.patch_size}, "
                             f"got {tuple(pixel_values.shape[-2:])}")
        x = self.vision_embeddings(pixel_values)  # [N, g, g, H]
        x = pixel_shuffle_v2(x, self.cfg.downsample_ratio)  # [N, g r, g r, H / r^2]
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        return self.pixel_shuffle_proj(x)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """[B, L] ids -> [B, L, H]; ids >= llm_vocab_size read ``special_text_embeddings``."""
        V, S = self.cfg.llm_vocab_size, self.cfg.num_special_tokens
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= V + S):
            raise InputError(f"input_ids must lie in [0, {V + S}) (vocab {V} + {S} special tokens); "
                             f"found min {int(input_ids.min())}, max {int(input_ids.max())}")
        special = input_ids >= V
        text = self.llm_text_embeddings(input_ids.clamp(max=V - 1))
        if not bool(special.any()):
            return text
        spec = self.special_text_embeddings((input_ids - V).clamp(min=0))
        return torch.where(special[..., None], spec, text)

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Mixed input embeddings [B, L, H]: token embeddings with image rows scattered in."""
        x = self.embed_tokens(input_ids)
        slots = input_ids == self.cfg.img_context_token_id
        n_slots = int(slots.sum())
        if pixel_values is None:
            if n_slots:
                raise InputError(f"input_ids hold {n_slots} image-context tokens (id "
                                 f"{self.cfg.img_context_token_id}) but no pixel_values were given")
            return x
        feats = self.embed_images(pixel_values)
        feats = feats.reshape(-1, feats.shape[-1])
        if feats.shape[0] != n_slots:
            raise InputError(f"{pixel_values.shape[0]} tile(s) give {feats.shape[0]} image tokens but input_ids hold "
                             f"{n_slots} image-context tokens (id {self.cfg.img_context_token_id})")
        x = x.clone()
        x[slots] = feats.to(x.dtype)
        return x
