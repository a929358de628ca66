"""Where the folders users read and edit live: ``tasks/``, ``models/``, ``distill/`` and ``reports/paper/``.

They sit at the top of the repository, beside the package, and an installed wheel carries copies of them as package
data (``mmmamba_bench/_assets/``, built by pyproject's ``force-include``). One resolver finds them, in this order:

1. ``$MMMAMBA_BENCH_HOME``: a folder with the repository's layout (``tasks/``, ``models/``, ``distill/``,
   ``reports/paper/``), e.g. your own edited copy of the task YAMLs and model cards. When set it must be complete;
2. the package data of an installed wheel (``importlib.resources``);
3. the source checkout the package is imported from (an editable install: ``pip install -e .``).

Nothing else is looked at. Generated data never goes into these folders in an installed wheel: the mini-suite's
default location is then a user cache (see :func:`default_mini_data_dir`).
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

HOME_ENV = "MMMAMBA_BENCH_HOME"
MINI_DATA_ENV = "MMMAMBA_BENCH_MINI_DATA"
PACKAGED = "_assets"  # the wheel's copy: mmmamba_bench/_assets/{tasks,models,distill,reports/paper}
# What a complete asset root holds (relative paths); checked so a wrong folder fails with a clear message.
REQUIRED = ("tasks/mini", "tasks/real", "models", "distill", "reports/paper")


class AssetsNotFound(FileNotFoundError):
    """The task YAMLs / model cards / recipes / paper numbers cannot be found; the message says where we looked."""


def _missing(root: Path) -> list[str]:
    return [rel for rel in REQUIRED if not (root / rel).is_dir()]


def _package_dir() -> Path:
    return Path(str(resources.files("mmmamba_bench")))


def checkout_root() -> Path | None:
    """The source checkout holding the imported package (editable install), recognised by its pyproject.toml."""
    root = _package_dir().parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "mmmamba-bench"' in pyproject.read_text(encoding="utf-8"):
        return root
    return None


def asset_root() -> Path:
    """The folder holding ``tasks/``, ``models/``, ``distill/`` and ``reports/paper/`` (see the module docstring)."""
    env = os.environ.get(HOME_ENV, "").strip()
    if env:
        root = Path(env).expanduser().resolve()
        missing = _missing(root)
        if missing:
            raise AssetsNotFound(f"${HOME_ENV}={env}: {root} lacks {', '.join(missing)} (it must have the "
                                 f"repository's layout: {', '.join(REQUIRED)})")
        return root
    packaged = _package_dir() / PACKAGED
    if packaged.is_dir():
        missing = _missing(packaged)
        if missing:
            raise AssetsNotFound(f"the installed package data {packaged} lacks {', '.join(missing)}: a broken "
                                 f"install; reinstall mmmamba-bench or set ${HOME_ENV}")
        return packaged
    checkout = checkout_root()
    if checkout is not None and not _missing(checkout):
        return checkout
    raise AssetsNotFound(f"no task YAMLs / model cards / recipes found: not in ${HOME_ENV} (unset), not in the "
                         f"package data ({packaged}), not in a source checkout beside {_package_dir()}; set "
                         f"${HOME_ENV} to a folder with the repository's layout")


def is_checkout() -> bool:
    """True when the assets are a source checkout's own folders (generated files may go next to them)."""
    checkout = checkout_root()
    return checkout is not None and asset_root() == checkout


def tasks_dir() -> Path:
    """lmms-eval task YAMLs: ``mini/`` (offline mini-suite) and ``real/`` (the paper's nine benchmarks)."""
    return asset_root() / "tasks"


def models_dir() -> Path:
    """Model cards (``*.yaml``) and the embedded demo teacher (``demo-teacher/``)."""
    return asset_root() / "models"


def recipes_dir() -> Path:
    """Training and distillation recipes (``distill/*.yaml``)."""
    return asset_root() / "distill"


def paper_dir() -> Path:
    """The paper's numbers as data (``reports/paper/``)."""
    return asset_root() / "reports" / "paper"


def default_mini_data_dir() -> Path:
    """Where the offline mini-suite is generated and read by default.

    ``$MMMAMBA_BENCH_MINI_DATA`` if set; else ``tasks/mini/data`` next to the task YAMLs in a source checkout (or in
    ``$MMMAMBA_BENCH_HOME``); else, for an installed wheel, ``$XDG_CACHE_HOME/mmmamba_bench/mini-suite`` (default
    ``~/.cache``), never inside site-packages.
    """
    env = os.environ.get(MINI_DATA_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    if os.environ.get(HOME_ENV, "").strip() or is_checkout():
        return tasks_dir() / "mini" / "data"
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "mmmamba_bench" / "mini-suite"
