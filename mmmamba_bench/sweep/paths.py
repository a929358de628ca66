"""Where a sweep keeps each configuration's outputs (``OUT/configs/<name>/``), read by the runner and the report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmmamba_bench.sweep.configs import SweepConfig


@dataclass
class ConfigPaths:
    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "config.json"

    @property
    def model(self) -> Path:
        return self.folder / "model"

    @property
    def eval(self) -> Path:
        return self.folder / "eval"

    @property
    def cost(self) -> Path:
        return self.folder / "cost.json"

    @property
    def profile(self) -> Path:
        return self.folder / "profile.json"

    @property
    def timings(self) -> Path:
        return self.folder / "timings.json"

    @property
    def done(self) -> Path:
        return self.folder / "done.json"


def config_paths(out: Path, cfg: SweepConfig) -> ConfigPaths:
    return ConfigPaths(Path(out) / "configs" / cfg.name)


def results_file(eval_folder: Path, label: str) -> Path | None:
    """The newest ``*_results.json`` of an evaluation (written last by ``run_eval``), or None."""
    found = sorted((eval_folder / label).glob("*_results.json"))
    return found[-1] if found else None


def read_done(paths: ConfigPaths) -> dict[str, Any] | None:
    return json.loads(paths.done.read_text()) if paths.done.is_file() else None
