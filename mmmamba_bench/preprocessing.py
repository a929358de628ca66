"""Image tiling and the internlm2-chat prompt format used by HoVLE / mmMamba.

Dynamic tiling (InternVL style): choose the grid (cols x rows, 1 <= cols * rows <= max_num) whose aspect ratio is
closest to the image's (ties go to the larger grid when the image has enough pixels), resize to that grid of
``image_size`` tiles, cut it, and append a whole-image thumbnail tile when there is more than one tile. Tiles are
normalised with the ImageNet mean / std. The prompt is ``<img>`` + ``<IMG_CONTEXT>`` x (tokens per tile x tiles)
+ ``</img>`` + "\\n" + question, inside ``<|im_start|>user\\n ... <|im_end|>\\n<|im_start|>assistant\\n``.

Several images in one prompt (MMMU), as the reference evaluation of InternVL-style models lays them out
(VLMEvalKit's InternVL wrapper): the tile budget ``max_num`` is shared among the images (:func:`tiles_per_image`),
each image is tiled on its own, and the question is led by one labelled block per image, in order:
``Image-1: <img>...</img>\\nImage-2: <img>...</img>\\n`` + question.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from mmmamba_bench.images import to_rgb

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMG_START, IMG_END, IMG_CONTEXT = "<img>", "</img>", "<IMG_CONTEXT>"
IMAGE_PLACEHOLDER = "<image>"
ROLE_START, ROLE_END = "<|im_start|>", "<|im_end|>"


def candidate_grids(max_num: int, min_num: int = 1) -> list[tuple[int, int]]:
    """(cols, rows) with min_num <= cols * rows <= max_num, fewest tiles first."""
    grids = {(c, r) for n in range(min_num, max_num + 1) for c in range(1, n + 1) for r in range(1, n + 1)
             if min_num <= c * r <= max_num}
    return sorted(grids, key=lambda g: (g[0] * g[1], g))


def closest_grid(width: int, height: int, image_size: int, max_num: int, min_num: int = 1) -> tuple[int, int]:
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(max_num, min_num):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


def tile_count(width: int, height: int, image_size: int, max_num: int = 6, use_thumbnail: bool = True) -> int:
    """How many tiles :func:`load_image` makes of a ``width`` x ``height`` image, without resizing it."""
    if max_num <= 1:
        return 1
    cols, rows = closest_grid(width, height, image_size, max_num)
    return cols * rows + (1 if use_thumbnail and cols * rows > 1 else 0)


def tile_image(image: Image.Image, image_size: int, max_num: int = 6, use_thumbnail: bool = True) -> list[Image.Image]:
    """Cut ``image`` into ``image_size`` tiles by the closest aspect-ratio grid (+ thumbnail if > 1 tile)."""
    cols, rows = closest_grid(image.width, image.height, image_size, max_num)
    resized = image.resize((cols * image_size, rows * image_size), Image.BICUBIC)
    tiles = [resized.crop((c * image_size, r * image_size, (c + 1) * image_size, (r + 1) * image_size))
             for r in range(rows) for c in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize((image_size, image_size), Image.BICUBIC))
    return tiles


def to_tensor(tile: Image.Image, image_size: int) -> torch.Tensor:
    """PIL tile -> [3, S, S] float32, ImageNet-normalised."""
    tile = to_rgb(tile)
    if tile.size != (image_size, image_size):
        tile = tile.resize((image_size, image_size), Image.BICUBIC)
    arr = np.asarray(tile, dtype=np.float32) / 255.0  # [S, S, 3]
    arr = (arr - np.asarray(IMAGENET_MEAN, dtype=np.float32)) / np.asarray(IMAGENET_STD, dtype=np.float32)
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def load_image(image: Image.Image, image_size: int, max_num: int = 6, use_thumbnail: bool = True) -> torch.Tensor:
    """One image -> pixel_values [N_tiles, 3, S, S]."""
    image = to_rgb(image)
    tiles = tile_image(image, image_size, max_num, use_thumbnail) if max_num > 1 else [image]
    return torch.stack([to_tensor(t, image_size) for t in tiles])


def tiles_per_image(max_num: int, num_images: int) -> int:
    """The grid budget of each image when ``num_images`` share one prompt's budget ``max_num`` (at least 1 each)."""
    return max(1, max_num // max(1, num_images))


def image_block(num_tiles: int, tokens_per_tile: int) -> str:
    return IMG_START + IMG_CONTEXT * (num_tiles * tokens_per_tile) + IMG_END


def image_blocks(num_tiles: Sequence[int], tokens_per_tile: int) -> str:
    """Several images: ``Image-k: <block k>\\n`` for k = 1..n (the layout of VLMEvalKit's InternVL wrapper)."""
    return "".join(f"Image-{k}: {image_block(n, tokens_per_tile)}\n" for k, n in enumerate(num_tiles, start=1))


# config.json's ``template``: how one user turn becomes the prompt.
RELEASED_TEMPLATE = "internlm2-chat"  # what HoVLE / mmMamba's released chat() builds (InternVL's conversation.py)
MINI_TEMPLATE = "mmmamba-bench-mini"  # the embedded demo models: no system turn, a newline after each turn's end
TEMPLATES = (RELEASED_TEMPLATE, MINI_TEMPLATE)
# The system message InternVL's "internlm2-chat" template carries, which the released chat() keeps (a prompt: data).
INTERNVL_SYSTEM_MESSAGE = ("你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
                           "是一个有用无害的人工智能助手。")


def chat_prompt(question: str, num_tiles: int | Sequence[int] = 0, tokens_per_tile: int = 256,
                template: str = RELEASED_TEMPLATE, system: str | None = None) -> str:
    """The prompt of one user turn, with the image block in place of ``<image>`` (or first, then a newline).

    ``num_tiles``: the tiles of the one image (0: no image), or a list with each image's tiles. Several images are
    laid out first, one labelled block each (:func:`image_blocks`); a question that then still holds an ``<image>``
    placeholder is ambiguous and refused.

    ``internlm2-chat`` is exactly the released ``chat()``: ``<|im_start|>system\n{system}<|im_end|>`` then
    ``<|im_start|>user\n{question}<|im_end|><|im_start|>assistant\n`` (InternVL's MPT-style separator: no newline
    after ``<|im_end|>``), system defaulting to InternVL's message. ``mmmamba-bench-mini`` is the format the embedded
    demo models were trained on: no system turn unless given, a newline after each ``<|im_end|>``.
    """
    tiles = ([num_tiles] if num_tiles else []) if isinstance(num_tiles, int) else list(num_tiles)
    content = question
    if len(tiles) > 1:
        if IMAGE_PLACEHOLDER in content:
            raise ValueError(f"a prompt with {len(tiles)} images cannot also hold {IMAGE_PLACEHOLDER!r} placeholders "
                             f"(the images are laid out first, labelled Image-1..Image-{len(tiles)})")
        content = image_blocks(tiles, tokens_per_tile) + content
    elif tiles:
        block = image_block(tiles[0], tokens_per_tile)
        if IMAGE_PLACEHOLDER in content:
            content = content.replace(IMAGE_PLACEHOLDER, block, 1)
        else:
            content = block + "\n" + content
    if template == RELEASED_TEMPLATE:
        system = INTERNVL_SYSTEM_MESSAGE if system is None else system
        return f"{ROLE_START}system\n{system}{ROLE_END}{ROLE_START}user\n{content}{ROLE_END}{ROLE_START}assistant\n"
    if template == MINI_TEMPLATE:
        prefix = f"{ROLE_START}system\n{system}{ROLE_END}\n" if system else ""
        return f"{prefix}{ROLE_START}user\n{content}{ROLE_END}\n{ROLE_START}assistant\n"
    raise ValueError(f"unknown chat template {template!r}; known: {list(TEMPLATES)}")


def next_turn_prompt(question: str, template: str = RELEASED_TEMPLATE) -> str:
    """The text that follows an answer's end-of-turn token (``<|im_end|>``) in a multi-turn conversation: the next
    user turn and the opening of the assistant's reply, in ``template``'s layout.

    :func:`chat_prompt` (first turn) + answer + ``<|im_end|>`` + this (second turn) + answer + ``<|im_end|>`` + ...
    is the whole conversation as InternVL's conversation template lays it out. ``question`` goes in as given (any
    image block already in place). ``internlm2-chat``: nothing between turns (MPT separator);
    ``mmmamba-bench-mini``: the newline after each ``<|im_end|>``.
    """
    turn = f"{ROLE_START}user\n{question}{ROLE_END}"
    if template == RELEASED_TEMPLATE:
        return f"{turn}{ROLE_START}assistant\n"
    if template == MINI_TEMPLATE:
        return f"\n{turn}\n{ROLE_START}assistant\n"
    raise ValueError(f"unknown chat template {template!r}; known: {list(TEMPLATES)}")
