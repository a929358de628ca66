"""A tiny slice of the mini-suite and a tiny teacher recipe, shared by the training and distillation tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TINY_TASKS = ["mini_mme", "mini_textvqa"]

TINY_TEACHER = {
    "seed": 0,
    "model": {"hidden": 32, "heads": 2, "kv_heads": 1, "emb_layers": 2, "llm_layers": 2, "intermediate": 64,
              "image_size": 32, "patch_size": 8},
    "optim": {"steps": 6, "batch_size": 8, "lr": 3e-3, "warmup_frac": 0.2, "decay_frac": 0.2},
    "data": {"tasks": TINY_TASKS, "max_tiles": 1},
    "checkpoint_every": 3,
    "threads": None,
    "eval": {"items_per_task": 4, "batch_size": 4, "max_new_tokens": 3},
}


def write_tiny_suite(out_dir, items: int = 6) -> None:
    """A few rows of two mini tasks (train + validation) in the mini-suite's parquet schema."""
    from mmmamba_bench.data.minisuite import SCHEMA, file_name
    from mmmamba_bench.data.minitasks import BUILDERS, Canvas
    from mmmamba_bench.data.sources import SPLITS, load_sources

    sources, seen = load_sources(0), set()
    for split in ("train", "validation"):
        for t, task in enumerate(TINY_TASKS):
            built = BUILDERS[task](Canvas(sources, split, np.random.default_rng([t, SPLITS.index(split)]), seen),
                                   items)
            rows = []
            for g, item in enumerate(built):
                for q in item.questions:
                    rows.append({"task": task, "split": split, "row": len(rows), "id": f"{task}-{len(rows)}",
                                 "group": f"g{g}", "category": q.category, "image": item.image,
                                 "question": q.question, "options": list(q.options), "hint": q.hint,
                                 "answer": q.answer, "answers": list(q.answers) or [q.answer],
                                 "rotation": q.rotation})
            pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), out_dir / file_name(task, split))
    _write_manifest(out_dir)


def _write_manifest(out_dir) -> None:
    """manifest.json as the real suite writes it (every file's sha256): the data identity training records."""
    import json

    from mmmamba_bench.data.minisuite import MANIFEST, sha256_file

    files = {p.name: {"sha256": sha256_file(p)} for p in sorted(out_dir.glob("*.parquet"))}
    (out_dir / MANIFEST).write_text(json.dumps({"tiny": True, "files": files}, indent=1) + "\n")
