"""The streaming reader of InternVL's SFT format (train/sft.py) on the synthetic set of data/sft_synth.py, with the
embedded demo teacher's processor (word-level tokenizer, 64-px tiles of 16 tokens, up to 6 tiles + thumbnail)."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mmmamba_bench.assets import models_dir
from mmmamba_bench.data.sft_synth import expected_bad_rows, write_sft_dataset
from mmmamba_bench.preprocessing import (
    IMG_CONTEXT,
    IMG_START,
    INTERNVL_SYSTEM_MESSAGE,
    image_block,
)
from mmmamba_bench.processor import IGNORE, Processor
from mmmamba_bench.train import sft
from mmmamba_bench.train.sft import REASONS, SFTData, epoch_rows, image_path


@pytest.fixture(scope="module")
def processor() -> Processor:
    return Processor.from_pretrained(models_dir() / "demo-teacher")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """The synthetic set (24 good rows + every bad kind in train.jsonl, 12 rows in half.jsonl): its meta.json."""
    return write_sft_dataset(tmp_path_factory.mktemp("sft"), rows=24, seed=0)


def with_template(processor: Processor, template: str) -> Processor:
    return Processor(processor.tokenizer, dataclasses.replace(processor.config, template=template), processor.max_tiles)


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def qa(*values: str) -> list[dict]:
    return [{"from": ("human", "gpt")[k % 2], "value": v} for k, v in enumerate(values)]


def skip_records(caplog) -> list[tuple[str, int, str]]:
    """(file, line, reason) of every 'row skipped' warning."""
    found = []
    for rec in caplog.records:
        m = re.match(r"(.+):(\d+): row skipped \((\w+)\): ", rec.getMessage())
        if m and rec.levelno == logging.WARNING:
            found.append((m[1], int(m[2]), m[3]))
    return found


# ---- bad rows ------------------------------------------------------------------------------------------------------

def test_every_bad_kind_is_skipped_counted_and_logged_once_with_its_line(synth, processor, caplog):
    data = SFTData.open(synth, processor)
    train = synth.parent / "train.jsonl"
    lines = train.read_text(encoding="utf-8").split("\n")
    with caplog.at_level(logging.WARNING, logger=sft.__name__):
        first = [data.encode(r) for r in range(data.num_rows)]
        again = [data.encode(r) for r in range(data.num_rows)]  # neither counted nor logged a second time
    expected = expected_bad_rows()
    assert set(expected) == set(REASONS)  # the synthetic set has a row of every kind
    assert data.skipped() == expected
    logged = skip_records(caplog)
    assert len(logged) == sum(expected.values())
    for file, line, reason in logged:
        assert file == str(train)
        assert f"bad:{reason}:" in lines[line - 1], (line, reason, lines[line - 1][:80])
    for row, (enc, enc2) in enumerate(zip(first, again, strict=True)):
        path, line = data.where(row)
        is_bad = path == train and "bad:" in lines[line - 1]
        assert (enc is None) == is_bad == (enc2 is None), (path, line)
        if enc is not None:  # a good row is a full training example
            assert len(enc.input_ids) == len(enc.labels) and any(t != IGNORE for t in enc.labels)


def test_other_bad_lines_crlf_and_blank_lines(tmp_path, processor, caplog):
    Image.new("RGB", (20, 20), (0, 0, 255)).save(tmp_path / "ok.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "pcx.png", format="PCX")  # a format PIL knows, not allowed here
    good = json.dumps({"image": "ok.png", "conversations": qa("<image>\nIs there a cat ?", "no")})
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b"\r\n".join([
        good.encode(),
        b"",  # blank: not a row
        b'{"conversations": "\xff\xfe not utf-8"}',
        b"   ",
        json.dumps({"image": "pcx.png", "conversations": qa("<image>\nwhat ?", "a")}).encode(),
        json.dumps({"image": ["ok.png", "sub/../ok.png"], "conversations": qa("<image><image> hi", "a")}).encode(),
        good.encode(),
    ]) + b"\r\n")
    data = SFTData.open(path, processor)
    assert data.num_rows == 5 and len(data) == 5
    assert [data.where(r)[1] for r in range(5)] == [1, 3, 5, 6, 7]
    with caplog.at_level(logging.WARNING, logger=sft.__name__):
        got = [data.encode(r) for r in range(5)]
    assert [g is None for g in got] == [False, True, True, True, False]
    assert got[0].input_ids == got[4].input_ids
    assert data.skipped() == {"bad_json": 1, "unreadable_image": 1, "image_outside_root": 1}
    assert [(line, reason) for _, line, reason in skip_records(caplog)] == [
        (3, "bad_json"), (5, "unreadable_image"), (6, "image_outside_root")]


def test_path_escapes_are_refused_without_opening_anything(synth, processor, monkeypatch):
    root = synth.parent / "images"
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda fp, *a, **k: opened.append(Path(fp.name)) or real_open(fp, *a, **k))
    for rel in ("../outside.png", "/outside.png", "a/../../outside.png", "..\\outside.png", "C:\\outside.png",
                str(root / "img_00.png")):  # even an absolute path that is inside the root
        with pytest.raises(sft.BadRow) as bad:
            image_path(root, rel)
        assert bad.value.reason == "image_outside_root"
    assert image_path(root, "img_00.png") == root / "img_00.png"
    data = SFTData.open(synth, processor)
    for row in range(data.num_rows):
        data.encode(row)
    assert data.skipped()["image_outside_root"] == 2
    assert (synth.parent / "outside.png").is_file()  # it was there to be read, and was not
    assert opened and all(p.parent == root for p in opened)


def test_too_long_rows_are_skipped_above_max_tokens(synth, processor):
    n = len(SFTData.open(synth, processor).encode(0).input_ids)
    assert SFTData.open(synth, processor, max_tokens=n).encode(0) is not None  # exactly max_tokens: kept
    tight = SFTData.open(synth, processor, max_tokens=n - 1)
    assert tight.encode(0) is None and tight.skipped() == {"too_long": 1}


# ---- encoding ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("template", ["mmmamba-bench-mini", "internlm2-chat"])
def test_a_one_turn_row_encodes_as_encode_example(tmp_path, processor, template):
    proc = with_template(processor, template)
    Image.new("RGB", (128, 64), (200, 30, 30)).save(tmp_path / "wide.png")  # 2x1 grid + thumbnail
    Image.new("RGB", (40, 40), (30, 200, 30)).save(tmp_path / "small.png")
    cases = [("wide.png", "<image>\nWhat color is the cat ?", "red"),
             ("small.png", "Is there a horse ?", "no"),  # no placeholder: the image goes first
             ("wide.png", "Is there a horse ?\n<image>", "yes"),
             (None, "Is there a horse ?", "no")]
    rows = [{"id": k, "conversations": qa(q, a), **({"image": im} if im else {})} for k, (im, q, a) in enumerate(cases)]
    data = SFTData.open(write_rows(tmp_path / "one.jsonl", rows), proc)
    for row, (im, q, a) in enumerate(cases):
        got = data.encode(row)
        want = proc.encode_example(q, a, Image.open(tmp_path / im).convert("RGB") if im else None)
        assert got.input_ids == want.input_ids and got.labels == want.labels, row
        assert got.tiles_per_image == want.tiles_per_image
        assert (got.pixel_values is None) == (want.pixel_values is None)
        if im:
            assert torch.equal(got.pixel_values, want.pixel_values)
    assert data.encode(0).tiles_per_image == (3,)


@pytest.mark.parametrize("template", ["mmmamba-bench-mini", "internlm2-chat"])
def test_multi_turn_multi_image_layout_and_labels(tmp_path, processor, template):
    """Two images, one placeholder in each of two turns: each block where its placeholder was, the tile budget
    shared (3 + 3), labels on both answers and their end-of-turn tokens only. The expected text is written out."""
    proc = with_template(processor, template)
    wide, square = Image.new("RGB", (128, 64), (200, 30, 30)), Image.new("RGB", (40, 40), (30, 30, 200))
    wide.save(tmp_path / "wide.png")
    square.save(tmp_path / "square.png")
    row = {"image": ["wide.png", "square.png"],
           "conversations": qa("  <image>\nWhich is red ?", "left ", "and this one <image> ?", "blue")}
    enc = SFTData.open(write_rows(tmp_path / "multi.jsonl", [row]), proc).encode(0)
    a, b = proc.pixel_values(wide, 2), proc.pixel_values(square, 2)
    assert (a.shape[0], b.shape[0]) == (3, 1) and enc.tiles_per_image == (3, 1)
    assert torch.equal(enc.pixel_values, torch.cat([a, b]))
    blk_a, blk_b = image_block(3, 16), image_block(1, 16)
    if template == "internlm2-chat":
        text = (f"<|im_start|>system\n{INTERNVL_SYSTEM_MESSAGE}<|im_end|><|im_start|>user\n{blk_a}\nWhich is red ?"
                f"<|im_end|><|im_start|>assistant\nleft<|im_end|><|im_start|>user\nand this one {blk_b} ?<|im_end|>"
                f"<|im_start|>assistant\nblue<|im_end|>")
    else:
        text = (f"<|im_start|>user\n{blk_a}\nWhich is red ?<|im_end|>\n<|im_start|>assistant\nleft<|im_end|>\n"
                f"<|im_start|>user\nand this one {blk_b} ?<|im_end|>\n<|im_start|>assistant\nblue<|im_end|>")
    tok = proc.tokenizer
    assert enc.input_ids == tok.encode(text)  # word-level: piecewise and whole-text tokenisation agree
    assert enc.input_ids.count(tok.token_to_id(IMG_START)) == 2
    assert enc.input_ids.count(tok.token_to_id(IMG_CONTEXT)) == 4 * 16
    targets = [enc.labels[t] for t in range(len(enc.labels)) if enc.labels[t] != IGNORE]
    assert targets == tok.encode("left") + [tok.eos_token_id] + tok.encode("blue") + [tok.eos_token_id]
    assert all(enc.labels[t] in (IGNORE, enc.input_ids[t + 1]) for t in range(len(enc.labels) - 1))
    assert enc.labels[-1] == IGNORE


# ---- order and repeat_time -----------------------------------------------------------------------------------------

def test_order_is_a_pure_function_of_the_position(synth, processor):
    a, b = SFTData.open(synth, processor, seed=3), SFTData.open(synth, processor, seed=3)
    n = len(a)
    assert n == 2 * 40 + 6  # train.jsonl: 24 good + 16 bad rows, twice; half.jsonl: 6 of its 12 rows
    ks = [0, 1, n - 1, n, 5 * n + 3, 2 * n + 7]
    assert [a.row_at(k) for k in ks] == [b.row_at(k) for k in reversed(ks)][::-1]  # queried in another order
    epochs = [[a.row_at(e * n + i) for i in range(n)] for e in range(3)]
    for rows in epochs:
        assert Counter(rows) == Counter(a.rows_of_epoch.tolist())  # every position of the epoch exactly once
    assert epochs[0] != epochs[1] != epochs[2]
    assert [b.row_at(e * n + i) for e in range(3) for i in range(n)] == [r for rows in epochs for r in rows]
    other = SFTData.open(synth, processor, seed=4)
    assert [other.row_at(k) for k in range(n)] != epochs[0]
    with pytest.raises(IndexError):
        a.row_at(-1)


def test_repeat_time_whole_and_fractional(synth, processor, tmp_path):
    data = SFTData.open(synth, processor, seed=0)
    n_main = sum(data.where(r)[0].name == "train.jsonl" for r in range(data.num_rows))
    assert n_main == 40 and data.where(n_main)[0].name == "half.jsonl"
    per_row = Counter(data.rows_of_epoch.tolist())
    assert all(per_row[r] == 2 for r in range(n_main))  # repeat_time 2
    half = [r for r in range(n_main, data.num_rows) if per_row[r]]
    assert len(half) == 12 // 2 and all(per_row[r] == 1 for r in half)  # repeat_time 0.5: a subset of half the rows
    subsets = {tuple(sorted(set(SFTData.open(synth, processor, seed=s).rows_of_epoch.tolist()) - set(range(n_main))))
               for s in range(4)}
    assert len(subsets) > 1  # the subset follows the seed
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"h": {"root": str(synth.parent / "images"),
                                      "annotation": str(synth.parent / "half.jsonl"), "repeat_time": 1.5}}))
    counts = Counter(SFTData.open(meta, processor).rows_of_epoch.tolist())
    assert sorted(Counter(counts.values()).items()) == [(1, 6), (2, 6)]  # all rows once, half of them once more
    assert len(epoch_rows([10], [2.3], 0)) == 23 and len(epoch_rows([7], [0.5], 0)) == 3  # floor(n * r), exactly


def test_meta_paths_are_relative_to_the_meta_folder(synth, processor, tmp_path, monkeypatch, caplog):
    sub = synth.parent / "nested" / "deeper"
    sub.mkdir(parents=True, exist_ok=True)
    meta = sub / "meta.json"
    meta.write_text(json.dumps({"half": {"root": "../../images", "annotation": "../../half.jsonl", "repeat_time": 1,
                                         "length": 999, "max_dynamic_patch": 12}}))
    monkeypatch.chdir(tmp_path)  # nothing resolves against the working folder
    with caplog.at_level(logging.WARNING, logger=sft.__name__):
        data = SFTData.open(meta, processor)
    assert len(data) == data.num_rows == 12
    assert all(data.encode(r) is not None for r in range(12))
    assert data.where(11) == (sub / "../../half.jsonl", 12)  # the file's last line has no newline
    messages = [r.getMessage() for r in caplog.records]
    assert any("length 999" in m and "half.jsonl has 12 rows" in m for m in messages)
    assert any("'half'" in m and "max_dynamic_patch not applied" in m for m in messages)


def test_opening_errors_name_the_file(tmp_path, processor, synth):
    with pytest.raises(FileNotFoundError, match="nope.jsonl not found"):
        SFTData.open(tmp_path / "nope.jsonl", processor)
    cases = {
        "unreadable.json": ("{not json", ValueError, r"unreadable.json: not a readable meta JSON"),
        "list.json": ("[1]", ValueError, r"list.json: a meta JSON is a non-empty object"),
        "noann.json": ('{"x": {"root": "."}}', ValueError, r"noann.json: entry 'x' has no \"annotation\""),
        "gone.json": ('{"x": {"annotation": "gone.jsonl"}}', FileNotFoundError, r"annotation file .*gone.jsonl"),
        "repeat.json": ('{"x": {"annotation": "e.jsonl", "repeat_time": 0}}', ValueError, r"repeat.json: .*repeat_t"),
        "root.json": ('{"x": {"annotation": "e.jsonl", "root": "no_dir"}}', FileNotFoundError, r"no_dir .*not a fold"),
        "empty.json": ('{"x": {"annotation": "e.jsonl"}}', ValueError, r"empty.json: no rows"),
    }
    (tmp_path / "e.jsonl").write_text("\n  \n\n")  # blank lines only
    for name, (text, exc, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(exc, match=message):
            SFTData.open(tmp_path / name, processor)
    with pytest.raises(ValueError, match=r"e.jsonl: no rows"):
        SFTData.open(tmp_path / "e.jsonl", processor)
    with pytest.raises(ValueError, match="image_root is for a .jsonl"):
        SFTData.open(synth, processor, image_root=tmp_path)


# ---- identity and streaming ----------------------------------------------------------------------------------------

def test_sha256_covers_the_annotations_and_max_tokens_not_the_images(synth, processor, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(synth.parent, copy)
    base = SFTData.open(copy / "meta.json", processor).sha256
    assert base == SFTData.open(synth, processor).sha256  # the bytes, not the paths
    assert SFTData.open(copy / "meta.json", processor, max_tokens=4096).sha256 != base
    half = copy / "half.jsonl"
    raw = bytearray(half.read_bytes())
    at = raw.rindex(b'"value": "') + len(b'"value": "')
    raw[at] = ord("Z") if raw[at] != ord("Z") else ord("Y")  # one byte of one answer
    half.write_bytes(bytes(raw))
    changed = SFTData.open(copy / "meta.json", processor).sha256
    assert changed != base
    Image.new("RGB", (8, 8)).save(copy / "images" / "img_00.png")
    assert SFTData.open(copy / "meta.json", processor).sha256 == changed  # images are not hashed (documented)


def test_the_index_streams_a_large_file(tmp_path, processor, monkeypatch):
    rows = 200_000
    line = json.dumps({"id": 0, "conversations": qa("Is there a cat " + "x" * 240 + " ?", "yes")})
    path = tmp_path / "big.jsonl"
    with open(path, "w") as f:
        f.writelines(line.replace('"id": 0', f'"id": {k}') + "\n" for k in range(rows))
    size = path.stat().st_size
    monkeypatch.setattr(sft.json, "loads", lambda *a, **k: pytest.fail("opening parsed a row"))
    tracemalloc.start()
    t0 = time.perf_counter()
    data = SFTData.open(path, processor)
    took = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    monkeypatch.undo()
    assert len(data) == data.num_rows == rows
    assert peak < size / 4, f"indexing {size} bytes peaked at {peak} bytes"  # ~16 bytes a row + a few chunks
    assert took < 30, took
    assert data.where(rows - 1) == (path, rows)
    assert data._offsets[0].dtype == np.int64
    last = data.encode(rows - 1)
    assert last is not None and last.input_ids == data.encode(0).input_ids  # the ids differ, the conversations don't
    assert json.loads(path.read_text().split("\n")[rows - 1])["id"] == rows - 1


# ---- the generator -------------------------------------------------------------------------------------------------

def test_the_synthetic_set_is_deterministic(tmp_path):
    a = write_sft_dataset(tmp_path / "a", rows=10, seed=5).parent
    b = write_sft_dataset(tmp_path / "b", rows=10, seed=5).parent
    c = write_sft_dataset(tmp_path / "c", rows=10, seed=6).parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert (a / "train.jsonl").read_bytes() != (c / "train.jsonl").read_bytes()
    clean = write_sft_dataset(tmp_path / "clean", rows=6, seed=0, bad_rows=False, multi_turn=False).parent
    assert expected_bad_rows(False) == {} and "bad:" not in (clean / "train.jsonl").read_text()
    assert all(len(json.loads(x)["conversations"]) == 2
               for x in (clean / "train.jsonl").read_text().splitlines() if x.strip())
    kinds = [json.loads(x) for x in (a / "train.jsonl").read_text().splitlines() if x.startswith('{"id": "synth')]
    assert any("image" not in r for r in kinds) and any(isinstance(r.get("image"), list) for r in kinds)
