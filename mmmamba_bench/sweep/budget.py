"""The budget of an attention-placement search and the layouts it allows (``mmmamba-bench place --budget``).

A budget is one of:

- ``K`` (an integer): K attention layers; the proposal is the K layers of highest utility.
- ``<ms>ms`` (``0.35ms``): decode milliseconds per token at the search's context;
- a memory size (``6GiB``, ``512MiB``, ``8GB``): the decoder's memory at that context.

Under a cost budget the layers are taken greedily by utility per unit of added cost (a layer whose attention costs
nothing more first), each kept if the layout still fits, layers of no positive utility never; the cost of a set of
attention layers is the all-linear cost plus each layer's added cost (:class:`LayerCosts`): exact for the modelled
bandwidth floor (weights, states and KV cache add up layer by layer), an estimate for a measured cost, so the proposal's
own cost is measured again (:func:`mmmamba_bench.sweep.place.layout_cost`) and reported beside the budget.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mmmamba_bench.sweep.cost import GIB, CostRow

LAYERS, LATENCY, MEMORY = "layers", "latency", "memory"


class BudgetError(ValueError):
    """A budget that cannot be read or cannot be met (named with its flag)."""


@dataclass(frozen=True)
class Budget:
    kind: str  # LAYERS | LATENCY | MEMORY
    value: float  # K / ms per token / bytes
    text: str  # as given

    @property
    def label(self) -> str:
        if self.kind == LAYERS:
            return f"{int(self.value)} attention layer{'s' if self.value != 1 else ''}"
        if self.kind == LATENCY:
            return f"decode <= {self.value:g} ms/token"
        return f"memory <= {self.value / GIB:.3g} GiB"


def parse_budget(text: str) -> Budget:
    """``"2"`` -> 2 attention layers; ``"0.4ms"`` -> latency; ``"6GiB"`` / ``"512MiB"`` / ``"8GB"`` -> memory."""
    from mmmamba_bench.profiler.floor import parse_size

    t = text.strip()
    if re.fullmatch(r"[0-9]+", t):
        return Budget(LAYERS, int(t), text)
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*ms", t, flags=re.IGNORECASE)
    if m:
        return Budget(LATENCY, float(m.group(1)), text)
    if re.fullmatch(r"[0-9]*\.?[0-9]+\s*[a-zA-Z]+", t):
        try:
            return Budget(MEMORY, float(parse_size(t)), text)
        except ValueError:
            pass
    raise BudgetError(f"--budget {text!r}: expected a number of attention layers (2), a decode latency (0.4ms) or a "
                      f"memory size (6GiB, 512MiB, 8GB)")


def check_budget(budget: Budget, candidates: Sequence[int], num_layers: int) -> None:
    """A layer budget must be 1 .. the number of candidate layers (checked before any work)."""
    if budget.value <= 0:
        raise BudgetError(f"--budget {budget.text}: must be positive")
    if budget.kind == LAYERS and budget.value > len(candidates):
        where = (f"the teacher has {num_layers} layers" if len(candidates) == num_layers else
                 f"--layers names {len(candidates)} candidate layers")
        raise BudgetError(f"--budget {budget.text}: {int(budget.value)} attention layers, but {where}")


@dataclass(frozen=True)
class LayerCosts:
    """The all-linear student's cost at the search's context and each candidate layer's added cost as attention."""

    label: str  # e.g. "modelled (NVIDIA GeForce RTX 4090 24GB)"
    note: str
    context: int
    linear: CostRow
    single: Mapping[int, CostRow]  # layer -> the cost of the layout with only that layer as attention

    def value(self, row: CostRow, kind: str) -> float:
        v = row.decode_ms_per_token if kind == LATENCY else row.memory_bytes
        if v is None:
            raise BudgetError(f"the cost at {self.context} tokens has no {kind} ({row.status})")
        return float(v)

    def added(self, layer: int, kind: str) -> float:
        """What keeping ``layer`` as attention adds to the all-linear cost (``kind``: LATENCY | MEMORY)."""
        return self.value(self.single[layer], kind) - self.value(self.linear, kind)

    def estimate(self, layers: Sequence[int], kind: str) -> float:
        """The cost of attention at ``layers``: the all-linear cost plus each layer's added cost."""
        return self.value(self.linear, kind) + sum(self.added(i, kind) for i in layers)


def check_reachable(budget: Budget, costs: LayerCosts) -> None:
    """A cost budget the all-linear student already exceeds cannot be met by any layout (before the runs)."""
    if budget.kind == LAYERS:
        return
    base = costs.value(costs.linear, budget.kind)
    if base > budget.value:
        have = f"{base:.4g} ms/token" if budget.kind == LATENCY else f"{base / GIB:.4g} GiB"
        raise BudgetError(f"--budget {budget.text}: the all-linear student alone needs {have} at {costs.context} "
                          f"tokens ({costs.label}); no layout fits")


def select(budget: Budget, utility: Mapping[int, float], costs: LayerCosts | None) -> tuple[int, ...]:
    """The layers the budget keeps as attention for these utilities (see the module docstring), sorted."""
    if budget.kind == LAYERS:
        ranked = sorted(utility, key=lambda x: (-utility[x], x))
        return tuple(sorted(ranked[:int(budget.value)]))
    if costs is None:
        raise BudgetError(f"--budget {budget.text}: a cost budget needs the layers' costs")

    def per_cost(layer: int) -> float:
        extra = costs.added(layer, budget.kind)
        return math.inf if extra <= 0 else utility[layer] / extra

    chosen: list[int] = []
    for layer in sorted((x for x in utility if utility[x] > 0), key=lambda x: (-per_cost(x), -utility[x], x)):
        if costs.estimate([*chosen, layer], budget.kind) <= budget.value:
            chosen.append(layer)
    return tuple(sorted(chosen))
