"""Model cards (``models/*.yaml``): which checkpoint a name stands for, its layout and its paper row.

Cards live in ``models/`` (found by :mod:`mmmamba_bench.assets`: a checkout's folder, the installed package data, or
``$MMMAMBA_BENCH_HOME``). A card's ``path`` may use environment variables (``${MMMAMBA_BENCH_WEIGHTS}/mmMamba-linear``)
or be relative to that asset root (``models/demo-teacher``, the checkpoint shipped with the package); ``resolve_model``
accepts either a checkpoint directory or a card name and always returns an existing directory, or says clearly
which directory or card is missing. A card name is one plain file name in ``models/``: ``../../x`` is refused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from mmmamba_bench.assets import asset_root, models_dir

WEIGHTS_ENV = "MMMAMBA_BENCH_WEIGHTS"


@dataclass(frozen=True)
class ModelCard:
    name: str
    checkpoint: str  # where the real weights come from (a Hugging Face id), for the reader
    path: str  # local directory (env vars allowed)
    layout: str  # "transformer", "linear", "hybrid", ... (see layouts.py)
    paper_row: str | None  # the Table-1 / Table-2 row this model stands for
    notes: str = ""

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
    return ModelCard(name=data["name"], checkpoint=data["checkpoint"], path=data["path"], layout=data["layout"],
                     paper_row=data.get("paper_row"), notes=data.get("notes", ""))


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
