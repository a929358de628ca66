"""Device facts for the profiler: copy bandwidth, peak memory (allocator / NVML / RSS), the memory cap, OOMs."""

from __future__ import annotations

import gc
import logging
import statistics
import time
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_copy_bandwidth(device: torch.device, nbytes: int | None = None, repeats: int = 20) -> float:
    """Median device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written."""
    nbytes = nbytes or (512 * 2**20 if device.type == "cuda" else 64 * 2**20)
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times = []
    for i in range(repeats + 3):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src)
            b.record()
            b.synchronize()
            t = a.elapsed_time(b) / 1e3
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            t = time.perf_counter() - t0
        if i >= 3:
            times.append(t)
    del src, dst
    return 2 * nbytes / statistics.median(times)


def _nvml_handle(device: torch.device):
    try:
        import pynvml
    except ImportError:
        return None, None
    try:
        pynvml.nvmlInit()
        return pynvml, pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    except Exception as exc:  # noqa: BLE001 - NVML missing or refused: report None
        log.debug("NVML unavailable: %s", exc)
        return None, None


def nvml_used_bytes(device: torch.device) -> int | None:
    """Device memory in use as NVML sees it (all allocations, the CUDA context included); None without NVML."""
    if device.type != "cuda":
        return None
    nv, handle = _nvml_handle(device)
    if handle is None:
        return None
    return int(nv.nvmlDeviceGetMemoryInfo(handle).used)


def rss_bytes() -> int | None:
    try:
        import psutil
    except ImportError:
        try:
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # lifetime peak (KiB on Linux)
        except ImportError:
            return None
    return int(psutil.Process().memory_info().rss)


class MemoryMeter:
    """Peak memory of one phase: the torch allocator's peak on CUDA, else the process RSS at the phase's end."""

    def __init__(self, device: torch.device):
        self.device = device
        self.source = "torch-allocator" if device.type == "cuda" else "rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int | None:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return rss_bytes()


@dataclass
class MemoryCap:
    cap_bytes: int
    allocator_limit_bytes: int | None  # what the torch allocator may hold (cap minus non-allocator memory)
    overhead_bytes: int | None  # CUDA context and other memory outside the allocator, counted against the cap
    enforced: bool  # True on CUDA (allocations beyond it raise); on CPU the peak is checked after the run

    def exceeded(self, peak: int | None) -> bool:
        return not self.enforced and peak is not None and peak > self.cap_bytes


def apply_memory_cap(cap_bytes: int, device: torch.device) -> MemoryCap:
    """Limit this process to ``cap_bytes`` of device memory, as on a card of that size.

    On CUDA: ``torch.cuda.set_per_process_memory_fraction`` with the fraction left after the memory already in
    use outside the torch allocator (the CUDA context, as a real card of that size would also hold it). On CPU
    the cap cannot be enforced; rows whose RSS peak exceeds it are recorded as out of memory.
    """
    if device.type != "cuda":
        return MemoryCap(cap_bytes, None, None, enforced=False)
    torch.cuda.init()
    torch.empty(1, device=device)  # create the context so NVML sees it
    total = torch.cuda.get_device_properties(device).total_memory
    used = nvml_used_bytes(device)
    overhead = max(0, used - torch.cuda.memory_reserved(device)) if used is not None else 0
    limit = max(0, cap_bytes - overhead)
    if limit > total:
        raise ValueError(f"memory cap {cap_bytes} exceeds the device's {total} bytes")
    index = device.index if device.index is not None else torch.cuda.current_device()
    torch.cuda.set_per_process_memory_fraction(limit / total, index)
    log.info("memory cap %.2f GiB: allocator limit %.2f GiB (%.2f GiB outside the allocator)", cap_bytes / 2**30,
             limit / 2**30, overhead / 2**30)
    return MemoryCap(cap_bytes, limit, overhead, enforced=True)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in str(exc).lower() or isinstance(exc, MemoryError))


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
