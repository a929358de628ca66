"""The whole optimizer state of a DeepSpeed ZeRO-1/2 run, gathered from (and scattered back to) its partitions.

So that a ZeRO run writes and reads the project's own resumable checkpoints (safetensors + JSON, nothing pickled,
:class:`~mmmamba_bench.train.state.TrainCheckpoint`) in the format of a plain ``torch.optim.AdamW`` run, and so
resumes on any number of processes and with either engine.

What ZeRO-1/2 holds (``deepspeed.runtime.zero.stage_1_and_2.DeepSpeedZeroOptimizer``): per parameter group i, the
trained bf16 parameters are views into one flat buffer ``bit16_groups_flat[i]`` (each parameter at
``round_robin_bit16_offsets[i][j]``, padding between them); each process owns one equal slice of that flat buffer
as fp32 master weights, ``single_partition_of_fp32_groups[i]``, and the base optimizer's state (AdamW: ``step``,
``exp_avg``, ``exp_avg_sq``) is kept for that slice only. Gathering concatenates the slices of every process and cuts
the flat fp32 vectors back into parameters; scattering does the reverse. Round-robin gradient partitioning (which
reorders parameters) and ZeRO-3 are refused.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def zero_optimizer(optimizer: Any) -> Any:
    """The ``DeepSpeedZeroOptimizer`` inside accelerate's optimizer wrapper."""
    inner = getattr(optimizer, "optimizer", optimizer)
    if not hasattr(inner, "single_partition_of_fp32_groups"):
        raise NotImplementedError(f"checkpoints are written for DeepSpeed ZeRO stages 1-2 only, not for "
                                  f"{type(inner).__name__} (ZeRO-3 partitions the parameters themselves)")
    if getattr(inner, "round_robin_gradients", False):
        raise NotImplementedError("round_robin_gradients reorders the flat buffers: turn it off in the DeepSpeed "
                                  "config")
    return inner


def _gather(part: torch.Tensor, group) -> torch.Tensor:
    """The flat vector whose equal slices the processes of ``group`` hold (``part`` is this process's)."""
    world = dist.get_world_size(group=group) if dist.is_initialized() else 1
    if world == 1:
        return part.detach().clone()
    pieces = [torch.empty_like(part) for _ in range(world)]
    dist.all_gather(pieces, part.detach().contiguous(), group=group)
    return torch.cat(pieces)


def _check_layout(zo: Any, i: int) -> None:
    group = zo.real_dp_process_group[i]
    world = dist.get_world_size(group=group) if dist.is_initialized() else 1
    if zo.single_partition_of_fp32_groups[i].numel() * world != zo.bit16_groups_flat[i].numel():
        raise NotImplementedError(f"ZeRO group {i}: partitions of unequal size "
                                  f"({zo.bit16_groups_flat[i].numel()} elements over {world} processes)")


def _torch_indices(zo: Any) -> dict[int, int]:
    """id(parameter) -> the index ``torch.optim.Optimizer.state_dict()`` gives it (groups in order, then params)."""
    return {id(p): k for k, p in enumerate(p for group in zo.bit16_groups for p in group)}


def _slots(zo: Any, i: int):
    """(parameter, shape, offset) of every parameter of group i in its flat buffer."""
    return zip(zo.round_robin_bit16_groups[i], [m.shape for m in zo.round_robin_bit16_meta[i]],
               zo.round_robin_bit16_offsets[i])


def full_state(optimizer: Any, params: dict[str, torch.nn.Parameter]) -> tuple[dict[str, torch.Tensor], dict]:
    """(fp32 master weights by name, a ``torch.optim.AdamW.state_dict()``-shaped state) of a ZeRO-1/2 run.

    ``params``: the trained parameters by name. Every process must call this (it gathers); every process gets the
    whole state.
    """
    zo = zero_optimizer(optimizer)
    names = {id(p): n for n, p in params.items()}
    index = _torch_indices(zo)
    weights: dict[str, torch.Tensor] = {}
    state: dict[int, dict[str, torch.Tensor]] = {}
    groups = []
    for i, base_group in enumerate(zo.optimizer.param_groups):
        _check_layout(zo, i)
        part = zo.single_partition_of_fp32_groups[i]
        pg = zo.real_dp_process_group[i]
        flat = _gather(part, pg)
        moments = {key: _gather(value, pg) for key, value in zo.optimizer.state.get(part, {}).items()
                   if torch.is_tensor(value) and value.shape == part.shape}
        step = zo.optimizer.state.get(part, {}).get("step")
        members = []
        for p, shape, offset in _slots(zo, i):
            if id(p) not in names:
                raise ValueError(f"ZeRO group {i} holds a parameter {tuple(shape)} that is not among the trained ones")
            n = shape.numel()
            weights[names[id(p)]] = flat[offset:offset + n].view(shape).cpu()
            if moments:
                entry = {key: v[offset:offset + n].view(shape).cpu() for key, v in moments.items()}
                entry["step"] = step.detach().cpu().clone() if torch.is_tensor(step) else torch.tensor(float(step))
                state[index[id(p)]] = entry
            members.append(index[id(p)])
        groups.append({**{k: v for k, v in base_group.items() if k != "params"}, "params": members})
    return weights, {"state": state, "param_groups": groups}


@torch.no_grad()
def load_full_state(optimizer: Any, params: dict[str, torch.nn.Parameter], weights: dict[str, torch.Tensor],
                    optim_state: dict) -> None:
    """Put a whole state (as :func:`full_state` returns, or a plain AdamW run wrote) into the ZeRO partitions: fp32
    master slices, the bf16 parameters (all of them: ZeRO-1/2 keep every parameter on every process) and the AdamW
    moments of this process's slice. Every process calls this with the same state."""
    zo = zero_optimizer(optimizer)
    names = {id(p): n for n, p in params.items()}
    index = _torch_indices(zo)
    for i, base_group in enumerate(zo.optimizer.param_groups):
        _check_layout(zo, i)
        part = zo.single_partition_of_fp32_groups[i]
        pg = zo.real_dp_process_group[i]
        rank = dist.get_rank(group=pg) if dist.is_initialized() else 0
        size = part.numel()
        flat = torch.zeros(zo.bit16_groups_flat[i].numel(), dtype=torch.float32, device=part.device)
        moments: dict[str, torch.Tensor] = {}
        step = None
        for p, shape, offset in _slots(zo, i):
            n = shape.numel()
            flat[offset:offset + n] = weights[names[id(p)]].reshape(-1).to(flat.device, torch.float32)
            entry = optim_state["state"].get(index[id(p)])
            if entry:
                step = entry["step"]
                for key in ("exp_avg", "exp_avg_sq"):
                    moments.setdefault(key, torch.zeros_like(flat))[offset:offset + n] = \
                        entry[key].reshape(-1).to(flat.device, torch.float32)
        part.copy_(flat[rank * size:(rank + 1) * size])
        zo.bit16_groups_flat[i].copy_(flat.to(zo.bit16_groups_flat[i].dtype))
        if moments:
            zo.optimizer.state[part] = {**{k: v[rank * size:(rank + 1) * size].clone() for k, v in moments.items()},
                                        "step": torch.as_tensor(step, dtype=torch.float32).clone()}
        saved = optim_state["param_groups"][i]
        for key, value in saved.items():
            if key != "params":
                base_group[key] = tuple(value) if key == "betas" else value
