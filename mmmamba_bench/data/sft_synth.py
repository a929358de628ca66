"""Synthetic data in InternVL's supervised fine-tuning format, for tests and benchmarks of the SFT reader
(:mod:`mmmamba_bench.train.sft`). Deterministic given the seed; no torch.

:func:`write_sft_dataset` writes, under ``out``::

    images/img_NN.png   a pool of small PNGs drawn with PIL, several aspect ratios (rows share them)
    images/corrupt.png  (bad_rows) a PNG header followed by garbage: PIL cannot decode it
    outside.png         (bad_rows) a readable image outside the image root, which no row may reach
    train.jsonl         `rows` good rows: single-image (placeholder first, last, or absent), two-image and text-only
                        rows, some multi-turn; two blank lines; and (bad_rows) the rows of BAD_ROWS, each line
                        holding its kind as text: "bad:<reason>:<k>"
    half.jsonl          max(2, rows // 2) more good rows, the last line without a newline
    meta.json           {"synth_main": {"root": "images", "annotation": "train.jsonl", "repeat_time": 2, ...},
                         "synth_half": {"root": "images", "annotation": "half.jsonl", "repeat_time": 0.5, ...}}
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw

WORDS = ("the cat horse rocket flower moon clock temple red blue green white yellow left right top bottom is "
         "there a one two object animal plant water sand wood brick").split()
ANSWERS = ("yes", "no", "red", "blue", "green", "cat", "horse", "2", "3", "left", "right", "A", "B")
POOL = 12  # images in the shared pool
LONG_WORDS = 10_000  # the too_long row's answer: over 8,192 tokens with any tokenizer that has a token per word


def _bad_rows(image: str) -> list[tuple[str, str]]:
    """(reason, line) for each bad kind; ``image``: a good image of the pool."""

    def row(reason: str, k: int, conv: list | None = None, **fields) -> str:
        obj = {"id": f"bad:{reason}:{k}", **fields}
        if conv is not None:
            obj["conversations"] = conv
        return json.dumps(obj)

    def qa(q: str = "<image>\nWhat is this ?", a: str = "a cat") -> list[dict]:
        return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]

    return [
        ("bad_json", '{"id": "bad:bad_json:1", "conversations": [{"from": "human", "value": "trunc'),
        ("not_object", json.dumps(["bad:not_object:1", "a list is not a row"])),
        ("no_conversations", row("no_conversations", 1, image=image)),
        ("no_conversations", row("no_conversations", 2, [], image=image)),
        ("bad_turns", row("bad_turns", 1, [{"from": "human", "value": "hi"}, {"from": "human", "value": "hi"}])),
        ("bad_turns", row("bad_turns", 2, [{"from": "human", "value": "hi"}, {"from": "gpt", "value": 5}])),
        ("bad_turns", row("bad_turns", 3, qa("hi") + [{"from": "human", "value": "and ?"}])),
        ("bad_image_field", row("bad_image_field", 1, qa(), image=5)),
        ("image_outside_root", row("image_outside_root", 1, qa(), image="../outside.png")),
        ("image_outside_root", row("image_outside_root", 2, qa(), image="/outside.png")),
        ("missing_image", row("missing_image", 1, qa(), image="missing.png")),
        ("unreadable_image", row("unreadable_image", 1, qa(), image="corrupt.png")),
        ("image_placeholders", row("image_placeholders", 1, qa("Image-1: <image>\nwhich ?"), image=[image, image])),
        ("image_placeholders", row("image_placeholders", 2, qa("<image>\nno image here"))),
        ("image_token_in_text", row("image_token_in_text", 1, qa("<image>\nwhat is <IMG_CONTEXT> ?"), image=image)),
        ("too_long", row("too_long", 1, qa("<image>\ndescribe it", " ".join(["red"] * LONG_WORDS)), image=image)),
    ]


def expected_bad_rows(bad_rows: bool = True) -> dict[str, int]:
    """Bad rows per reason that :func:`write_sft_dataset` writes (too_long: at max_tokens <= 8192)."""
    counts: dict[str, int] = {}
    for reason, _ in _bad_rows("x.png") if bad_rows else []:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _draw(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(3):
        x0, y0 = rng.randrange(size[0]), rng.randrange(size[1])
        box = (x0, y0, x0 + rng.randrange(4, size[0] + 4), y0 + rng.randrange(4, size[1] + 4))
        fill = tuple(rng.randrange(256) for _ in range(3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    return image


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _good_row(rng: random.Random, i: int, images: list[str], multi_turn: bool) -> dict:
    """Row i: its kind from i (every kind appears among any 6 consecutive rows), its words from rng."""

    def question() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(3, 9))) + " ?"

    kind = i % 6
    q = question()
    row: dict = {"id": f"synth-{i}"}
    if kind in (0, 4):  # one image, placeholder first (InternVL's usual layout)
        row["image"], q = rng.choice(images), "<image>\n" + q
    elif kind == 1:  # one image, no placeholder: the reader puts it first
        row["image"] = rng.choice(images)
    elif kind == 2:  # two images, labelled
        row["image"], q = rng.sample(images, 2), "Image-1: <image>\nImage-2: <image>\n" + q
    elif kind == 5:  # one image, placeholder last
        row["image"], q = rng.choice(images), q + "\n<image>"
    conv = [{"from": "human", "value": q}, {"from": "gpt", "value": rng.choice(ANSWERS)}]
    if multi_turn and i % 3 == 2:
        for _ in range(rng.randrange(1, 3)):
            conv += [{"from": "human", "value": question()}, {"from": "gpt", "value": rng.choice(ANSWERS)}]
    row["conversations"] = conv
    return row


def write_sft_dataset(out_dir: str | Path, *, rows: int = 24, seed: int = 0, bad_rows: bool = True,
                      image_size: int = 32, multi_turn: bool = True) -> Path:
    """Write the data set described in the module docstring under ``out_dir``; returns the meta file's path.

    rows: good rows of train.jsonl (half.jsonl gets max(2, rows // 2)); image_size: the short side of the pool's
    images in pixels (sizes s x s, 2s x s, s x 2s, 3s x s).
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    s = image_size
    shapes = [(s, s), (2 * s, s), (s, 2 * s), (3 * s, s)]
    images = []
    for k in range(POOL):
        name = f"img_{k:02d}.png"
        (out / "images" / name).write_bytes(_png(_draw(rng, shapes[k % len(shapes)])))
        images.append(name)
    train = [json.dumps(_good_row(rng, i, images, multi_turn)) for i in range(rows)]
    if bad_rows:
        good_png = _png(_draw(rng, (s, s)))
        (out / "images" / "corrupt.png").write_bytes(good_png[:33] + rng.randbytes(64))  # signature + IHDR, garbage
        (out / "outside.png").write_bytes(good_png)
        for k, (_, line) in enumerate(_bad_rows(images[0])):  # spread among the good rows
            train.insert((2 * k + 1) % (len(train) + 1), line)
    train[min(3, len(train)):min(3, len(train))] = ["", "  \t"]  # blank lines: not rows
    half = [json.dumps(_good_row(rng, rows + i, images, multi_turn)) for i in range(max(2, rows // 2))]
    (out / "train.jsonl").write_text("\n".join(train) + "\n", encoding="utf-8")
    (out / "half.jsonl").write_text("\n".join(half), encoding="utf-8")  # no newline after the last row
    meta = {
        "synth_main": {"root": "images", "annotation": "train.jsonl", "data_augment": False, "repeat_time": 2,
                       "length": sum(1 for line in train if line.strip())},
        "synth_half": {"root": "images", "annotation": "half.jsonl", "data_augment": False, "repeat_time": 0.5,
                       "length": len(half)},
    }
    path = out / "meta.json"
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path
