"""Research tool: which tiny-teacher settings learn the mini-suite, and after how many examples.

Two modes:
  python scripts/teacher_sweep.py dump OUT.pt
      (here, with the mini-suite generated) writes the train / validation rows as PNG bytes + prompt + answer and
      the word-level tokenizer, so that the sweep needs neither pyarrow nor the data generator (e.g. on the GPU host).
  python scripts/teacher_sweep.py run DATA.pt NAME key=value ... [--minutes M] [--out LOG.jsonl]
      trains one variant of the demo teacher and prints the per-task validation accuracy (teacher-forced argmax
      over every answer token, i.e. exact match of the greedy answer) every ``eval_every`` steps.

Keys (default = the demo recipe): hidden heads kv_heads emb_layers llm_layers intermediate patch_size norm
lr bs wd steps warmup decay_frac init_std eval_every tasks (comma list) device seed threads text_loss (the
trainer's ``text_loss_weight``). The loss is the package's ``train.teacher.answer_loss``; sweep 2's "text" run
(reports/teacher_sweep.md) used an earlier inline copy that also scored the first prompt token from the last
left-padding position.
"""

from __future__ import annotations

import io
import json
import math
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch
from PIL import Image

DEFAULTS = dict(hidden=128, heads=4, kv_heads=2, emb_layers=2, llm_layers=4, intermediate=384, patch_size=8,
                norm=0, lr=3e-3, bs=32, wd=0.05, steps=3000, warmup=100, decay_frac=0.2, init_std=0.02,
                eval_every=250, tasks="", device="cuda", seed=0, threads=2, text_loss=0.0)


def dump(out: Path) -> None:
    from mmmamba_bench.data.minisuite import TASKS, default_data_dir, file_name, read_table, row_prompt
    from mmmamba_bench.train.teacher import tokenizer_texts
    from mmmamba_bench.tokenizer import train_word_tokenizer

    data: dict = {"images": []}  # distinct PNGs once; rows refer to them by index
    index: dict[bytes, int] = {}
    for split in ("train", "validation"):
        rows = []
        for task in TASKS:
            for r in read_table(default_data_dir() / file_name(task, split)).to_pylist():
                if r["image"] not in index:
                    index[r["image"]] = len(data["images"])
                    data["images"].append(r["image"])
                rows.append((task, index[r["image"]], row_prompt(r), r["answer"], r["category"]))
        data[split] = rows
    with tempfile.TemporaryDirectory() as tmp:
        train_word_tokenizer(tokenizer_texts(None, None), Path(tmp) / "tokenizer.json")
        data["tokenizer_json"] = (Path(tmp) / "tokenizer.json").read_text()
    torch.save(data, out)
    print({k: len(v) for k, v in data.items() if k != "tokenizer_json"}, out.stat().st_size / 1e6, "MB")


class Rows:
    """Encoded rows on the device: token ids / labels per row, one pixel tensor per distinct PNG."""

    def __init__(self, rows, images, processor, device):
        from mmmamba_bench.processor import IGNORE

        self.ignore = IGNORE
        self.pad = processor.tokenizer.pad_token_id
        index: dict[bytes, int] = {}
        pixels, self.ids, self.labels, self.img, self.task, self.cat = [], [], [], [], [], []
        for task, png_id, prompt, answer, category in rows:
            png = images[png_id]
            if png not in index:
                index[png] = len(pixels)
                with Image.open(io.BytesIO(png)) as im:
                    pixels.append(processor.pixel_values(im.convert("RGB")))
            enc = processor.encode_example(prompt, answer, Image.new("RGB", (8, 8)))
            self.ids.append(enc.input_ids)
            self.labels.append(enc.labels)
            self.img.append(index[png])
            self.task.append(task)
            self.cat.append(category)
        self.pixels = torch.cat(pixels).to(device)  # [n_images, 3, S, S] (one tile each)
        self.device = device

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, idx: list[int]):
        L = max(len(self.ids[i]) for i in idx)
        ids = torch.full((len(idx), L), self.pad, dtype=torch.long)
        mask = torch.zeros(len(idx), L, dtype=torch.long)
        labels = torch.full((len(idx), L), self.ignore, dtype=torch.long)
        for b, i in enumerate(idx):
            n = len(self.ids[i])
            ids[b, L - n:] = torch.tensor(self.ids[i])
            mask[b, L - n:] = 1
            labels[b, L - n:] = torch.tensor(self.labels[i])
        pv = self.pixels[torch.tensor([self.img[i] for i in idx], device=self.device)]
        d = self.device
        return ids.to(d), mask.to(d), pv, labels.to(d)


@torch.no_grad()
def evaluate(model, rows: Rows) -> dict[str, float]:
    model.eval()
    hits: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for s in range(0, len(rows), 256):
        idx = list(range(s, min(s + 256, len(rows))))
        ids, mask, pv, labels = rows.batch(idx)
        logits = model(ids, pv, attention_mask=mask).logits
        ok = ((logits.argmax(-1) == labels) | (labels == rows.ignore)).all(1).tolist()
        for i, o in zip(idx, ok):
            for key in (rows.task[i], f"{rows.task[i]}/{rows.cat[i]}"):
                hits[key][0] += o
                hits[key][1] += 1
    model.train()
    return {k: round(h / n, 3) for k, (h, n) in sorted(hits.items())}


def run(data_path: Path, name: str, overrides: dict, minutes: float, log_path: Path | None) -> None:
    from mmmamba_bench.config import make_config
    from mmmamba_bench.model.stack import MMMambaChatModel
    from mmmamba_bench.processor import Batch, Processor
    from mmmamba_bench.tokenizer import load_tokenizer
    from mmmamba_bench.train.teacher import answer_loss, init_weights

    cfg = dict(DEFAULTS)
    for k, v in overrides.items():
        if k not in cfg:
            raise SystemExit(f"unknown key {k!r}; known: {sorted(cfg)}")
        cfg[k] = type(cfg[k])(v) if not isinstance(cfg[k], str) else v
    torch.set_num_threads(int(cfg["threads"]))
    device = cfg["device"] if (cfg["device"] != "cuda" or torch.cuda.is_available()) else "cpu"
    data = torch.load(data_path, weights_only=True)  # plain containers of bytes / str / int: no code can run
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tokenizer.json").write_text(data["tokenizer_json"])
        tok = load_tokenizer(tmp)
    vocab = len(json.loads(data["tokenizer_json"])["model"]["vocab"])
    mc = make_config(hidden=cfg["hidden"], heads=cfg["heads"], kv_heads=cfg["kv_heads"], emb_layers=cfg["emb_layers"],
                     llm_layers=cfg["llm_layers"], intermediate=cfg["intermediate"], vocab=vocab, image_size=64,
                     patch_size=cfg["patch_size"], normalize_encoder_output=bool(cfg["norm"]),
                     max_position_embeddings=2048, rope_theta=10_000.0, model_type="internvl_chat")
    proc = Processor(tok, mc, max_tiles=1)
    tasks = set(cfg["tasks"].split(",")) if cfg["tasks"] else None
    keep = (lambda r: tasks is None or r[0] in tasks)
    train_rows = Rows([r for r in data["train"] if keep(r)], data["images"], proc, device)
    val_rows = Rows([r for r in data["validation"] if keep(r)], data["images"], proc, device)
    torch.manual_seed(cfg["seed"])
    model = MMMambaChatModel(mc, ssd_backend="torch")
    init_weights(model, cfg["init_std"], cfg["seed"])
    model.to(device).train()
    params = dict(model.named_parameters())
    decay = [p for n, p in params.items() if p.dim() > 1]
    nodecay = [p for n, p in params.items() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["wd"]}, {"params": nodecay, "weight_decay": 0.0}],
                            lr=cfg["lr"], betas=(0.9, 0.98))
    steps, warm, dec = cfg["steps"], cfg["warmup"], int(cfg["decay_frac"] * cfg["steps"])
    gen = torch.Generator().manual_seed(cfg["seed"])
    perm, pos = torch.randperm(len(train_rows), generator=gen).tolist(), 0
    t0 = time.perf_counter()
    out = open(log_path, "a") if log_path else None
    print(f"[{name}] {cfg} params {sum(p.numel() for p in params.values())/1e6:.2f}M train rows {len(train_rows)} "
          f"device {device}", flush=True)
    for step in range(steps + 1):
        if step % cfg["eval_every"] == 0 or step == steps:
            acc = evaluate(model, val_rows)
            top = {k.removeprefix("mini_"): v for k, v in acc.items() if "/" not in k}
            rec = {"name": name, "step": step, "examples": step * cfg["bs"], "seconds": round(time.perf_counter() - t0, 1),
                   "mean": round(sum(top.values()) / len(top), 3), "tasks": top, "detail": acc, "cfg": cfg}
            print(f"[{name}] step {step} ex {step * cfg['bs']} {rec['seconds']}s mean {rec['mean']} {top}", flush=True)
            if out:
                out.write(json.dumps(rec) + "\n")
                out.flush()
            if time.perf_counter() - t0 > minutes * 60:
                break
        if step == steps:
            break
        lr = cfg["lr"] * min(1.0, (step + 1) / max(warm, 1))
        if step >= steps - dec:
            lr = cfg["lr"] * (steps - step) / max(dec, 1)
        for g in opt.param_groups:
            g["lr"] = lr
        if pos + cfg["bs"] > len(perm):
            perm, pos = torch.randperm(len(train_rows), generator=gen).tolist(), 0
        ids, mask, pv, labels = train_rows.batch(perm[pos:pos + cfg["bs"]])
        pos += cfg["bs"]
        loss = answer_loss(model, Batch(ids, mask, pv, labels), cfg["text_loss"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if not math.isfinite(loss.item()):
            print(f"[{name}] loss not finite at step {step}", flush=True)
            break


def main(argv: list[str]) -> None:
    if argv[0] == "dump":
        dump(Path(argv[1]))
        return
    if argv[0] == "run":
        minutes, log = 1e9, None
        rest = argv[3:]
        if "--minutes" in rest:
            i = rest.index("--minutes")
            minutes = float(rest[i + 1])
            rest = rest[:i] + rest[i + 2:]
        if "--out" in rest:
            i = rest.index("--out")
            log = Path(rest[i + 1])
            rest = rest[:i] + rest[i + 2:]
        run(Path(argv[1]), argv[2], dict(kv.split("=", 1) for kv in rest), minutes, log)
        return
    raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
