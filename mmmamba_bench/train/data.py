"""Training examples from the mini-suite, encoded once, and a deterministic batch order that resumes by step."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from mmmamba_bench.processor import Batch, Encoded, Processor

log = logging.getLogger(__name__)


def data_sha256(data_dir: Path | None) -> str:
    """Identity of the training data: the sha256 of the mini-suite's manifest (which lists every file's sha256).

    Recorded with every training checkpoint and finished stage, so a rerun on other data is refused instead of
    silently continuing.
    """
    from mmmamba_bench.data.minisuite import MANIFEST, default_data_dir, sha256_file

    manifest = Path(data_dir or default_data_dir()) / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"training data: {manifest} not found (generate the mini-suite with "
                                f"`mmmamba-bench data --out {manifest.parent}`)")
    return sha256_file(manifest)


def load_encoded(processor: Processor, data_dir: Path | None, split: str, tasks: list[str] | None = None,
                 max_examples: int | None = None) -> tuple[list[Encoded], list[str]]:
    """Encode every (image, prompt, answer) of ``split``: (encoded examples with labels, their task names)."""
    from mmmamba_bench.data.minisuite import iter_examples

    encoded, names = [], []
    image, tiles = None, None
    for ex in iter_examples(data_dir, split, tasks):
        if ex.image is not image:  # consecutive questions about one image share its (read-only) tiles
            image, tiles = ex.image, processor.pixel_values(ex.image)
        encoded.append(processor.encode_example(ex.question_prompt, ex.answer, ex.image, pixel_values=tiles))
        names.append(ex.task)
    if not encoded:
        raise ValueError(f"no {split} examples found in {data_dir}")
    if max_examples is not None and len(encoded) > max_examples:
        gen = torch.Generator().manual_seed(1234)
        keep = sorted(torch.randperm(len(encoded), generator=gen)[:max_examples].tolist())
        encoded, names = [encoded[i] for i in keep], [names[i] for i in keep]
    log.info("encoded %d %s examples", len(encoded), split)
    return encoded, names


class EncodedCache:
    """Encoded splits kept for later calls in the same process: :func:`load_encoded` runs once per (processor
    source, data folder, split, tasks, cap). The demo distils two students from one teacher on one data set."""

    def __init__(self) -> None:
        self._store: dict[tuple, list[Encoded]] = {}

    def get(self, processor: Processor, source: Path, data_dir: Path | None, split: str,
            tasks: list[str] | None = None, max_examples: int | None = None) -> list[Encoded]:
        """The encoded examples of ``split`` (see :func:`load_encoded`); ``source`` is the checkpoint folder the
        processor (tokenizer, config) was read from, and ``processor.max_tiles`` is part of the key."""
        key = (str(Path(source).resolve()), None if data_dir is None else str(Path(data_dir).resolve()), split,
               None if tasks is None else tuple(tasks), max_examples, processor.max_tiles)
        if key not in self._store:
            self._store[key], _ = load_encoded(processor, data_dir, split, tasks, max_examples)
        return self._store[key]


class EncodedRows:
    """A :class:`~mmmamba_bench.train.parallel.RowSource` over examples encoded in memory (the mini-suite).

    Epochs are fresh permutations seeded by (seed, epoch), each cut to a whole number of global batches (the rest
    of the epoch is dropped), exactly the order the single-process trainer used.
    """

    def __init__(self, items: Sequence[Encoded], global_batch: int, seed: int, sha256: str):
        if global_batch > len(items):
            raise ValueError(f"batch_size {global_batch} exceeds the {len(items)} training examples")
        self.items, self.seed, self.sha256 = items, seed, sha256
        self.per_epoch = (len(items) // global_batch) * global_batch  # positions per epoch
        self._perm_epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def row_at(self, k: int) -> int:
        epoch, idx = divmod(k, self.per_epoch)
        if epoch != self._perm_epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(len(self.items), generator=gen), epoch
        return int(self._perm[idx])

    def encode(self, row: int) -> Encoded | None:
        return self.items[row]

    def bad_rows(self) -> dict[int, str]:
        return {}

    def note_bad(self, rows: dict[int, str]) -> None:
        if rows:
            raise ValueError(f"in-memory training examples have no bad rows, but {len(rows)} were noted")


class BatchStream:
    """Batch ``step`` of an endless sequence of epochs, each a fresh permutation seeded by (seed, epoch): the rows of
    positions ``[step * batch_size, (step + 1) * batch_size)`` of :class:`EncodedRows`' order.

    The data position is a pure function of the step, so a resumed run sees exactly the batches an uninterrupted
    run would (the last partial batch of an epoch is dropped).
    """

    def __init__(self, items: list[Encoded], processor: Processor, batch_size: int, seed: int):
        self.rows = EncodedRows(items, batch_size, seed, sha256="")
        self.items, self.processor, self.batch_size = items, processor, batch_size
        self.per_epoch = len(items) // batch_size

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index within the epoch) of ``step``."""
        return divmod(step, self.per_epoch)

    def batch(self, step: int) -> Batch:
        start = step * self.batch_size
        return self.processor.collate([self.items[self.rows.row_at(k)] for k in range(start, start + self.batch_size)])
