"""Model cards (``models/*.yaml``): which checkpoint a name stands for, its layout and its paper row.

Cards live in ``models/`` (found by :mod:`mmmamba_bench.assets`: a checkout's folder, the installed package data, or
``$MMMAMBA_BENCH_HOME``). A card's ``path`` may use environment variables (``${MMMAMBA_BENCH_WEIGHTS}/mmMamba-linear``)
or be relative to that asset root (``models/demo-teacher``, the checkpoint shipped with the package); ``resolve_model``
accepts either a checkpoint directory or a card name and always returns an existing directory, or says clearly
which directory or card is missing. A card name is one plain file name in ``models/``: ``../../x`` is refused.

Baseline cards (the paper's Table-1 / Table-2 rows we do not distil) add ``lmms_eval`` (the lmms-eval model that
evaluates the release, or why none does: :class:`LmmsEvalModel`) and, for the Table-2 baselines, ``architecture``
(the published shapes, read by :mod:`mmmamba_bench.baselines.spec`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmmamba_bench.assets import asset_root, models_dir

WEIGHTS_ENV = "MMMAMBA_BENCH_WEIGHTS"


@dataclass(frozen=True)
class LmmsEvalModel:
    """How lmms-eval evaluates a baseline's release: a built-in model name and its ``model_args`` (``pretrained``
    is the card's local path unless given), or ``model=None`` with the reason in ``note``."""

    model: str | None  # an lmms-eval model id (e.g. "llava_hf"); None: no lmms-eval adapter
    model_args: Mapping[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class ModelCard:
    name: str
    checkpoint: str  # where the real weights come from (a Hugging Face id), for the reader
    path: str  # local directory (env vars allowed)
    layout: str  # "transformer", "linear", "hybrid", ... (see layouts.py)
    paper_row: str | None  # the Table-1 / Table-2 row this model stands for
    notes: str = ""
    table2_row: str | None = None  # the Table-2 row, where its name differs from paper_row ("Cobra-3.5B")
    lmms_eval: LmmsEvalModel | None = None  # baselines: the lmms-eval model; None: our own adapter
    architecture: Mapping[str, Any] | None = None  # Table-2 baselines: shapes (see baselines/spec.py)
    source: Path | None = None  # the YAML file

    @property
    def speed_row(self) -> str | None:
        """The paper's Table-2 row this card stands for."""
        return self.table2_row or self.paper_row

    def local_path(self) -> Path:
        expanded = os.path.expandvars(self.path)
        if "$" in expanded:
            raise FileNotFoundError(f"model card {self.name!r}: path {self.path!r} uses an unset environment variable "
                                    f"(set {WEIGHTS_ENV} to the folder holding the downloaded checkpoints)")
        path = Path(expanded).expanduser()
        return path if path.is_absolute() else asset_root() / path


def cards_dir() -> Path:
    """The ``models/`` folder (see :mod:`mmmamba_bench.assets`)."""
    return models_dir()


# A card name is one file name in models/ (without ".yaml"): letters, digits, '.', '_' and '-', not led by '.'.
_CARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


def card_file(name: str) -> Path:
    """``models/<name>.yaml``; a name that is not one plain file name (``../../x``, ``a/b``, ``.hidden``) is refused
    with a :class:`ValueError`, so a card name can never reach a file outside ``models/``."""
    if not isinstance(name, str) or not _CARD_NAME.fullmatch(name):
        raise ValueError(f"model card name {name!r}: must be one file name in {cards_dir()} (letters, digits, "
                         f"'.', '_', '-'; no '/', '\\' or leading '.'); give a checkpoint directory as a path instead")
    return cards_dir() / f"{name}.yaml"


def load_card(name_or_file: str | Path) -> ModelCard:
    """A card by name (``models/<name>.yaml``, see :func:`card_file`) or by the path of its YAML file."""
    path = Path(name_or_file)
    if not path.suffix:
        path = card_file(str(name_or_file))
    if not path.is_file():
        raise FileNotFoundError(f"model card not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in ("name", "checkpoint", "path", "layout") if k not in data]
    if missing:
        raise ValueError(f"{path}: model card lacks field(s) {missing}")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ValueError(f"{path}: unknown model card field(s) {unknown}; known: {sorted(_FIELDS)}")
    architecture = data.get("architecture")
    if architecture is not None and not isinstance(architecture, dict):
        raise ValueError(f"{path}: 'architecture' must be a mapping")
    return ModelCard(name=data["name"], checkpoint=data["checkpoint"], path=data["path"], layout=data["layout"],
                     paper_row=data.get("paper_row"), notes=data.get("notes", ""), table2_row=data.get("table2_row"),
                     lmms_eval=_lmms_eval(data.get("lmms_eval"), path), architecture=architecture, source=path)


_FIELDS = {"name", "checkpoint", "path", "layout", "paper_row", "notes", "table2_row", "lmms_eval", "architecture"}


def _lmms_eval(raw: Any, path: Path) -> LmmsEvalModel | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "model" not in raw or set(raw) - {"model", "model_args", "note"}:
        raise ValueError(f"{path}: 'lmms_eval' must be a mapping with 'model' (an lmms-eval model id, or null for "
                         f"none), optional 'model_args' (a mapping) and 'note'; got {raw!r}")
    args = raw.get("model_args") or {}
    if not isinstance(args, dict):
        raise ValueError(f"{path}: lmms_eval.model_args must be a mapping, got {args!r}")
    if raw["model"] is None and not raw.get("note"):
        raise ValueError(f"{path}: lmms_eval.model is null: say why in lmms_eval.note")
    return LmmsEvalModel(model=raw["model"], model_args={str(k): str(v) for k, v in args.items()},
                         note=str(raw.get("note", "")))


def find_card(name: str) -> ModelCard | None:
    """The card named ``name`` when ``models/<name>.yaml`` exists; None for anything else (a path, a preset name
    without a card). A card that exists but does not parse is an error."""
    if not isinstance(name, str) or not _CARD_NAME.fullmatch(name):
        return None
    path = cards_dir() / f"{name}.yaml"
    return load_card(path) if path.is_file() else None


def list_cards() -> list[ModelCard]:
    return [load_card(p) for p in sorted(cards_dir().glob("*.yaml"))]


def resolve_model(spec: str | Path) -> Path:
    """A checkpoint directory for ``spec``: an existing directory, or the path of the model card so named."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    try:
        card = card_file(str(spec))  # a name that would climb out of models/ (../../x) is refused here
    except ValueError as exc:
        raise FileNotFoundError(f"{spec}: not a checkpoint directory, nor a model card name ({exc})") from None
    if card.is_file():
        local = load_card(card).local_path()
        if not local.is_dir():
            raise FileNotFoundError(f"model card {spec!r} points at {local}, which does not exist")
        return local
    raise FileNotFoundError(f"{spec}: neither a checkpoint directory nor a model card in {cards_dir()}")
