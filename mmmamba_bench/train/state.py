"""Resumable training checkpoints and the provenance record of every finished stage.

- :class:`TrainCheckpoint`: ``<work>/train_state.pt`` (trainable tensors, optimizer, step, RNG states, data
  position) plus ``train_state.json`` holding its sha256, written atomically (temp file + rename, the JSON last),
  so a crash leaves the previous checkpoint or none; a file that does not match its recorded hash is reported as
  corrupt rather than loaded.
- ``distill_state.json`` in a finished checkpoint directory: which stage produced it, from which input (path and
  content hash of the weights), under which recipe; the next stage reads it to refuse a wrong chain (the reference
  implementation's issue #4: a stage not started from the previous stage's weights gives stage-3 KL ~8000).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmmamba_bench.results import write_json_atomic

STATE_FILE = "distill_state.json"
CKPT_FILE = "train_state.pt"
CKPT_META = "train_state.json"


class CorruptCheckpointError(RuntimeError):
    """A resumable checkpoint that is incomplete, unreadable or does not match its recorded hash."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def weights_sha256(ckpt_dir: str | os.PathLike) -> str:
    """Content hash of a checkpoint directory's weights (every *.safetensors file, by name order)."""
    ckpt_dir = Path(ckpt_dir)
    files = sorted(ckpt_dir.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{ckpt_dir}: no *.safetensors weights")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def read_stage_record(ckpt_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The ``distill_state.json`` of a checkpoint directory, or None when it has none."""
    path = Path(ckpt_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({exc})") from None


def write_stage_record(ckpt_dir: str | os.PathLike, record: dict[str, Any]) -> None:
    write_json_atomic(Path(ckpt_dir) / STATE_FILE, record)


def rng_state() -> dict[str, Any]:
    out = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class TrainCheckpoint:
    """The resumable checkpoint of one training run, kept in ``work_dir``.

    ``tag`` identifies the run (e.g. the stage's recipe hash); loading a checkpoint written under another tag
    is refused, so a changed recipe never silently continues an old run.
    """

    work_dir: Path
    tag: str

    @property
    def path(self) -> Path:
        return self.work_dir / CKPT_FILE

    @property
    def meta_path(self) -> Path:
        return self.work_dir / CKPT_META

    def exists(self) -> bool:
        return self.meta_path.is_file() or self.path.is_file()

    def save(self, payload: dict[str, Any]) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{CKPT_FILE}.", suffix=".tmp", dir=self.work_dir)
        os.close(fd)
        try:
            torch.save(payload, tmp)
            digest = file_sha256(Path(tmp))
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        write_json_atomic(self.meta_path, {"tag": self.tag, "step": int(payload["step"]), "sha256": digest})

    def load(self) -> dict[str, Any]:
        """The saved payload; raises :class:`CorruptCheckpointError` on a missing / mismatching file."""
        if not self.meta_path.is_file():
            raise CorruptCheckpointError(f"{self.work_dir}: {CKPT_FILE} without {CKPT_META} (interrupted save?); "
                                         f"delete {self.work_dir} to restart this run")
        try:
            meta = json.loads(self.meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise CorruptCheckpointError(f"{self.meta_path}: not valid JSON ({exc})") from None
        if meta.get("tag") != self.tag:
            raise CorruptCheckpointError(f"{self.work_dir}: the checkpoint belongs to another run (recipe changed?); "
                                         f"use a new output directory or delete {self.work_dir}")
        if not self.path.is_file() or file_sha256(self.path) != meta.get("sha256"):
            raise CorruptCheckpointError(f"{self.path}: missing or its sha256 does not match {self.meta_path} "
                                         f"(corrupt or incomplete); delete {self.work_dir} to restart this run")
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # torch.load raises several types for truncated data
            raise CorruptCheckpointError(f"{self.path}: cannot be read ({type(exc).__name__}: {exc})") from None
        if int(payload.get("step", -1)) != int(meta["step"]):
            raise CorruptCheckpointError(f"{self.path}: step {payload.get('step')} differs from {self.meta_path}")
        return payload
