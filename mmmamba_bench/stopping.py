"""Stop strings for batched generation, checked without decoding every row to text at every step.

:class:`StopStrings` is the ``stop`` callable of :func:`mmmamba_bench.generation.generate`: given the new tokens
of every row so far ([B, n]) it says which rows' text contains a stop string. It decodes only rows that have not
matched yet (a matched row stays matched: its text only grows), and the fast path calls it every few steps
instead of every step. The answer text is then cut at the first stop string (:func:`cut_at_stop`), which gives the
eager loop's cut text: the first occurrence lies in the part of the text both paths share.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def cut_at_stop(text: str, until: tuple[str, ...]) -> str:
    """Truncate ``text`` at the first occurrence of any stop string."""
    cut = len(text)
    for s in until:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


class StopStrings:
    """``stop(new_tokens [B, n]) -> [B] bool``: True where the decoded text contains one of ``until``."""

    def __init__(self, decode: Callable[[list[int]], str], until: tuple[str, ...]):
        self.decode = decode
        self.until = tuple(u for u in until if u)
        self.matched: torch.Tensor | None = None  # [B] bool on the host
        self.decoded_rows = 0  # rows decoded so far (for tests and logs)

    def __call__(self, new_tokens: torch.Tensor) -> torch.Tensor:
        rows = new_tokens.tolist()
        if self.matched is None or len(self.matched) != len(rows):
            self.matched = torch.zeros(len(rows), dtype=torch.bool)
        for b, row in enumerate(rows):
            if not self.matched[b] and self.until:
                text = self.decode(row)
                self.decoded_rows += 1
                self.matched[b] = any(u in text for u in self.until)
        return self.matched.to(new_tokens.device)
