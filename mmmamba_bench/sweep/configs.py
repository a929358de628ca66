"""The configurations a sweep compares, and the paper's ablations (Tables 3-6) expanded for a teacher's depth.

A :class:`SweepConfig` is one student to build and measure: a layout (which global layers keep attention, see
:mod:`mmmamba_bench.layouts`), the seeding strategy, and the distillation stages to chain. What building it means
follows from those fields (:attr:`SweepConfig.build`):

- ``"teacher"``: the layout keeps every layer as attention: the student *is* the teacher (evaluated as it is; the
  paper's Table 5 compares with HoVLE itself there).
- ``"seeded"``: no stages: the seeded, undistilled student (``convert``; Table 3's "none").
- ``"distilled"``: seeded and distilled by :func:`mmmamba_bench.train.distill.distill` with ``stages``.

Presets (:func:`expand_preset`), for a teacher of ``L`` global layers (embedding-module layers first):

- ``paper-table3``: mmMamba-linear with the stage subsets none, S1, S2, S3, S1+S2, S1+S3, S2+S3, S1+S2+S3.
- ``paper-table4``: mmMamba-linear seeded ``scratch``, ``inherit`` (W_QKV inherited) and ``mimic`` (inherit + mimic).
- ``paper-table5``: K = 0, 1, 2, 4, 8 and all attention layers, each K capped at L and duplicates dropped (a 6-layer
  teacher gets 0, 1, 2, 4, 6); the K layers are placed head-interleaved (evenly spaced from layer 0, as
  mmMamba-hybrid's 8 of 32). K = L is the teacher itself (the paper's "32 (HoVLE)" row).
- ``paper-table6``: the same K placed head-stacked, tail-stacked, tail-interleaved and head-interleaved; K defaults to
  the paper's proportion, 8 of 32 layers (round(L / 4), at least 1).

Every preset configuration names the paper row it stands for (:class:`PaperRef`, a row of
``reports/paper/ablations.csv``), so the report can put the paper's numbers beside ours.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace

from mmmamba_bench.layouts import LayoutError, parse_layout

PRESETS = ("paper-table3", "paper-table4", "paper-table5", "paper-table6")
PLACEMENTS = ("head-stacked", "tail-stacked", "tail-interleaved", "head-interleaved")  # Table 6's order
TABLE5_K = (0, 1, 2, 4, 8)  # the paper's attention-layer counts below "all" (of 32)
TABLE3_STAGES: tuple[tuple[int, ...], ...] = ((), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3))
TABLE4_INITS = (("scratch", "scratch"), ("inherit", "inherit W_QKV"), ("mimic", "inherit W_QKV + mimic"))
ALL_STAGES = (1, 2, 3)


class SweepConfigError(ValueError):
    """A sweep that cannot be set up: an unknown preset, a bad or repeated layout, a K out of range."""


@dataclass(frozen=True)
class PaperRef:
    """A row of the paper's ablation tables (``reports/paper/ablations.csv``: table, setting)."""

    table: int
    setting: str


@dataclass(frozen=True)
class SweepConfig:
    """One configuration of a sweep. ``name`` is its folder name under ``OUT/configs/`` (one path component)."""

    name: str
    layout: str  # a layout string (mmmamba_bench.layouts), the recipe's ``layout`` when distilled
    block_types: tuple[str, ...]  # "mha" / "mamba2" per global layer: what ``layout`` parses to for this teacher
    init: str = "mimic"  # seeding strategy (paper Table 4)
    stages: tuple[int, ...] = ALL_STAGES  # distillation stages chained; () = seeded only
    paper: tuple[PaperRef, ...] = field(default=(), compare=False)  # the paper rows it stands for (may be several)

    @property
    def attention_layers(self) -> tuple[int, ...]:
        """Global indices of the layers that keep attention."""
        return tuple(i for i, t in enumerate(self.block_types) if t == "mha")

    @property
    def build(self) -> str:
        """``"teacher"`` (no Mamba-2 layer), ``"seeded"`` (no stages) or ``"distilled"``."""
        if "mamba2" not in self.block_types:
            return "teacher"
        return "distilled" if self.stages else "seeded"

    @property
    def allow_skip(self) -> bool:
        """Whether the stage chain skips a stage (Table 3's ablations; distill's ``allow_skip``)."""
        return bool(self.stages) and list(self.stages) != list(ALL_STAGES[:len(self.stages)])

    @property
    def stages_label(self) -> str:
        return "+".join(f"S{s}" for s in self.stages) if self.stages else "none"

    def identity(self) -> dict:
        """What determines the configuration's result (its paper reference is only a label)."""
        return {"name": self.name, "block_types": list(self.block_types), "init": self.init,
                "stages": list(self.stages)}

    def identity_sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.identity(), sort_keys=True).encode()).hexdigest()

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(build=self.build, attention_layers=list(self.attention_layers))
        return out


# ---- placements --------------------------------------------------------------------------------------------------

def placement(kind: str, k: int, num_layers: int) -> tuple[int, ...]:
    """Global indices of ``k`` attention layers among ``num_layers``, placed as ``kind`` (:data:`PLACEMENTS`).

    Interleaved placements space the layers evenly: head-interleaved at ``floor(i * L / k)`` (layer 0 first; for 8 of
    32 exactly ``head-interleaved:4``, mmMamba-hybrid), tail-interleaved its mirror image (``tail-interleaved:4``).
    """
    if kind not in PLACEMENTS:
        raise SweepConfigError(f"unknown placement {kind!r}; choose from {PLACEMENTS}")
    if not 0 <= k <= num_layers:
        raise SweepConfigError(f"{k} attention layers do not fit a teacher of {num_layers} layers")
    if kind == "head-stacked":
        return tuple(range(k))
    if kind == "tail-stacked":
        return tuple(range(num_layers - k, num_layers))
    head = tuple(i * num_layers // k for i in range(k))
    return head if kind == "head-interleaved" else tuple(sorted(num_layers - 1 - i for i in head))


def layout_string(positions: tuple[int, ...], num_layers: int, kind: str | None = None) -> str:
    """The shortest layout string for attention at ``positions``: ``linear``, ``transformer``, the placement's own
    grammar (``head-interleaved:4``, ``tail-stacked:2`` ...) when it says exactly that, else a comma list."""
    types = ["mha" if i in positions else "mamba2" for i in range(num_layers)]
    candidates = ["linear", "transformer"]
    k = len(positions)
    if kind is not None and k:
        candidates.append(f"{kind}:{k}" if kind.endswith("stacked") else f"{kind}:{num_layers // k}")
    for spec in candidates:
        try:
            if parse_layout(spec, num_layers) == types:
                return spec
        except LayoutError:
            continue
    return ",".join(types)


def _attention_config(name: str, positions: tuple[int, ...], num_layers: int, kind: str | None,
                      paper: tuple[PaperRef, ...]) -> SweepConfig:
    layout = layout_string(positions, num_layers, kind)
    return SweepConfig(name, layout, tuple(parse_layout(layout, num_layers)), paper=paper)


# ---- presets -----------------------------------------------------------------------------------------------------

def table5_counts(num_layers: int) -> list[int]:
    """0, 1, 2, 4, 8 and all attention layers, capped at ``num_layers``, duplicates dropped, in increasing order."""
    return sorted({min(k, num_layers) for k in TABLE5_K} | {num_layers})


def table6_count(num_layers: int) -> int:
    """The paper's proportion of attention layers for Table 6, 8 of 32: round(L / 4), at least 1."""
    return max(1, round(num_layers / 4))


def expand_preset(preset: str, num_layers: int, *, attention_layers: int | None = None,
                  base_layout: str | None = None) -> list[SweepConfig]:
    """The configurations of ``preset`` (:data:`PRESETS`) for a teacher of ``num_layers`` global layers.

    ``attention_layers``: Table 6's K (default :func:`table6_count`); ``base_layout``: the layout of Tables 3 and 4
    (default ``linear``, mmMamba-linear as in the paper; the paper's rows are matched only for that one).
    """
    if num_layers < 1:
        raise SweepConfigError(f"a teacher needs at least one layer, got {num_layers}")
    if attention_layers is not None and preset != "paper-table6":
        raise SweepConfigError(f"--attention-layers sets Table 6's K; {preset} does not take it")
    if base_layout is not None and preset not in ("paper-table3", "paper-table4"):
        raise SweepConfigError(f"{preset} chooses its own layouts; --layouts goes with paper-table3 / paper-table4 "
                               f"(their base layout) or without a preset")
    if preset == "paper-table5":
        out = []
        for k in table5_counts(num_layers):
            setting = "32 (HoVLE)" if k == num_layers else str(k)
            out.append(_attention_config(f"attn{k}", placement("head-interleaved", k, num_layers), num_layers,
                                         "head-interleaved", (PaperRef(5, setting),)))
        return out
    if preset == "paper-table6":
        k = table6_count(num_layers) if attention_layers is None else attention_layers
        if not 1 <= k < num_layers:
            raise SweepConfigError(f"--attention-layers {k}: Table 6 places between 1 and {num_layers - 1} "
                                   f"attention layers in a {num_layers}-layer teacher")
        by_layout: dict[tuple[int, ...], SweepConfig] = {}
        for kind in PLACEMENTS:  # K = 1 (or K = L - 1) makes some placements one layout: built once, both rows
            at = placement(kind, k, num_layers)
            if at in by_layout:
                first = by_layout[at]
                by_layout[at] = replace(first, paper=first.paper + (PaperRef(6, kind),))
            else:
                by_layout[at] = _attention_config(f"{kind}-{k}", at, num_layers, kind, (PaperRef(6, kind),))
        return list(by_layout.values())
    if preset in ("paper-table3", "paper-table4"):
        base_layout = base_layout or "linear"
        try:
            types = tuple(parse_layout(base_layout, num_layers))
        except LayoutError as exc:
            raise SweepConfigError(f"--layouts: {exc}") from None
        if "mamba2" not in types:
            raise SweepConfigError(f"{preset} distils Mamba-2 layers; layout {base_layout!r} has none")
        matched = base_layout == "linear"  # the paper's ablations are of mmMamba-linear
        if preset == "paper-table3":
            return [SweepConfig(f"stages-{_stages_name(s)}", base_layout, types, stages=s,
                                paper=(PaperRef(3, _stages_name(s)),) if matched else ()) for s in TABLE3_STAGES]
        return [SweepConfig(f"init-{init}", base_layout, types, init=init,
                            paper=(PaperRef(4, setting),) if matched else ()) for init, setting in TABLE4_INITS]
    raise SweepConfigError(f"unknown --preset {preset!r}; choose from {', '.join(PRESETS)}")


def _stages_name(stages: tuple[int, ...]) -> str:
    return "+".join(f"S{s}" for s in stages) if stages else "none"


# ---- user layouts ------------------------------------------------------------------------------------------------

def layout_name(layout: str, types: list[str]) -> str:
    """A folder name for a user layout: the layout string made path-safe (``head-interleaved:4`` ->
    ``head-interleaved-4``), or for a comma list the attention positions (``attn-at-0-3``)."""
    if "," in layout:
        at = [str(i) for i, t in enumerate(types) if t == "mha"]
        return "attn-at-" + "-".join(at) if at else "linear"
    return re.sub(r"[^A-Za-z0-9_.+-]", "-", layout.strip())


def configs_from_layouts(layouts: list[str], num_layers: int, *, init: str = "mimic",
                         stages: tuple[int, ...] = ALL_STAGES) -> list[SweepConfig]:
    """One configuration per layout string; a layout that parses to one already listed is an error."""
    if not layouts:
        raise SweepConfigError("--layouts: give at least one layout")
    out: list[SweepConfig] = []
    seen: dict[tuple[str, ...], str] = {}
    for layout in layouts:
        try:
            types = parse_layout(layout, num_layers)
        except LayoutError as exc:
            raise SweepConfigError(f"--layouts: {exc}") from None
        if tuple(types) in seen:
            raise SweepConfigError(f"--layouts: {layout!r} is the same layout as {seen[tuple(types)]!r}")
        seen[tuple(types)] = layout
        cfg = SweepConfig(layout_name(layout, types), layout.strip(), tuple(types), init=init, stages=stages,
                          paper=match_paper(tuple(types)))
        out.append(cfg)
    return out


def match_paper(types: tuple[str, ...]) -> tuple[PaperRef, ...]:
    """The paper rows a layout stands for, where it is one the presets would build: every layer Mamba-2 -> Table 5's
    "0"; all attention -> "32 (HoVLE)"; for a 32-layer teacher, Table 5's K placed head-interleaved and Table 6's
    placements of 8 (mmMamba-hybrid, head-interleaved 8 of 32, is a row of both)."""
    n, at = len(types), tuple(i for i, t in enumerate(types) if t == "mha")
    k = len(at)
    if k == 0:
        return (PaperRef(5, "0"),)
    if k == n:
        return (PaperRef(5, "32 (HoVLE)"),)
    if n != 32:
        return ()  # other depths: no paper row has this many attention layers of 32
    refs = []
    if k in TABLE5_K and placement("head-interleaved", k, n) == at:
        refs.append(PaperRef(5, str(k)))
    if k == 8:
        refs += [PaperRef(6, kind) for kind in PLACEMENTS if placement(kind, k, n) == at]
    return tuple(refs)


def check_names(configs: list[SweepConfig]) -> None:
    """Configuration names are unique folder names."""
    names = [c.name for c in configs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise SweepConfigError(f"configuration names repeat: {dup}")
    for n in names:
        if not n or n in (".", "..") or "/" in n or "\\" in n or not n.isprintable():
            raise SweepConfigError(f"configuration name {n!r} is not one folder name")
