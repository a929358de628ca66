"""What a result was produced with: package versions, the project's version and git commit, the device, the threads.

Recorded beside every evaluation's scores (``eval/runner.py`` writes it into lmms-eval's results JSON), so that a
number can be traced to the code and environment that made it. Nothing here fails a run: what cannot be found
(git not installed, not a checkout, a package not installed) is left out or recorded as ``None``.
"""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

PROJECT = "mmmamba-bench"
# The distributions whose versions decide what an evaluation computes (and the ones most likely to drift).
PACKAGES: tuple[str, ...] = (
    "torch", "lmms-eval", "transformers", "tokenizers", "datasets", "pyarrow", "numpy", "safetensors", "accelerate",
    "filelock", "huggingface-hub", "pillow", "pandas", "scikit-learn", "scikit-image",
)


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """``{"python": "3.11.9", "torch": "2.13.0+cpu", ...}`` (None for a package that is not installed)."""
    return {"python": platform.python_version(), **{name: package_version(name) for name in names}}


def git_state(root: Path | None) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the git checkout ``root``; None when ``root`` is None, is not a git
    checkout, or git is not installed. Dirty means tracked files differ from the commit or untracked files that
    git does not ignore exist (``git status --porcelain``)."""
    if root is None or not (Path(root) / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                                timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True,
                                check=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):  # git missing, not a repository, too slow
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def project() -> dict[str, Any]:
    """This project's name, version and, when it runs from a source checkout, its git commit and dirty flag."""
    from mmmamba_bench import __version__
    from mmmamba_bench.assets import checkout_root

    out: dict[str, Any] = {"name": PROJECT, "version": __version__}
    git = git_state(checkout_root())
    if git is not None:
        out["git"] = git
    return out


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``) and its core count."""
    name = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    name = name or platform.processor() or platform.machine()
    return f"{name} ({os.cpu_count()} cores)"


def device_name(device) -> str:
    """A CUDA device's name, or ``"cpu (N cores)"`` (the profiler's rows and the report's captions use this)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({os.cpu_count()} cores)"


def threads() -> dict[str, Any]:
    """How the CPU work is threaded: torch's intra-op threads and the OpenMP wait policy in force."""
    import torch

    return {"torch_threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
