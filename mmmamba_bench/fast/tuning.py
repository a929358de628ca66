"""Launch configurations of the batch-1 decode kernels: chosen per device by measurement, cached per device.

A GEMV configuration is ``(BLOCK_N, BLOCK_K, num_warps, num_stages)``; an attention configuration is
``(target_splits, BLOCK_T, num_warps, num_stages)`` of the split-KV kernel. How one is chosen:

1. from the on-disk cache (:class:`TuneCache`), keyed by the GPU's name, the Triton version, the kernel and the
   shape — a configuration measured once on this kind of GPU is reused by every later run;
2. otherwise, with ``tune=True``, every candidate is timed alone on scratch outputs (``isolated``: fast, but a
   lone launch includes its launch overhead and none of its neighbours' overlap), and the best few are kept;
3. then :meth:`~mmmamba_bench.fast.decoder.FastDecoder.capture` refines those few inside the real captured step
   (``step``: coordinate descent over the kernels, each candidate timed as whole-step graph replays), which is
   what decides on a GPU where bytes in flight, launch overlap and wave shapes differ from the one the defaults
   came from (the H100 vs the H200);
4. with ``tune=False``, :func:`default_config` (``default``).

The source of every choice is recorded next to it (:meth:`GemvTuner.describe`, in every result row).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

Config = tuple[int, int, int, int]

# (BLOCK_N, BLOCK_K, num_warps, num_stages): the H100-era set (num_stages 3 is Triton's default) and variants
# with more bytes in flight per program (deeper pipelines, wider tiles, more warps) or more, smaller programs.
GEMV_CANDIDATES: tuple[Config, ...] = (
    (2, 1024, 4, 3), (4, 512, 4, 3), (4, 1024, 4, 3), (8, 256, 4, 3), (8, 512, 4, 3), (8, 1024, 8, 3),
    (16, 256, 4, 3), (16, 512, 8, 3), (4, 2048, 8, 3), (2, 2048, 4, 3),
    (4, 1024, 4, 1), (8, 512, 4, 1), (2, 2048, 4, 1),
    (2, 1024, 4, 4), (4, 1024, 4, 4), (8, 512, 4, 4), (16, 512, 8, 4),
    (1, 2048, 4, 3), (2, 512, 2, 3), (32, 256, 8, 3),
)
# (target_splits, BLOCK_T, num_warps, num_stages) of the split-KV attention kernel
ATTN_CANDIDATES: tuple[Config, ...] = (
    (64, 64, 4, 3), (128, 64, 4, 3), (256, 64, 4, 3), (32, 64, 4, 3), (128, 32, 4, 3), (64, 128, 8, 3),
    (128, 64, 4, 2),
)
ATTN_DEFAULT: Config = (64, 64, 4, 3)
SOURCES = ("default", "isolated", "step", "cache")


def _pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def default_config(N: int, K: int) -> Config:
    """A reasonable configuration without tuning: BLOCK_K is the largest power of two <= 512 dividing K (Triton's
    ranges are powers of two; the K loop has no tail)."""
    bk = 512
    while K % bk:
        bk //= 2
    return (8, bk, 4, 3)


@dataclass
class Choice:
    config: Config
    source: str  # one of SOURCES
    us: float | None = None  # the measured time it won with: one launch (isolated) or one step (step)


Key = tuple[str, int, int]


def default_cache_path() -> Path:
    """``$MMMAMBA_BENCH_TUNE_CACHE``, else ``$XDG_CACHE_HOME/mmmamba-bench/decode-tuning.json``."""
    env = os.environ.get("MMMAMBA_BENCH_TUNE_CACHE")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "mmmamba-bench" / "decode-tuning.json"


def _valid(key: Key, cfg: object) -> bool:
    if not (isinstance(cfg, list) and len(cfg) == 4 and all(isinstance(v, int) and v > 0 for v in cfg)):
        return False
    name, _, K = key
    if name == "attn":
        return True
    return cfg[1] <= K and K % cfg[1] == 0 and _pow2(cfg[0]) and _pow2(cfg[1])


class TuneCache:
    """A JSON file of step-refined configurations for one GPU name and Triton version.

    Layout: ``{"version": 1, "entries": {"<gpu>|triton <v>|<kernel>|<N>x<K>": {"config": [...], "us": t}}}``.
    Only data is read (no code); a malformed file or entry is an error naming the file and the entry. Writes
    merge with what is on disk and replace the file atomically, so concurrent runs never leave it half-written.
    """

    VERSION = 1

    def __init__(self, path: Path, device: str, triton_version: str):
        self.path, self.device, self.triton_version = Path(path), device, triton_version

    @classmethod
    def for_device(cls, device, path: Path | None = None) -> "TuneCache":
        import torch
        import triton

        return cls(path or default_cache_path(), torch.cuda.get_device_name(device), triton.__version__)

    def _prefix(self) -> str:
        return f"{self.device}|triton {self.triton_version}|"

    def _read_all(self) -> dict[str, dict]:
        if not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"tuning cache {self.path}: not readable JSON ({exc}); delete it to re-tune") from exc
        if not isinstance(data, dict) or data.get("version") != self.VERSION or not isinstance(data.get("entries"), dict):
            raise ValueError(f"tuning cache {self.path}: expected {{'version': {self.VERSION}, 'entries': {{...}}}}; "
                             "delete it to re-tune")
        return data["entries"]

    def load(self) -> dict[Key, Choice]:
        out: dict[Key, Choice] = {}
        prefix = self._prefix()
        for name, entry in self._read_all().items():
            if not name.startswith(prefix):
                continue
            try:
                kernel, shape = name[len(prefix):].split("|")
                N, K = (int(v) for v in shape.split("x"))
                cfg = entry["config"]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"tuning cache {self.path}: malformed entry {name!r}") from exc
            key = (kernel, N, K)
            if not _valid(key, cfg):
                raise ValueError(f"tuning cache {self.path}: entry {name!r} has an invalid configuration {cfg!r}")
            us = entry.get("us")
            out[key] = Choice(tuple(cfg), "cache", float(us) if isinstance(us, (int, float)) else None)
        return out

    def save(self, choices: dict[Key, Choice]) -> None:
        new = {f"{self._prefix()}{k}|{N}x{K}": {"config": list(c.config), "us": c.us}
               for (k, N, K), c in choices.items() if c.source == "step"}
        if not new:
            return
        entries = self._read_all()
        entries.update(new)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"version": self.VERSION, "entries": dict(sorted(entries.items()))}, f, indent=1)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class GemvTuner:
    """Chooses and remembers a launch configuration per (kernel, N, K) — see the module docstring.

    ``get`` is called by each op at its first launch; ``shortlist`` keeps, per key timed in isolation, the best
    ``keep`` candidates for the in-step refinement; ``set`` records a refined choice.
    """

    def __init__(self, tune: bool = True, cache: TuneCache | None = None, keep: int = 4):
        self.tune, self.cache, self.keep = tune, cache, keep
        self.choices: dict[Key, Choice] = cache.load() if cache is not None else {}
        self.shortlist: dict[Key, list[Config]] = {}
        self.requests = 0  # get() calls so far; a decoder notes it at start to name its own keys later
        self._last_request: dict[Key, int] = {}  # key -> number of its latest get() (bounded: one entry per key)

    @property
    def chosen(self) -> dict[Key, Config]:
        return {k: c.config for k, c in self.choices.items()}

    def get(self, name: str, N: int, K: int, bench: Callable[[Config], object] | None = None,
            constraint: Callable[[Config], bool] | None = None, candidates: tuple[Config, ...] = GEMV_CANDIDATES,
            default: Config | None = None) -> Config:
        key = (name, N, K)
        self._last_request[key] = self.requests
        self.requests += 1
        if key in self.choices:
            return self.choices[key].config
        ok = (lambda c: True) if constraint is None else constraint
        if candidates is GEMV_CANDIDATES:
            cands = [c for c in candidates if c[1] <= K and K % c[1] == 0 and ok(c)]
        else:
            cands = [c for c in candidates if ok(c)]
        fallback = default or default_config(N, K)
        if not ok(fallback):
            fallback = cands[0] if cands else fallback
        if not self.tune or not cands:
            self.choices[key] = Choice(fallback, "default")
        elif bench is None:  # nothing to time alone: the step refinement tries every candidate
            self.choices[key] = Choice(fallback if fallback in cands else cands[0], "default")
            self.shortlist[key] = cands
        else:
            import triton

            timed = sorted((triton.testing.do_bench(lambda c=c: bench(c), warmup=5, rep=20, return_mode="median"), c)
                           for c in cands)
            self.choices[key] = Choice(timed[0][1], "isolated", timed[0][0] * 1e3)
            self.shortlist[key] = [c for _, c in timed[:self.keep]]
        return self.choices[key].config

    def pending(self) -> list[Key]:
        """Keys whose choice came from isolated timing (or none) and still have alternatives to try in the step."""
        return [k for k, v in self.shortlist.items() if len(v) > 1 and self.choices[k].source in ("isolated", "default")]

    def set(self, key: Key, config: Config, source: str, us: float | None = None) -> None:
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r}")
        self.choices[key] = Choice(tuple(config), source, us)

    def save(self) -> None:
        if self.cache is not None:
            self.cache.save(self.choices)

    @property
    def timings(self) -> dict[str, float]:
        return {f"{n}[{N}x{K}]": c.us for (n, N, K), c in self.choices.items() if c.us is not None}

    def used_since(self, mark: int) -> list[Key]:
        """The distinct keys requested since ``self.requests`` was ``mark``, in the order last requested."""
        return sorted((k for k, n in self._last_request.items() if n >= mark), key=self._last_request.__getitem__)

    def describe(self, keys: list[Key] | None = None) -> dict[str, str]:
        """``{kernel[NxK]: configuration (source)}`` for ``keys`` (default: every choice held)."""
        out = {}
        for (n, N, K) in (self.choices if keys is None else keys):
            c = self.choices[(n, N, K)]
            a, b, w, s = c.config
            label = f"splits{a}/BT{b}" if n == "attn" else f"BN{a}/BK{b}"
            out[f"{n}[{N}x{K}]"] = f"{label}/w{w}/s{s} ({c.source})"
        return out
