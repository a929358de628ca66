"""From (image, question[, answer]) to model inputs: tiling, the chat prompt, tokenisation, batching.

One processor serves evaluation (prompts only), teacher training and distillation (prompt + answer, with a
label mask over the answer tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from mmmamba_bench.config import ChatConfig
from mmmamba_bench.preprocessing import chat_prompt, load_image, tile_count, tiles_per_image
from mmmamba_bench.tokenizer import Tokenizer, load_tokenizer

IGNORE = -100


@dataclass
class Encoded:
    input_ids: list[int]
    pixel_values: torch.Tensor | None  # [N_tiles, 3, S, S]: every image's tiles, in the prompt's order
    labels: list[int] | None = None  # next-token targets aligned with input_ids (IGNORE outside the answer)
    tiles_per_image: tuple[int, ...] = ()  # how many of pixel_values' tiles each image has (sums to N_tiles)


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L], left-padded
    attention_mask: torch.Tensor  # [B, L], 0 on padding
    pixel_values: torch.Tensor | None  # [sum N_tiles, 3, S, S], in row order
    labels: torch.Tensor | None  # [B, L]: labels[b, t] is the target for logits[b, t] (IGNORE = no loss)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     None if self.pixel_values is None else self.pixel_values.to(device),
                     None if self.labels is None else self.labels.to(device))


class Processor:
    def __init__(self, tokenizer: Tokenizer, config: ChatConfig, max_tiles: int = 6):
        self.tokenizer = tokenizer
        self.config = config
        self.max_tiles = max_tiles
        ec = config.embedding_config
        for name, idx in ec.special_token_maps.items():
            got = tokenizer.token_to_id(name)
            if got is not None and got != idx:
                raise ValueError(f"tokenizer maps {name!r} to {got} but config.json says {idx}")

    @classmethod
    def from_pretrained(cls, path: str | Path, config: ChatConfig | None = None, max_tiles: int = 6) -> "Processor":
        config = config or ChatConfig.from_json_file(Path(path) / "config.json")
        return cls(load_tokenizer(path), config, max_tiles)

    def pixel_values(self, image: Image.Image, num_images: int = 1) -> torch.Tensor:
        """One image's tiles; with ``num_images`` images in the prompt, its share of the tile budget."""
        return load_image(image, self.config.image_size, tiles_per_image(self.max_tiles, num_images),
                          self.config.use_thumbnail)

    def encode_prompt(self, question: str, image: Image.Image | Sequence[Image.Image] | None = None,
                      pixel_values: torch.Tensor | Sequence[torch.Tensor] | None = None) -> Encoded:
        """The chat prompt of ``config.template`` as token ids, led by BOS when the tokenizer adds one (InternLM2's
        does: the released chat() tokenises its prompt with special tokens), and the images' tiles.

        image: one image, or a list of several (each tiled with its share of ``max_tiles``, one labelled image block
        each: :func:`~mmmamba_bench.preprocessing.chat_prompt`).
        pixel_values: ``self.pixel_values(image)`` when already computed (several questions about one image); a list
        of such tensors (one per image) for several images.
        """
        if pixel_values is not None:
            per_image = [pixel_values] if isinstance(pixel_values, torch.Tensor) else list(pixel_values)
        else:
            images = [] if image is None else ([image] if isinstance(image, Image.Image) else list(image))
            per_image = [self.pixel_values(im, len(images)) for im in images]
        tiles = tuple(pv.shape[0] for pv in per_image)
        pv = None if not per_image else (per_image[0] if len(per_image) == 1 else torch.cat(per_image))
        return Encoded(self.prompt_ids(question, tiles), pv, tiles_per_image=tiles)

    def prompt_ids(self, question: str, tiles: Sequence[int] = ()) -> list[int]:
        """The token ids :meth:`encode_prompt` gives ``question`` with images of ``tiles`` tiles each."""
        text = chat_prompt(question, num_tiles=list(tiles),
                           tokens_per_tile=self.config.embedding_config.tokens_per_tile, template=self.config.template)
        ids = self.tokenizer.encode(text)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if bos is not None and getattr(self.tokenizer, "add_bos_token", False):
            ids = [bos] + ids
        return ids

    def tile_counts(self, images: Sequence[Image.Image]) -> tuple[int, ...]:
        """How many tiles :meth:`encode_prompt` cuts each of ``images`` (one prompt's) into, without tiling them."""
        share = tiles_per_image(self.max_tiles, len(images))
        return tuple(tile_count(im.width, im.height, self.config.image_size, share, self.config.use_thumbnail)
                     for im in images)

    def encode_example(self, question: str, answer: str, image: Image.Image | None = None,
                       pixel_values: torch.Tensor | None = None) -> Encoded:
        """Prompt + answer + end-of-turn; labels cover the answer and the end-of-turn token (``pixel_values``: as in
        :meth:`encode_prompt`)."""
        enc = self.encode_prompt(question, image, pixel_values)
        target = self.tokenizer.encode(answer) + [self.tokenizer.eos_token_id]
        ids = enc.input_ids + target
        # labels[t] is the token at t + 1 where that token belongs to the answer
        labels = [IGNORE] * (len(enc.input_ids) - 1) + target + [IGNORE]
        return Encoded(ids, enc.pixel_values, labels, enc.tiles_per_image)

    def collate(self, items: list[Encoded]) -> Batch:
        L = max(len(e.input_ids) for e in items)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(items), L), pad, dtype=torch.long)
        mask = torch.zeros(len(items), L, dtype=torch.long)
        labels = torch.full((len(items), L), IGNORE, dtype=torch.long) if items[0].labels is not None else None
        for b, e in enumerate(items):
            n = len(e.input_ids)
            ids[b, L - n:] = torch.tensor(e.input_ids)
            mask[b, L - n:] = 1
            if labels is not None and e.labels is not None:
                labels[b, L - n:] = torch.tensor(e.labels)
        tiles = [e.pixel_values for e in items if e.pixel_values is not None]
        return Batch(ids, mask, torch.cat(tiles) if tiles else None, labels)

    def decode(self, ids: list[int] | torch.Tensor) -> str:
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        eos = self.tokenizer.eos_token_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return self.tokenizer.decode(ids).strip()
