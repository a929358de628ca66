"""The cost of a configuration: decode milliseconds per token and memory at each context length.

Two sources, and every result says which (:attr:`Cost.label`: ``"measured (NVIDIA H200)"`` /
``"modelled (NVIDIA GeForce RTX 4090 24GB)"``):

- **measured** (:func:`measured_cost`, a CUDA GPU): ``mmmamba-bench profile``'s optimised batch-1 decode
  (:func:`mmmamba_bench.profiler.commands.run_profile`) on the checkpoint, bf16; ms/token is the median step after
  a prompt of the context's length, memory the allocator's peak over prefill and decode.
- **modelled** (:func:`modelled_cost`, any machine): the memory-bandwidth floor of one decode step for a GPU of
  :data:`GPUS`, with the profiler's own arithmetic (:func:`mmmamba_bench.profiler.floor.step_bytes` /
  :func:`~mmmamba_bench.profiler.floor.floor_ms`): the bytes a step must move (every weight once, the Mamba-2 states
  read and written, the KV cache read) divided by the GPU's bandwidth, for bf16 weights with the cache holding the
  context's tokens. It is a lower bound, and the decode of a tiny model is launch-bound far above it. Memory is the
  bf16 weights plus the fixed-shape decode cache the decoder allocates for the context
  (:class:`mmmamba_bench.model.cache.InferenceCache`), activations left out; a context whose memory exceeds the
  GPU's is marked ``"oom"``.

  Calibration on the lent H200 (2026-12-02, random weights of the real shapes, 20 timed steps): measured / modelled
  (``h200-measured``) decode ms at 1K and 16K tokens: mmMamba-linear 1.489 / 1.166 and 1.495 / 1.166, hybrid
  1.492 / 1.153 and 1.690 / 1.277, HoVLE 1.529 / 1.116 and 2.316 / 1.611 (1.28-1.44x); allocator peak / modelled
  memory 5.42 / 5.14 GiB (linear, 1K) to 7.84 / 6.86 GiB (HoVLE, 16K): the measured peak adds the prefill's
  activations.

The GPU table holds nominal spec-sheet numbers (bandwidth in decimal TB/s; memory as the spec sheets print it, "80
GB", which is binary: an RTX 4090 reports 24,564 MiB), plus one measured bandwidth, the H200's device-to-device copy
on the lent machine (``h200-measured``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mmmamba_bench.config import ChatConfig
from mmmamba_bench.profiler import floor as fl

GIB = 2**30
MODELLED, MEASURED = "modelled", "measured"
COST_MODES = ("auto", MEASURED, MODELLED)


@dataclass(frozen=True)
class GpuSpec:
    key: str  # the --gpu name
    name: str
    bandwidth_bytes_per_s: float
    memory_bytes: int
    source: str  # where the numbers come from


GPUS: dict[str, GpuSpec] = {g.key: g for g in (
    GpuSpec("h100", "NVIDIA H100 SXM 80GB", 3.35e12, 80 * GIB,
            "nominal spec sheet (H100 SXM: 3.35 TB/s HBM3, 80 GB)"),
    GpuSpec("h200", "NVIDIA H200 141GB", 4.8e12, 141 * GIB, "nominal spec sheet (H200: 4.8 TB/s HBM3e, 141 GB)"),
    GpuSpec("h200-measured", "NVIDIA H200 141GB (measured copy bandwidth)", 4.07e12, 141 * GIB,
            "device-to-device copy measured on the lent H200, 2026-12-01 (bytes read + written; "
            "shared/reference/performance_notes.md); memory from the spec sheet"),
    GpuSpec("rtx4090", "NVIDIA GeForce RTX 4090 24GB", 1.008e12, 24 * GIB,
            "nominal spec sheet (RTX 4090: 1,008 GB/s GDDR6X, 24 GB); the paper's Fig. 1 GPU"),
)}


def gpu_spec(key: str) -> GpuSpec:
    if key not in GPUS:
        raise ValueError(f"--gpu {key!r}: unknown GPU; choose from {', '.join(GPUS)}")
    return GPUS[key]


@dataclass
class CostRow:
    """One context: ``status`` "ok" or "oom" (measured: the profiler ran out of memory; modelled: the memory exceeds
    the GPU's, the numbers then say what it would need)."""

    context: int
    decode_ms_per_token: float | None
    memory_bytes: int | None
    status: str = "ok"
    bytes_per_step: float | None = None
    floor_ms: float | None = None  # the bandwidth floor (modelled: equals decode_ms_per_token)
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class Cost:
    source: str  # MODELLED | MEASURED
    device: str  # the GPU's name
    rows: list[CostRow]
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.source} ({self.device})"

    def at(self, context: int) -> CostRow | None:
        return next((r for r in self.rows if r.context == context), None)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "device": self.device, "label": self.label, "note": self.note,
                "rows": [asdict(r) for r in self.rows]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Cost:
        return cls(data["source"], data["device"], [CostRow(**r) for r in data["rows"]], data.get("note", ""))


# ---- modelled ----------------------------------------------------------------------------------------------------

def parameter_count(config: ChatConfig) -> int:
    """Parameters of the model ``config`` describes (counted on the meta device: nothing allocated)."""
    import torch

    from mmmamba_bench.model.stack import MMMambaChatModel

    with torch.device("meta"):
        model = MMMambaChatModel(config)
    return sum(p.numel() for p in model.parameters())


def cache_bytes(config: ChatConfig, context: int, dtype_bytes: int = 2) -> int:
    """Bytes of the decode cache for ``context`` tokens plus the next one, as the decoder allocates it (static KV
    per attention layer, conv + fp32 SSM state per Mamba-2 layer; counted on the meta device)."""
    import torch

    from mmmamba_bench.model.cache import InferenceCache

    dtype = {2: torch.bfloat16, 4: torch.float32}[dtype_bytes]
    return InferenceCache.allocate(config, 1, context + 1, "meta", dtype).nbytes()


def modelled_cost(config: ChatConfig, contexts: Sequence[int], gpu: GpuSpec, dtype_bytes: int = 2) -> Cost:
    """The bandwidth-floor cost of decoding the next token after each context, on ``gpu`` (see the module
    docstring): ``floor_ms(step_bytes(config, context).total, bandwidth)``, the profiler's arithmetic."""
    weights = parameter_count(config) * dtype_bytes
    rows = []
    for context in contexts:
        sb = fl.step_bytes(config, context, dtype_bytes=dtype_bytes)
        ms = fl.floor_ms(sb.total, gpu.bandwidth_bytes_per_s)
        memory = weights + cache_bytes(config, context, dtype_bytes)
        rows.append(CostRow(context, ms, memory, "oom" if memory > gpu.memory_bytes else "ok", float(sb.total), ms,
                            {"bytes": {"weights": sb.weights, "state": sb.state, "kv": sb.kv},
                             "memory": {"weights": weights, "cache": memory - weights}}))
    note = (f"bandwidth floor at {gpu.bandwidth_bytes_per_s / 1e12:.3g} TB/s ({gpu.source}); bf16 weights; memory = "
            f"weights + decode cache, no activations, against {gpu.memory_bytes / GIB:.0f} GiB")
    return Cost(MODELLED, gpu.name, rows, note)


# ---- measured ----------------------------------------------------------------------------------------------------

def measured_cost(model_dir: Path, contexts: Sequence[int], profile_file: Path, *, steps: int = 20, warmup: int = 5,
                  device: str = "cuda", impl: str = "auto") -> Cost:
    """``mmmamba-bench profile`` (optimised decode, bf16) of ``model_dir`` on the current GPU; its rows are kept in
    ``profile_file`` (written under a temporary name, renamed when every context is done). ``impl``: the decode
    step's kernels (``profile --impl``: auto / triton / torch); each row's ``detail["path"]`` says which ran."""
    import torch

    from mmmamba_bench.profiler.commands import run_profile
    from mmmamba_bench.report.profile import peak_bytes

    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        raise ValueError("--cost measured needs a CUDA GPU (none is visible here); use --cost modelled --gpu NAME")
    partial = profile_file.with_name(f".{profile_file.name}.partial")
    rows = run_profile([str(model_dir)], list(contexts), ["optimized"], partial, dev, torch.bfloat16, steps=steps,
                       warmup=warmup, impl=impl)
    partial.replace(profile_file)
    out = [CostRow(r.context, r.decode_ms_per_token, peak_bytes(r), r.status, r.bytes_per_step, r.floor_ms,
                   {"path": r.path, "nvml_used_bytes": r.nvml_used_bytes, "error": r.error,
                    "bandwidth_bytes_per_s": r.bandwidth_bytes_per_s}) for r in rows]
    device_name = rows[0].device if rows else torch.cuda.get_device_name(dev)
    return Cost(MEASURED, device_name, out, f"mmmamba-bench profile, optimised decode, bf16, median of {steps} steps; "
                                            f"memory = allocator peak over prefill and decode ({profile_file.name})")


def resolve_mode(mode: str, device: str | None) -> str:
    """``auto`` -> measured on a CUDA device, modelled otherwise."""
    if mode not in COST_MODES:
        raise ValueError(f"--cost {mode!r}: choose from {', '.join(COST_MODES)}")
    if mode != "auto":
        return mode
    import torch

    on_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    return MEASURED if on_cuda else MODELLED
