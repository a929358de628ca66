"""Layer layouts: which of the global layers (embedding-module layers first, then the LM's) keep attention.

Grammar (``mmmamba-bench convert --layout``):

- ``linear``: every layer Mamba-2 (mmMamba-linear).
- ``transformer``: every layer attention (the teacher itself).
- ``hybrid``: ``head-interleaved:4`` (mmMamba-hybrid: attention at global layers 0, 4, ..., 28 of 32).
- ``head-interleaved:N``: attention at global layer i when ``i % N == 0``.
- ``tail-interleaved:N``: attention when ``i % N == N - 1``.
- ``head-stacked:K`` / ``tail-stacked:K``: attention in the first / last K layers.
- an explicit comma list of ``mha`` / ``mamba2`` with one entry per layer.
"""

from __future__ import annotations


class LayoutError(ValueError):
    """An unknown or inconsistent layout string."""


def parse_layout(spec: str, num_layers: int) -> list[str]:
    """Return ``num_layers`` entries of ``"mha"`` / ``"mamba2"`` for the layout string ``spec``."""
    if num_layers <= 0:
        raise LayoutError(f"num_layers must be positive, got {num_layers}")
    text = spec.strip()
    if "," in text or text in ("mha", "mamba2"):
        items = [t.strip() for t in text.split(",")]
        bad = sorted({t for t in items if t not in ("mha", "mamba2")})
        if bad:
            raise LayoutError(f"layout {spec!r}: unknown layer type(s) {bad}; use 'mha' or 'mamba2'")
        if len(items) != num_layers:
            raise LayoutError(f"layout {spec!r} lists {len(items)} layers but the model has {num_layers}")
        return items
    if text == "linear":
        return ["mamba2"] * num_layers
    if text == "transformer":
        return ["mha"] * num_layers
    if text == "hybrid":
        text = "head-interleaved:4"
    name, sep, arg = text.partition(":")
    rules = {
        "head-interleaved": lambda i, n: i % n == 0,
        "tail-interleaved": lambda i, n: i % n == n - 1,
        "head-stacked": lambda i, k: i < k,
        "tail-stacked": lambda i, k: i >= num_layers - k,
    }
    if name not in rules or not sep:
        raise LayoutError(f"unknown layout {spec!r}; expected linear, transformer, hybrid, head-interleaved:N, "
                          f"tail-interleaved:N, head-stacked:K, tail-stacked:K or a comma list of mha/mamba2")
    try:
        n = int(arg)
    except ValueError:
        raise LayoutError(f"layout {spec!r}: {arg!r} is not an integer") from None
    if n <= 0 or ("stacked" in name and n > num_layers):
        raise LayoutError(f"layout {spec!r}: {n} is out of range for {num_layers} layers")
    keep = rules[name]
    return ["mha" if keep(i, n) else "mamba2" for i in range(num_layers)]
