"""Dynamic tiling and the internlm2-chat prompt."""

import torch
from PIL import Image

from mmmamba_bench.preprocessing import IMAGENET_MEAN, chat_prompt, closest_grid, load_image, tile_image


def test_grid_follows_aspect_ratio():
    assert closest_grid(448, 448, 448, 6) == (1, 1)
    assert closest_grid(896, 448, 448, 6) == (2, 1)
    assert closest_grid(448, 1344, 448, 6) == (1, 3)
    # equal aspect ratios: a large image takes the larger grid, a small one the smaller
    assert closest_grid(1792, 1792, 448, 6) == (2, 2)
    assert closest_grid(300, 300, 448, 6) == (1, 1)


def test_tiles_and_thumbnail():
    img = Image.new("RGB", (200, 100), (255, 0, 0))
    tiles = tile_image(img, 56, max_num=6)
    assert len(tiles) == 3 and all(t.size == (56, 56) for t in tiles)  # 2x1 grid + thumbnail
    pv = load_image(img, 56, max_num=6)
    assert pv.shape == (3, 3, 56, 56)
    red = (1.0 - IMAGENET_MEAN[0]) / 0.229
    assert torch.allclose(pv[:, 0], torch.full_like(pv[:, 0], red), atol=1e-5)
    assert load_image(img, 56, max_num=1).shape == (1, 3, 56, 56)


def test_chat_prompt():
    p = chat_prompt("What is this?", num_tiles=2, tokens_per_tile=3)
    assert p == ("<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 6 + "</img>\nWhat is this?<|im_end|>\n"
                 "<|im_start|>assistant\n")
    assert chat_prompt("<image> left", 1, 1).startswith("<|im_start|>user\n<img><IMG_CONTEXT></img> left")
    assert chat_prompt("hi") == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
