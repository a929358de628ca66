"""Result files: the row schemas the profiler and speed benchmark write and the report reads, and atomic writes.

The package's one way to publish a file or a folder without a reader ever seeing it half-written:
:func:`atomic_write` (a file: temporary sibling, then a rename) and :func:`publish_dir` (a folder built elsewhere,
moved into place by one rename).

Every row records the device, dtype and the code path that actually ran (``path``), so a report never mixes a
Triton-kernel number with a plain-PyTorch one without saying so.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any, Iterator

PROFILE_SCHEMA = "mmmamba-bench/profile/v1"
SPEED_SCHEMA = "mmmamba-bench/speed/v1"


@dataclass
class ProfileRow:
    """One (model, context length) measurement of ``mmmamba-bench profile``.

    Times in seconds / milliseconds, memory in bytes, bandwidth in bytes per second.
    status: "ok", or "oom" (the run did not fit; ``error`` holds the message), or "error".
    """

    model: str  # a label, e.g. "mmmamba-linear"
    kind: str  # "transformer" | "linear" | "hybrid"
    context: int  # tokens in the prompt before the timed decode steps
    device: str
    dtype: str
    path: dict[str, str]  # which implementation ran: {"ssd": ..., "state_update": ..., "attention": ..., "graph": ...}
    baseline: str = "optimized"  # "optimized" (static cache, our decode path) or "paper" (HF-style growing cache)
    status: str = "ok"
    error: str | None = None
    prefill_s: float | None = None
    decode_ms_per_token: float | None = None
    tokens_per_s: float | None = None
    decode_steps: int | None = None
    peak_prefill_bytes: int | None = None  # torch allocator peak during prefill
    peak_decode_bytes: int | None = None  # torch allocator peak during the timed decode steps
    nvml_used_bytes: int | None = None  # device memory in use seen by NVML (all allocations), when available
    memory_cap_bytes: int | None = None
    bandwidth_bytes_per_s: float | None = None  # measured device copy bandwidth (read + written)
    bytes_per_step: float | None = None  # bytes that must move per decoded token (weights + state + KV read)
    floor_ms: float | None = None  # bytes_per_step / bandwidth
    ratio_to_floor: float | None = None  # decode_ms_per_token / floor_ms
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class SpeedRow:
    """One Table-2-style run: a fixed image prompt, ``output_tokens`` forced new tokens, total = prefill + decode."""

    model: str
    kind: str
    device: str
    dtype: str
    path: dict[str, str]
    visual_tokens: int
    prompt_tokens: int
    output_tokens: int
    prefill_s: float
    decode_s: float
    total_s: float
    tokens_per_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def row_from_dict(cls, data: dict[str, Any]):
    """Build a row dataclass from a dict, naming missing or unknown keys in the error."""
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}")
    try:
        return cls(**data)
    except TypeError as exc:
        raise ValueError(f"{cls.__name__}: {exc}") from exc


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it is renamed over ``path`` (readable, 0644).

    A reader never sees a half-written file, and an interrupted write leaves the previous file intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def publish_dir(src: str | os.PathLike, dst: str | os.PathLike, last: str | None = None) -> bool:
    """Move the finished folder ``src`` (on the same file system, e.g. a temporary sibling) to ``dst``.

    When ``dst`` does not exist (or is an empty folder) it appears whole, in one rename: returns True. When it exists
    and holds files (another writer published it first, or an older copy), each file of ``src`` replaces its
    namesake in one atomic rename, ``last`` (e.g. a manifest) at the end, and ``src`` is removed: returns False.
    """
    src, dst = Path(src), Path(dst)
    os.chmod(src, 0o755)  # mkdtemp creates 0700; published folders are meant to be shared
    try:
        os.rename(src, dst)
        return True
    except OSError:
        if not dst.is_dir():
            raise
    names = sorted((p.name for p in src.iterdir()), key=lambda n: (n == last, n))
    for name in names:
        os.replace(src / name, dst / name)
    src.rmdir()
    return False


def write_json_atomic(path: str | os.PathLike, payload: Any, default=None) -> Path:
    """Write JSON to ``path`` atomically (see :func:`atomic_write`).

    default: a fallback serialiser for objects JSON does not know (after dataclasses and paths).
    """
    with atomic_write(path) as f:
        json.dump(payload, f, indent=2, sort_keys=False, default=_make_default(default))
        f.write("\n")
    return Path(path)


def _make_default(fallback):
    def default(obj: Any) -> Any:
        try:
            return _json_default(obj)
        except TypeError:
            if fallback is None:
                raise
            return fallback(obj)

    return default


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_rows(path: str | os.PathLike, schema: str, rows: list, meta: dict[str, Any] | None = None) -> Path:
    """Write ``{"schema": ..., "meta": ..., "rows": [...]}`` atomically."""
    return write_json_atomic(path, {"schema": schema, "meta": meta or {}, "rows": [asdict(r) for r in rows]})


def read_rows(path: str | os.PathLike, schema: str, cls) -> tuple[dict[str, Any], list]:
    """Read a file written by :func:`write_rows`, checking its schema; errors name the file and the row."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"result file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != schema:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected schema {schema!r}, found {got!r}")
    rows = []
    for i, raw in enumerate(data.get("rows", [])):
        try:
            rows.append(row_from_dict(cls, raw))
        except ValueError as exc:
            raise ValueError(f"{path}: row {i}: {exc}") from None
    return data.get("meta", {}), rows
