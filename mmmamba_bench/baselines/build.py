"""Build a Table-2 baseline with random weights of its published shapes, directly on the device in its dtype.

Every part is a library class (transformers' Phi / Llama / Mamba / CLIP / SigLIP / DINOv2, flash-linear-attention's
RWKV6) except the small projectors (:mod:`mmmamba_bench.baselines.projectors`). The libraries are imported only
here, inside the functions; a missing one is a :class:`BaselineUnavailable` naming the package and why.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator

import torch
from torch import nn

from mmmamba_bench.baselines.projectors import build_projector
from mmmamba_bench.baselines.spec import BaselineSpec, ModuleSpec


class BaselineUnavailable(RuntimeError):
    """A library a baseline needs cannot be imported (e.g. flash-linear-attention, which needs Triton)."""


@contextlib.contextmanager
def _on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters on ``device`` in ``dtype`` (no float32 copy, no host round trip)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def library_class(module: ModuleSpec) -> type:
    """``transformers.PhiForCausalLM`` / ``fla.models.RWKV6ForCausalLM`` -> the class; import failures named."""
    package, _, name = module.cls.rpartition(".")
    try:
        mod = importlib.import_module(package)
    except Exception as exc:  # noqa: BLE001 - any import failure (fla without Triton raises ModuleNotFoundError)
        raise BaselineUnavailable(f"{module.cls}: cannot import {package} ({type(exc).__name__}: {exc})") from exc
    cls = getattr(mod, name, None)
    if cls is None:
        version = getattr(importlib.import_module(module.package), "__version__", "?")
        raise BaselineUnavailable(f"{module.cls}: {package} {version} has no class {name}")
    return cls


def build_module(module: ModuleSpec) -> nn.Module:
    """The library model with random weights (call inside :func:`_on`)."""
    cls = library_class(module)
    kwargs = dict(module.config)
    if module.package == "transformers" and getattr(cls, "_supports_sdpa", False):
        kwargs.setdefault("attn_implementation", "sdpa")
    return cls(cls.config_class(**kwargs))


class BaselineVLM(nn.Module):
    """Vision towers + projector + language model; builds the Table-2 prompt as ``inputs_embeds``."""

    def __init__(self, spec: BaselineSpec, llm: nn.Module, towers: list[nn.Module], projector: nn.Module):
        super().__init__()
        self.spec = spec
        self.llm = llm
        self.towers = nn.ModuleList(towers)
        self.projector = projector

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [1, 3, S, S] -> visual tokens [1, Nv, D] in the LM's embedding space."""
        feats = []
        for spec, tower in zip(self.spec.vision, self.towers):
            out = tower(pixel_values=pixels, output_hidden_states=True)
            h = out.hidden_states[spec.feature_layer]  # [1, prefix + patches, Cv]
            feats.append(h[:, spec.drop_prefix:])
        return self.projector(torch.cat(feats, dim=-1))  # [1, Nv, D]

    def prompt_embeds(self, ids_before: torch.Tensor, pixels: torch.Tensor, ids_after: torch.Tensor) -> torch.Tensor:
        """[text before | image | text after] -> inputs_embeds [1, L, D]."""
        embed = self.llm.get_input_embeddings()
        visual = self.encode_image(pixels).to(embed.weight.dtype)
        return torch.cat([embed(ids_before), visual, embed(ids_after)], dim=1)


def build_baseline(spec: BaselineSpec, device: torch.device, dtype: torch.dtype, seed: int = 0) -> BaselineVLM:
    """Random weights of ``spec``'s shapes, created on ``device`` in ``dtype``, in eval mode."""
    torch.manual_seed(seed)
    with _on(device, dtype if dtype.is_floating_point else torch.float32):
        llm = build_module(spec.llm)
        towers = [build_module(v) for v in spec.vision]
        width = sum(v.width for v in spec.vision)
        projector = build_projector(spec.projector, width, int(llm.config.hidden_size))
        model = BaselineVLM(spec, llm, towers, projector)
    return model.to(device=device, dtype=dtype).eval()

