"""The locked environments: compile them from pyproject.toml, install them exactly.

``python requirements/lock.py compile`` (what ``tox -e lock`` runs; needs the package index) writes:

- ``requirements/cpu.txt``: the CPU environment of CI, ``tox`` and ``tox -e demo`` (extras ``eval``, ``train`` and
  ``dev``), for CPython 3.11 on Linux x86_64, under ``cpu.in`` (CPU torch, known breakages) and
  ``cpu-overrides.txt`` (packages left out).
- ``requirements/gpu.txt``: a CUDA machine (extras ``eval``, ``gpu``, ``train`` and ``dev``), CPython 3.12 on Linux
  x86_64, under ``gpu.in`` (torch and torchvision of one release).
- ``requirements/build.txt``: the build backend (pyproject's ``[build-system]``) and what it needs, for tox's
  packaging environment, and what the one source-only package of the locks (deepspeed) builds with.

``python requirements/lock.py latest OUT`` resolves the CPU environment's newest allowed versions into OUT instead,
ignoring the lock: the drift check (``tox -e latest``).

``python requirements/lock.py install LOCK [--editable] [--python PY]`` installs a lock file exactly (``--no-deps``: the file is complete, so no
resolver runs and nothing newer or a CUDA build can slip in) into the environment of PY (default: the running interpreter), then, with ``--editable``, this
package in editable mode (built by the pinned backend of ``build.txt``); with uv, as tox does. Plain pip does the
same with ``pip install --no-deps -r requirements/cpu.txt`` (+ the PyTorch CPU index) and ``pip install --no-deps
-e .``.

Every pin comes from uv's resolver (``uv pip compile``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
PYPI = "https://pypi.org/simple"


def pip_find_links() -> list[str]:
    """The find-links folders pip is configured with ($PIP_FIND_LINKS, else the [global] / [install] find-links of
    the pip.conf files pip reads: site-wide, then the user's), so that uv finds what pip would."""
    import configparser
    import os

    env = os.environ.get("PIP_FIND_LINKS", "").split()
    if env:
        return env
    dirs = os.environ.get("XDG_CONFIG_DIRS", "/etc/xdg").split(os.pathsep)
    files = [Path(d) / "pip" / "pip.conf" for d in dirs] + [Path("/etc/pip.conf"),
             Path.home() / ".pip" / "pip.conf", Path.home() / ".config" / "pip" / "pip.conf"]
    if os.environ.get("PIP_CONFIG_FILE"):
        files.append(Path(os.environ["PIP_CONFIG_FILE"]))
    links: list[str] = []
    for file in files:
        parser = configparser.ConfigParser()
        try:
            parser.read(file)
        except (OSError, configparser.Error):
            continue
        for section in ("global", "install"):
            if parser.has_option(section, "find-links"):
                links = parser.get(section, "find-links").split()  # later files override earlier ones
    return links


def torch_cpu_source() -> list[str]:
    """Where uv finds the CPU build of torch: pip's configured find-links folders if any (a machine with local
    wheels), else PyTorch's CPU index next to PyPI."""
    links = [link for link in pip_find_links()
             if link.startswith(("http://", "https://")) or Path(link.removeprefix("file://")).exists()]
    if links:
        return [arg for link in links for arg in ("--find-links", link)]
    return ["--extra-index-url", PYTORCH_CPU_INDEX, "--index-strategy", "unsafe-best-match"]


def install(lock: Path, python: str, editable: bool) -> None:
    """Install ``lock`` exactly into the environment of ``python``; then this checkout, editable, if asked."""
    cpu_torch = any(line.startswith("torch==") and "+cpu" in line for line in lock.read_text().splitlines())
    sources = torch_cpu_source() if cpu_torch else []
    steps = [["uv", "pip", "install", "--python", python, "--no-deps", "--index-url", PYPI, *sources,
              "--build-constraint", str(HERE / "build.txt"), "-r", str(lock)]]
    if editable:
        steps.append(["uv", "pip", "install", "--python", python, "--no-deps", "--index-url", PYPI,
                      "--build-constraint", str(HERE / "build.txt"), "-e", str(ROOT)])
    for cmd in steps:
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)


def compile_lock(out: Path, *, extras: list[str], python: str, constraints: Path, overrides: Path | None,
                 sources: list[str]) -> None:
    cmd = ["uv", "pip", "compile", str(ROOT / "pyproject.toml"), "--quiet", "--no-config",
           "--python-version", python, "--python-platform", "x86_64-manylinux_2_28",
           "--index-url", PYPI, *sources, "-c", str(constraints), "-o", str(out),
           "--custom-compile-command", "tox -e lock", "--no-emit-package", "mmmamba-bench"]
    for extra in extras:
        cmd += ["--extra", extra]
    if overrides is not None:
        cmd += ["--override", str(overrides)]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def compile_build_lock(out: Path) -> None:
    import tomllib

    # editables: what hatchling asks for when building an editable wheel; setuptools and wheel: what the locks' one
    # source-only package (deepspeed, a setup.py project) is built with when installed
    requires = (tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
                + ["editables", "setuptools", "wheel"])
    spec = HERE / "build.in"
    spec.write_text("# generated by requirements/lock.py from pyproject.toml's [build-system] requires, plus what the "
                    "locks' source-only packages build with\n" + "\n".join(requires) + "\n")
    cmd = ["uv", "pip", "compile", str(spec), "--quiet", "--no-config", "--python-version", "3.11",
           "--python-platform", "x86_64-manylinux_2_28", "--index-url", PYPI, "-o", str(out),
           "--custom-compile-command", "tox -e lock"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("compile", help="refresh cpu.txt, gpu.txt and build.txt")
    latest = sub.add_parser("latest", help="the newest CPU resolution, ignoring the lock")
    latest.add_argument("out", type=Path)
    inst = sub.add_parser("install", help="install a lock file exactly (and this package, editable, with --editable)")
    inst.add_argument("lock", type=Path)
    inst.add_argument("--python", default=sys.executable, help="the environment's interpreter (default: this one)")
    inst.add_argument("--editable", action="store_true", help="then install this checkout in editable mode")
    args = parser.parse_args(argv)
    if args.command == "install":
        install(args.lock, args.python, args.editable)
        return 0
    cpu = dict(extras=["eval", "train", "dev"], python="3.11", constraints=HERE / "cpu.in",
               overrides=HERE / "cpu-overrides.txt", sources=torch_cpu_source())
    if args.command == "latest":
        compile_lock(args.out, **cpu)
        return 0
    compile_lock(HERE / "cpu.txt", **cpu)
    compile_lock(HERE / "gpu.txt", extras=["eval", "gpu", "train", "dev"], python="3.12",
                 constraints=HERE / "gpu.in", overrides=None, sources=[])
    compile_build_lock(HERE / "build.txt")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
