"""Reading and writing checkpoints in the released layout (config.json + safetensors, optionally sharded).

A real HoVLE / mmMamba directory loads unchanged: tensor names are the module names of
:class:`~mmmamba_bench.model.stack.MMMambaChatModel`. Every problem is reported with the file and tensor it
concerns; writing goes through a temporary directory renamed into place, so nothing half-written is left behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mmmamba_bench.config import ChatConfig
from mmmamba_bench.model.stack import MMMambaChatModel

log = logging.getLogger(__name__)

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Tokenizer / remote-code files copied along when a model is converted or re-saved.
# Never code: a checkpoint's *.py files (e.g. tokenization_internlm2.py) are not copied, and never executed.
SIDE_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
              "added_tokens.json", "generation_config.json")
# Keys some checkpoints carry that the model recomputes (ignored on load).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded; the message names the file and tensor."""


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc})") from None
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).is_file()]
        if missing:
            raise CheckpointError(f"{index} names shard(s) that do not exist: {missing}")
        return [path / f for f in files]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: no *.safetensors files (and no {INDEX_NAME})")
    return files


def read_state_dict(path: str | os.PathLike, dtype: torch.dtype | None = None,
                    device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory, converted to ``dtype`` (if given) on ``device``.

    Every tensor must be floating point (integer weights would be cast silently) and finite (NaN / inf weights
    evaluate to meaningless scores): either is a :class:`CheckpointError` naming the file and the tensor.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for file in _weight_files(path):
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for name in f.keys():
                    if name in tensors:
                        raise CheckpointError(f"{file}: tensor {name!r} also appears in another shard")
                    t = f.get_tensor(name)
                    check_weight(t, name, file)
                    tensors[name] = t.to(device=device, dtype=dtype if dtype is not None else t.dtype)
        except SafetensorError as exc:
            raise CheckpointError(f"{file}: cannot read safetensors file (truncated or corrupt?): {exc}") from None
        except OSError as exc:
            raise CheckpointError(f"{file}: cannot read: {exc}") from None
    return tensors


def check_weight(t: torch.Tensor, name: str, file: Path) -> None:
    """A weight must be floating point and finite (one pass over the tensor, on the CPU, before any cast)."""
    if not t.is_floating_point():
        raise CheckpointError(f"{file}: tensor {name!r} has dtype {str(t.dtype).removeprefix('torch.')}; weights "
                              f"must be floating point")
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise CheckpointError(f"{file}: tensor {name!r} holds {bad} NaN / inf value(s) of {t.numel()}")


def check_state(config: ChatConfig, tensors: dict[str, torch.Tensor], where: Path) -> list[str]:
    """Refuse tensors that do not fit ``config`` (missing, mis-shaped, or belonging to a module we build without
    them); returns the names of tolerated extras (tensors of modules we do not have)."""
    with torch.device("meta"):
        model = MMMambaChatModel(config)
    expected = {name: p.shape for name, p in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    if missing:
        shown = ", ".join(missing[:8]) + (f" ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise CheckpointError(f"{where}: missing tensor(s) for this config: {shown}")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise CheckpointError(f"{where}: tensor {name!r} has shape {tuple(tensors[name].shape)}, "
                                  f"expected {tuple(shape)} from config.json")
    unexpected = sorted(n for n in set(tensors) - set(expected) if not n.endswith(IGNORED_SUFFIXES))
    dropped = tensors_of_built_modules(model, unexpected)
    if dropped:
        raise CheckpointError(f"{where}: tensor(s) {dropped[:8]} belong to modules this config builds without them "
                              f"(e.g. attention biases): loading without them would change the model")
    return unexpected


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
               ssd_backend: str = "auto") -> MMMambaChatModel:
    """Load a HoVLE / mmMamba checkpoint directory (single or sharded safetensors) for inference.

    ssd_backend: "auto" (a Triton kernel backend on CUDA when importable, else plain PyTorch), "torch",
    "mamba_ssm" or "fla"; the choice is logged and recorded in ``model.code_path``.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory not found: {path}")
    config = ChatConfig.from_json_file(path / "config.json")
    tensors = read_state_dict(path, dtype=dtype, device=device)
    unexpected = check_state(config, tensors, path)
    with torch.device("meta"):
        model = MMMambaChatModel(config)
    expected = model.state_dict().keys()
    if unexpected:
        # Tolerated (a real checkpoint may carry extras), but said out loud and kept on the model.
        shown = ", ".join(unexpected[:8]) + (f" ... ({len(unexpected)} in all)" if len(unexpected) > 8 else "")
        log.warning("%s: ignoring %d tensor(s) this config does not use: %s", path, len(unexpected), shown)
    model.load_state_dict({n: tensors[n] for n in expected}, strict=True, assign=True)
    model.eval()
    model.source_dir = path  # type: ignore[attr-defined]
    model.ignored_tensors = unexpected  # type: ignore[attr-defined]
    model.set_ssd_backend(ssd_backend)
    return model


def tensors_of_built_modules(model: torch.nn.Module, names: list[str]) -> list[str]:
    """Those of ``names`` (tensors the model has no parameter for) whose owning module the model does build.

    ``...attention.wqkv.bias`` against a bias-free ``wqkv``: dropping it would silently change the computation. A
    tensor of a module the model does not have (``...rotary_emb.inv_freq``, a released extra) is not listed.
    """
    modules = {name for name, _ in model.named_modules()}
    return sorted(n for n in names if n.rpartition(".")[0] in modules)


def state_dtype_name(state: dict[str, torch.Tensor]) -> str:
    """The one floating dtype of ``state`` as config.json's ``torch_dtype`` spells it ("float32", "bfloat16")."""
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) != 1:
        raise CheckpointError(f"tensors to write must share one floating dtype (config.json's torch_dtype), "
                              f"found {sorted(str(d) for d in dtypes)}")
    return str(dtypes.pop()).removeprefix("torch.")


def save_model(model: MMMambaChatModel, out_dir: str | os.PathLike, *, dtype: torch.dtype | None = None,
               max_shard_bytes: int | None = None, overwrite: bool = False,
               side_files_from: str | os.PathLike | None = None,
               before_publish: Callable[[Path], None] | None = None) -> Path:
    """Write ``model`` in the released layout: config.json + model.safetensors (or shards + index).

    The directory is assembled under a temporary name next to ``out_dir`` and renamed into place, so an
    interrupted save leaves no partial checkpoint. An existing ``out_dir`` is refused unless ``overwrite``.
    side_files_from: a directory whose tokenizer files are copied along (see ``SIDE_FILES``; never code).
    before_publish: called with the finished temporary directory just before it is renamed into place, to add files
    that must appear together with the weights (e.g. the stage record), so they are published as one unit.
    """
    state = {n: t.detach().to("cpu", dtype=dtype or t.dtype).contiguous() for n, t in model.state_dict().items()}
    return save_checkpoint(model.config, state, out_dir, max_shard_bytes=max_shard_bytes, overwrite=overwrite,
                           side_files_from=side_files_from, before_publish=before_publish)


def save_checkpoint(config: ChatConfig, state: dict[str, torch.Tensor], out_dir: str | os.PathLike, *,
                    max_shard_bytes: int | None = None, overwrite: bool = False,
                    side_files_from: str | os.PathLike | None = None,
                    before_publish: Callable[[Path], None] | None = None) -> Path:
    """Write a config and a state dict in the released layout, atomically (see :func:`save_model`).

    config.json carries what the family's released code needs (``ChatConfig.to_dict``) and ``torch_dtype``, the
    dtype of the tensors written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"output directory already exists: {out_dir} (pass overwrite=True / --overwrite)")
    dtype_name = state_dtype_name(state)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    try:
        (tmp / "config.json").write_text(config.to_json_string(torch_dtype=dtype_name))
        _write_tensors(tmp, state, max_shard_bytes)
        if side_files_from is not None:
            for name in SIDE_FILES:
                src = Path(side_files_from) / name
                if src.is_file():
                    shutil.copy2(src, tmp / name)
        if before_publish is not None:
            before_publish(tmp)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def _write_tensors(folder: Path, state: dict[str, torch.Tensor], max_shard_bytes: int | None) -> None:
    names = list(state)
    if max_shard_bytes is None:
        save_file(state, str(folder / SINGLE_NAME), metadata={"format": "pt"})
        return
    shards: list[list[str]] = [[]]
    size = 0
    for n in names:
        nbytes = state[n].numel() * state[n].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(n)
        size += nbytes
    weight_map: dict[str, str] = {}
    total = 0
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: state[n] for n in shard}, str(folder / fname), metadata={"format": "pt"})
        for n in shard:
            weight_map[n] = fname
            total += state[n].numel() * state[n].element_size()
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2) + "\n")


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished ``src`` to ``dst``, replacing an existing ``dst`` only once ``src`` is complete."""
    if not dst.exists():
        os.replace(src, dst)
        return
    backup = dst.with_name(f".{dst.name}.old")
    if backup.exists():
        shutil.rmtree(backup)
    os.replace(dst, backup)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(backup, dst)
        raise
    shutil.rmtree(backup, ignore_errors=True)
