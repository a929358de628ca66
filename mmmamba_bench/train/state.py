"""Resumable training checkpoints and the provenance record of every finished stage.

- :class:`TrainCheckpoint`: ``<work>/checkpoint-<step>/`` holds one complete resumable state: ``tensors.safetensors``
  (the trainable tensors, the optimizer's tensors, the torch RNG states) and ``state.json`` (run tag, step, data
  position, the optimizer's other state, Python's RNG state, the tensors file's sha256). It is written into a
  temporary folder beside it and published by one ``rename``, so a kill at any moment leaves the previous complete
  checkpoint (or none) and never a half-written one; older checkpoints are removed only after the new one is in
  place. Nothing is pickled: loading reads tensors and JSON only, so a crafted checkpoint cannot run code.
- ``distill_state.json`` in a finished checkpoint directory: which stage produced it, from which input (path and
  content hash of the weights), under which recipe; the next stage reads it to refuse a wrong chain (the reference
  implementation's issue #4: a stage not started from the previous stage's weights gives stage-3 KL ~8000).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmmamba_bench.results import write_json_atomic

STATE_FILE = "distill_state.json"
CKPT_PREFIX = "checkpoint-"
CKPT_TENSORS = "tensors.safetensors"
CKPT_META = "state.json"
CKPT_FORMAT = "mmmamba-bench/train-checkpoint/v2"
LEGACY_FILES = ("train_state.pt",)  # the pickled format of earlier versions: never loaded
_CKPT_DIR = re.compile(rf"^{CKPT_PREFIX}(\d+)$")


class CorruptCheckpointError(RuntimeError):
    """A resumable checkpoint that is incomplete, unreadable or does not match its recorded hash."""


class DiskFullError(OSError):
    """Not enough free space to write a checkpoint; nothing was published."""


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


# ---- RNG state as tensors + JSON ---------------------------------------------------------------------------------

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


def _python_rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(data: list) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)


# ---- payload <-> (tensors, JSON) ---------------------------------------------------------------------------------

def _split_payload(payload: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A training payload -> flat tensors for safetensors and a JSON-able rest (the inverse of :func:`_join`)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, t in payload["params"].items():
        tensors[f"params/{name}"] = t
    optim = payload.get("optimizer")
    optim_json = None
    if optim is not None:
        state_json: dict[str, dict[str, Any]] = {}
        for idx, entry in optim["state"].items():
            state_json[str(idx)] = {}
            for key, value in entry.items():
                if torch.is_tensor(value):
                    tensors[f"optim/{idx}/{key}"] = value
                else:
                    state_json[str(idx)][key] = value
        optim_json = {"state": state_json, "param_groups": optim["param_groups"]}
    rng = payload.get("rng")
    rng_json = None
    if rng is not None:
        tensors["rng/torch"] = rng["torch"]
        for i, s in enumerate(rng.get("cuda", [])):
            tensors[f"rng/cuda/{i}"] = s
        rng_json = {"python": _python_rng_to_json(rng["python"]), "cuda": len(rng.get("cuda", []))}
    meta = {"step": int(payload["step"]), "data_position": payload.get("data_position"), "optimizer": optim_json,
            "rng": rng_json}
    return {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, meta


def _join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    payload: dict[str, Any] = {"step": meta["step"], "data_position": meta.get("data_position"),
                               "params": {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("params/")}}
    if meta.get("optimizer") is not None:
        state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["optimizer"]["state"].items()}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, idx, name = key.split("/", 2)
                state.setdefault(int(idx), {})[name] = value
        groups = [dict(g) for g in meta["optimizer"]["param_groups"]]
        for g in groups:
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
        payload["optimizer"] = {"state": state, "param_groups": groups}
    if meta.get("rng") is not None:
        rng: dict[str, Any] = {"torch": tensors["rng/torch"],
                               "python": _python_rng_from_json(meta["rng"]["python"])}
        if meta["rng"].get("cuda"):
            rng["cuda"] = [tensors[f"rng/cuda/{i}"] for i in range(meta["rng"]["cuda"])]
        payload["rng"] = rng
    return payload


def check_free_space(folder: Path, needed: int, what: str) -> None:
    """Raise :class:`DiskFullError` before writing when ``folder``'s file system has less than ``needed`` bytes."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise DiskFullError(f"disk full: writing {what} needs about {needed / 2**20:.1f} MiB, but only "
                            f"{free / 2**20:.1f} MiB are free on the file system of {folder}; free some space and "
                            f"rerun (the last complete checkpoint is kept)")


@dataclass
class TrainCheckpoint:
    """The resumable checkpoint of one training run, kept in ``work_dir`` (see the module docstring).

    ``tag`` identifies the run (e.g. the hash of the recipe and the data); loading a checkpoint written under another
    tag is refused, so a changed recipe or other data never silently continues an old run.
    """

    work_dir: Path
    tag: str

    def _published(self) -> list[tuple[int, Path]]:
        if not self.work_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.work_dir.iterdir() if (m := _CKPT_DIR.match(p.name))]
        return sorted(found)

    @property
    def path(self) -> Path | None:
        """The newest published checkpoint folder, or None."""
        published = self._published()
        return published[-1][1] if published else None

    def exists(self) -> bool:
        legacy = [self.work_dir / f for f in LEGACY_FILES if (self.work_dir / f).exists()]
        if legacy:
            raise CorruptCheckpointError(f"{legacy[0]}: a checkpoint in the old pickled format, which is never loaded "
                                         f"(loading a pickle can run code); delete {self.work_dir} to restart this "
                                         f"run")
        return self.path is not None

    def check_tag(self) -> None:
        """Refuse, before any work, a resumable checkpoint of another run (see :meth:`load`); none is fine."""
        if not self.exists():
            return
        meta_path = self.path / CKPT_META  # type: ignore[operator]
        try:
            tag = json.loads(meta_path.read_text()).get("tag")
        except (OSError, json.JSONDecodeError):
            return  # load() says what is wrong with it
        if tag != self.tag:
            raise CorruptCheckpointError(f"{self.work_dir}: the checkpoint belongs to another run (recipe or data "
                                         f"changed?); use a new output directory or delete {self.work_dir}")

    def save(self, payload: dict[str, Any]) -> Path:
        """Publish ``payload`` (step, params, optimizer, rng, data_position) as ``checkpoint-<step>``; returns it."""
        from safetensors.torch import save_file

        tensors, meta = _split_payload(payload)
        step = meta["step"]
        self.work_dir.mkdir(parents=True, exist_ok=True)
        needed = sum(t.numel() * t.element_size() for t in tensors.values()) + (1 << 20)
        check_free_space(self.work_dir, needed, f"the step-{step} checkpoint in {self.work_dir}")
        final = self.work_dir / f"{CKPT_PREFIX}{step:08d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=self.work_dir))
        try:
            save_file(tensors, str(tmp / CKPT_TENSORS))
            meta = {"format": CKPT_FORMAT, "tag": self.tag, **meta, "sha256": file_sha256(tmp / CKPT_TENSORS)}
            (tmp / CKPT_META).write_text(json.dumps(meta) + "\n")
            for f in (tmp / CKPT_TENSORS, tmp / CKPT_META):
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            if final.exists():  # the same step saved again (a rerun of a finished run): replace it
                shutil.rmtree(final)
            os.rename(tmp, final)  # the one step that publishes
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno == 28:  # ENOSPC
                raise DiskFullError(f"disk full while writing the step-{step} checkpoint in {self.work_dir} "
                                    f"(about {needed / 2**20:.1f} MiB needed, "
                                    f"{shutil.disk_usage(self.work_dir).free / 2**20:.1f} MiB free); nothing was "
                                    f"published, the last complete checkpoint is kept") from exc
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old_step, old in self._published():
            if old_step < step:
                shutil.rmtree(old, ignore_errors=True)
        for stale in self.work_dir.glob(f".{CKPT_PREFIX}*.tmp"):  # left by a kill during an earlier save
            shutil.rmtree(stale, ignore_errors=True)
        return final

    def load(self) -> dict[str, Any]:
        """The newest complete checkpoint's payload; raises :class:`CorruptCheckpointError` if it is unusable."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = self.path
        if folder is None:
            raise CorruptCheckpointError(f"{self.work_dir}: no checkpoint to resume from")
        meta_path, tensor_path = folder / CKPT_META, folder / CKPT_TENSORS
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise CorruptCheckpointError(f"{meta_path}: unreadable ({exc}); delete {self.work_dir} to restart this "
                                         f"run") from None
        if meta.get("format") != CKPT_FORMAT:
            raise CorruptCheckpointError(f"{meta_path}: unknown checkpoint format {meta.get('format')!r}")
        if meta.get("tag") != self.tag:
            raise CorruptCheckpointError(f"{self.work_dir}: the checkpoint belongs to another run (recipe or data "
                                         f"changed?); use a new output directory or delete {self.work_dir}")
        if not tensor_path.is_file() or file_sha256(tensor_path) != meta.get("sha256"):
            raise CorruptCheckpointError(f"{tensor_path}: missing or its sha256 does not match {meta_path} "
                                         f"(corrupt); delete {self.work_dir} to restart this run")
        try:
            tensors = load_file(str(tensor_path))
        except (SafetensorError, OSError) as exc:
            raise CorruptCheckpointError(f"{tensor_path}: cannot be read ({exc})") from None
        if int(meta["step"]) != int(folder.name.removeprefix(CKPT_PREFIX)):
            raise CorruptCheckpointError(f"{meta_path}: step {meta['step']} differs from the folder name")
        return _join(tensors, meta)
