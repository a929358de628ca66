"""Fail fast: before any training or inference, check that what the later steps import and read works.

``mmmamba-bench demo`` and ``mmmamba-bench eval`` (:func:`mmmamba_bench.eval.runner.run_eval`) run these checks
first, so a broken environment stops at once with a message that names the package, its installed version and the
version the lock pins, instead of after half an hour of distillation. The failure that taught this (2026-12-01):
filelock 4.3.1 has no ``filelock._api``, which lmms-eval 0.7.3 imports inside ``simple_evaluate`` (when it is
called, not when its module is imported), so importing the evaluator was not enough of a check.

- :func:`check` imports modules (:func:`import_problems`) and explains a failure: which package needed the import,
  which package's module failed, its installed version, the lock's pin; then reads checkpoints.
- :func:`lmms_eval_call_time_imports` reads the imports lmms-eval's evaluator makes inside its functions from its
  installed source (so another lmms-eval version is followed, not a list copied here).
- :func:`check_checkpoint` reads a checkpoint's config, every weight file's header and its tokenizer, and compares
  tensor names and shapes with what the config builds, without reading the weights.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable

from mmmamba_bench.provenance import package_version

LOCK_FILES = {"cpu": "requirements/cpu.txt", "gpu": "requirements/gpu.txt"}


class PreflightError(RuntimeError):
    """Something a later step needs does not work; the message lists every problem found."""

    def __init__(self, problems: list[str], hint: str | None = None):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"cannot start: {len(problems)} problem(s) found before any work:\n{lines}"
                         + (f"\n{hint}" if hint else ""))


@dataclass(frozen=True)
class Need:
    """One import a later step makes: ``import module`` (or ``from module import names``), needed by ``owner``."""

    module: str
    owner: str  # the distribution whose code makes this import, e.g. "lmms-eval"
    names: tuple[str, ...] = ()  # for ``from module import a, b``: each is an attribute or a submodule

    def statement(self) -> str:
        return f"from {self.module} import {', '.join(self.names)}" if self.names else f"import {self.module}"


# What an evaluation imports when it runs (beyond lmms-eval's call-time imports, which are read from its source).
EVALUATION: tuple[Need, ...] = (
    Need("lmms_eval.evaluator", "lmms-eval"),
    Need("lmms_eval.tasks", "lmms-eval", ("TaskManager", "get_task_dict")),
    Need("lmms_eval.api.model", "lmms-eval", ("lmms",)),
    Need("lmms_eval.api.instance", "lmms-eval", ("GenerationResult",)),
    Need("datasets", "datasets"),
    Need("pyarrow.parquet", "pyarrow"),
    Need("tokenizers", "tokenizers"),
    Need("transformers", "transformers"),
)
# The mini-suite generator (mmmamba_bench.data.sources) reads images shipped inside these packages.
DATA_GENERATION: tuple[Need, ...] = (
    Need("sklearn.datasets", "scikit-learn", ("load_digits", "load_sample_image")),
    Need("skimage.data", "scikit-image"),
    Need("pyarrow.parquet", "pyarrow"),
)
# The report's tables and plots (mmmamba_bench.report).
REPORT: tuple[Need, ...] = (
    Need("pandas", "pandas"),
    Need("matplotlib.figure", "matplotlib", ("Figure",)),
    Need("matplotlib.backends.backend_agg", "matplotlib", ("FigureCanvasAgg",)),
)


# ---- imports -------------------------------------------------------------------------------------------------------

def _catches_import_errors(handler: ast.ExceptHandler) -> bool:
    if handler.type is None:
        return True
    names = [handler.type] if not isinstance(handler.type, ast.Tuple) else list(handler.type.elts)
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError", "Exception",
                                                     "BaseException") for n in names)


def call_time_imports(source: str, owner: str) -> list[Need]:
    """The imports made inside the functions of a module's ``source`` (``def`` bodies at any depth), in file order,
    except those guarded by a ``try`` that catches ImportError (optional extras)."""
    found: list[Need] = []

    def visit(node: ast.AST, in_function: bool, guarded: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function = True
        if isinstance(node, ast.Try):
            body_guarded = guarded or any(_catches_import_errors(h) for h in node.handlers)
            for child in node.body:
                visit(child, in_function, body_guarded)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, in_function, guarded)
            return
        if in_function and not guarded:
            if isinstance(node, ast.Import):
                found.extend(Need(alias.name, owner) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.append(Need(node.module, owner, tuple(alias.name for alias in node.names)))
        for child in ast.iter_child_nodes(node):
            visit(child, in_function, guarded)

    visit(ast.parse(source), False, False)
    return list(dict.fromkeys(found))  # first occurrence of each, in order


def lmms_eval_call_time_imports() -> list[Need]:
    """What lmms-eval's evaluator imports inside its functions (``simple_evaluate`` and what it calls), read from
    the installed source; empty when lmms-eval is not installed (importing the evaluator then fails clearly)."""
    try:
        spec = importlib.util.find_spec("lmms_eval.evaluator")
    except ImportError:
        return []
    if spec is None or spec.origin is None or not Path(spec.origin).is_file():
        return []
    return call_time_imports(Path(spec.origin).read_text(encoding="utf-8"), "lmms-eval")


@lru_cache(maxsize=1)
def _module_owners() -> dict[str, list[str]]:
    from importlib import metadata

    return metadata.packages_distributions()


def distribution_of(module: str) -> str | None:
    """The installed distribution providing top-level module ``module.split('.')[0]`` (None if unknown)."""
    top = module.split(".")[0]
    owners = _module_owners().get(top)
    return owners[0] if owners else None


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_file() -> Path | None:
    """The lock this environment is meant to match (``requirements/cpu.txt``, or ``gpu.txt`` under CUDA torch),
    when running from a source checkout."""
    from mmmamba_bench.assets import checkout_root

    root = checkout_root()
    if root is None:
        return None
    torch_version = package_version("torch") or ""
    kind = "gpu" if torch_version and "+cpu" not in torch_version and (root / LOCK_FILES["gpu"]).is_file() else "cpu"
    path = root / LOCK_FILES[kind]
    return path if path.is_file() else None


def locked_version(distribution: str, lock: Path | None) -> str | None:
    """The version ``lock`` pins for ``distribution`` (``name==version`` lines), if any."""
    if lock is None:
        return None
    want = _normalise(distribution)
    for line in lock.read_text(encoding="utf-8").splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([^\s;\\]+)", line)
        if m and _normalise(m.group(1)) == want:
            return m.group(3)
    return None


def _failing_module(exc: BaseException, need: Need) -> str:
    """The module whose import failed: the missing one for ImportError, else the innermost non-importlib frame."""
    if isinstance(exc, ImportError) and exc.name:
        return exc.name
    module = need.module
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_globals.get("__name__", "")
        if name and not name.startswith(("importlib", "_frozen_importlib", __name__)):
            module = name
        tb = tb.tb_next
    return module


def explain_import_failure(need: Need, exc: BaseException, lock: Path | None = None) -> str:
    """One line: who cannot run, which import failed and why, and the versions involved, e.g.
    ``lmms-eval 0.7.3 cannot run: `import filelock._api` failed (ModuleNotFoundError: No module named
    'filelock._api'; filelock 4.3.1 installed; requirements/cpu.txt pins 3.32.7)``."""
    owner_version = package_version(need.owner)
    who = f"{need.owner} {owner_version}" if owner_version else f"{need.owner} (not installed)"
    details = [f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")]
    culprit = distribution_of(_failing_module(exc, need))
    if culprit is None and isinstance(exc, ImportError) and exc.name:
        culprit = exc.name.split(".")[0]  # a module no installed distribution provides
    if culprit is not None:
        installed = package_version(culprit)
        details.append(f"{culprit} {installed} installed" if installed else f"{culprit} is not installed")
        pin = locked_version(culprit, lock)
        if pin is not None and pin != installed:
            details.append(f"{lock.parent.name}/{lock.name} pins {pin}")  # type: ignore[union-attr]
    return f"{who} cannot run: `{need.statement()}` failed ({'; '.join(details)})"


def _try_import(need: Need) -> None:
    module = importlib.import_module(need.module)
    for name in need.names:
        if not hasattr(module, name):
            importlib.import_module(f"{need.module}.{name}")  # a submodule, or ModuleNotFoundError naming it


def import_problems(needs: Iterable[Need]) -> list[str]:
    """Import the needs in order (each once); one explanation per package that cannot run: after a failure, the
    same owner's later needs are skipped (they would fail the same way, and each costs import time)."""
    lock = lock_file()
    problems = []
    failed: set[str] = set()
    for need in dict.fromkeys(needs):
        if need.owner in failed:
            continue
        try:
            _try_import(need)
        except Exception as exc:  # noqa: BLE001 - any import-time error (e.g. torchvision's RuntimeError) counts
            problems.append(explain_import_failure(need, exc, lock))
            failed.add(need.owner)
    return problems


def _install_hint() -> str | None:
    lock = lock_file()
    if lock is None:
        return None
    return (f"The locked environment installs with `python requirements/lock.py install {lock.parent.name}/"
            f"{lock.name} --editable` (or `tox`, which does).")


def evaluation_needs() -> list[Need]:
    """Everything an lmms-eval run imports: lmms-eval's call-time imports first (cheap, and where 2026-12-01's
    break was), then the evaluator and the libraries the tasks and the adapter use."""
    return [*lmms_eval_call_time_imports(), *EVALUATION]


# ---- checkpoints ---------------------------------------------------------------------------------------------------

def checkpoint_problems(path: Path) -> list[str]:
    """What stops ``load_model(path)`` or its tokenizer, found from config.json, the safetensors headers (names,
    shapes, file sizes) and the tokenizer files; the weights themselves are not read."""
    from safetensors import SafetensorError, safe_open

    from mmmamba_bench.checkpoint import CheckpointError, _weight_files
    from mmmamba_bench.tokenizer import load_tokenizer

    path = Path(path)
    if not path.is_dir():
        return [f"checkpoint directory not found: {path}"]
    try:
        expected = _expected_shapes(path)
        found: dict[str, tuple[int, ...]] = {}
        for file in _weight_files(path):
            try:
                with safe_open(str(file), framework="pt") as f:
                    found.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"{file}: cannot read safetensors file (truncated or corrupt?): {exc}") from None
    except (CheckpointError, FileNotFoundError, ValueError, KeyError) as exc:
        return [f"checkpoint {path}: {exc}"]
    problems = []
    missing = sorted(set(expected) - set(found))
    if missing:
        problems.append(f"checkpoint {path}: missing tensor(s) for its config.json: {', '.join(missing[:8])}"
                        + (f" ... ({len(missing)} in all)" if len(missing) > 8 else ""))
    problems += [f"checkpoint {path}: tensor {name!r} has shape {found[name]}, expected {shape} from config.json"
                 for name, shape in expected.items() if name in found and found[name] != shape][:8]
    try:
        load_tokenizer(path)
    except Exception as exc:  # noqa: BLE001 - tokenizer libraries raise many types
        problems.append(f"checkpoint {path}: the tokenizer does not load ({type(exc).__name__}: {exc})")
    return problems


def _expected_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    import torch

    from mmmamba_bench.config import ChatConfig
    from mmmamba_bench.model.stack import MMMambaChatModel

    config = ChatConfig.from_json_file(path / "config.json")
    with torch.device("meta"):
        model = MMMambaChatModel(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check(needs: Iterable[Need] = (), checkpoints: Iterable[Path] = ()) -> None:
    """Imports first, then checkpoints; raise one :class:`PreflightError` listing every problem."""
    problems = import_problems(needs)
    if problems:  # checkpoints need torch and the model code, which may be what is broken
        raise PreflightError(problems, _install_hint())
    for path in checkpoints:
        problems += checkpoint_problems(path)
    if problems:
        raise PreflightError(problems)
