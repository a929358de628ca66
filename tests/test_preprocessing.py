"""Dynamic tiling and the internlm2-chat prompt."""

import torch
from PIL import Image

from mmmamba_bench.preprocessing import chat_prompt, closest_grid, load_image, tile_count, tile_image


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
    # the released InternVL / HoVLE normalisation, written out (ImageNet mean / std), not read from our constants
    for channel, want in enumerate([(1.0 - 0.485) / 0.229, (0.0 - 0.456) / 0.224, (0.0 - 0.406) / 0.225]):
        assert torch.allclose(pv[:, channel], torch.full_like(pv[:, channel], want), atol=1e-5), channel
    assert load_image(img, 56, max_num=1).shape == (1, 3, 56, 56)


def test_tile_count_is_what_load_image_makes_without_resizing():
    """The evaluation adapter measures every prompt from its images' sizes before any is tiled."""
    sizes = [(1, 1), (40, 30), (56, 56), (57, 300), (200, 100), (300, 41), (500, 500), (1000, 90), (112, 224)]
    for width, height in sizes:
        img = Image.new("RGB", (width, height))
        for max_num in (1, 2, 3, 6, 12):
            for thumbnail in (True, False):
                made = load_image(img, 56, max_num, thumbnail).shape[0]
                assert tile_count(width, height, 56, max_num, thumbnail) == made, (width, height, max_num, thumbnail)


def test_chat_prompt_of_the_demo_models():
    mini = "mmmamba-bench-mini"
    p = chat_prompt("What is this?", num_tiles=2, tokens_per_tile=3, template=mini)
    assert p == ("<|im_start|>user\n<img>" + "<IMG_CONTEXT>" * 6 + "</img>\nWhat is this?<|im_end|>\n"
                 "<|im_start|>assistant\n")
    assert chat_prompt("<image> left", 1, 1, template=mini).startswith("<|im_start|>user\n<img><IMG_CONTEXT></img> left")
    assert chat_prompt("hi", template=mini) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_chat_prompt_is_the_released_chat_format():
    """What the released chat() builds with InternVL's conversation template "internlm2-chat" (MPT separator, the
    template's system message), written out by hand."""
    system = ("你是由上海人工智能实验室联合商汤科技开发的书生多模态大模型，英文名叫InternVL, "
              "是一个有用无害的人工智能助手。")
    p = chat_prompt("What is this?", num_tiles=1, tokens_per_tile=2)
    assert p == (f"<|im_start|>system\n{system}<|im_end|><|im_start|>user\n<img><IMG_CONTEXT><IMG_CONTEXT></img>\n"
                 "What is this?<|im_end|><|im_start|>assistant\n")
    assert chat_prompt("hi", system="") == "<|im_start|>system\n<|im_end|><|im_start|>user\nhi<|im_end|><|im_start|>assistant\n"
    import pytest

    with pytest.raises(ValueError, match="unknown chat template 'Hermes-2'"):
        chat_prompt("hi", template="Hermes-2")


def test_high_bit_depth_images_are_scaled_not_clipped():
    import io

    import numpy as np
    import pytest

    from mmmamba_bench.images import to_rgb

    ramp16 = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)  # 0, 1, 128, 255 in 8-bit
    png = io.BytesIO()
    Image.fromarray(ramp16).save(png, format="PNG")  # a real 16-bit greyscale PNG
    opened = Image.open(png)
    assert opened.mode.startswith("I;16")
    assert np.asarray(opened.convert("RGB"))[0, 2, 0] == 255  # what PIL's convert does: clipped to white
    rgb = np.asarray(to_rgb(opened))
    assert rgb.shape == (1, 4, 3) and rgb[0, :, 0].tolist() == [0, 1, 128, 255]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    # 32-bit integer images: 8-bit range kept, 16-bit range scaled; float images in [0, 1] or [0, 255]
    assert np.asarray(to_rgb(Image.fromarray(np.array([[0, 200]], np.int32))))[0, :, 0].tolist() == [0, 200]
    assert np.asarray(to_rgb(Image.fromarray(np.array([[0, 65535]], np.int32))))[0, :, 0].tolist() == [0, 255]
    assert np.asarray(to_rgb(Image.fromarray(np.array([[0.0, 0.5]], np.float32))))[0, :, 0].tolist() == [0, 128]
    assert np.asarray(to_rgb(Image.fromarray(np.array([[0.0, 128.0]], np.float32))))[0, :, 0].tolist() == [0, 128]
    with pytest.raises(ValueError, match="cannot tell its bit depth"):
        to_rgb(Image.fromarray(np.array([[-5, 70000]], np.int32)))
    # the model's input: a 16-bit mid-grey tile is mid-grey, not white
    pv = load_image(Image.fromarray(np.full((56, 56), 32896, np.uint16)), 56, max_num=1)
    assert torch.allclose(pv[0, 0], torch.full_like(pv[0, 0], (128 / 255 - 0.485) / 0.229), atol=1e-5)
    # palette and alpha images go through convert("RGB") as the reference does
    assert to_rgb(Image.new("P", (2, 2))).mode == "RGB" and to_rgb(Image.new("RGBA", (2, 2))).mode == "RGB"
