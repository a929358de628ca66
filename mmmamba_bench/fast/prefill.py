"""The prefill of a fixed-shape prompt captured once in a CUDA graph and replayed for every prompt of that shape.

A short prompt (the Table-2 recipe: 789 tokens) is launch-bound: the decoder layers issue a few hundred small
kernels (the SSD scan's Triton launches, norms, projections) whose launch cost exceeds their run time. This runs
the token and image embedding eagerly (it validates ids on the host), copies the embeddings into a static buffer
and replays one graph holding every decoder layer, the final norm and the last position's logits. The cache the
graph writes is ``cache`` itself (the same tensors the decode step reads), so decoding continues as after
:func:`mmmamba_bench.generation.prefill`, its reference twin (same kernels, so the same numbers; tested on the GPU).

Only batch 1 without padding, starting from an empty cache; one graph per prompt length.
"""

from __future__ import annotations

import torch


class PrefillGraph:
    def __init__(self, model, cache, warmup: int = 2):
        if model.device.type != "cuda":
            raise RuntimeError("PrefillGraph needs a CUDA device")
        if cache.batch_size != 1:
            raise ValueError("PrefillGraph prefills batch 1 only")
        self.model, self.cache, self.warmup = model, cache, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.length: int | None = None
        self.ids: torch.Tensor | None = None
        self.x: torch.Tensor | None = None
        self.logits: torch.Tensor | None = None
        self.captures = 0

    def _forward(self) -> torch.Tensor:
        self.cache.length = 0
        out = self.model(self.ids, inputs_embeds=self.x, cache=self.cache, last_logits_only=True)
        return out.logits[:, -1]

    @torch.no_grad()
    def _capture(self, input_ids: torch.Tensor, x: torch.Tensor) -> None:
        self.graph = None
        self.ids, self.x = input_ids.clone(), x.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # compile / autotune every kernel at this shape before capturing
            for _ in range(self.warmup):
                self._forward()
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.logits = self._forward()
        self.graph, self.length = graph, int(input_ids.shape[1])
        self.captures += 1

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None) -> torch.Tensor:
        """Prefill ``input_ids`` [1, L] (and its image tiles) into the empty cache; returns the logits [1, V]
        (a static buffer, overwritten by the next call)."""
        if input_ids.shape[0] != 1:
            raise ValueError("PrefillGraph prefills batch 1 only")
        if self.cache.length != 0:
            raise ValueError("PrefillGraph starts from an empty cache (call cache.reset() first)")
        L = int(input_ids.shape[1])
        x = self.model.embed(input_ids, pixel_values).to(self.model.dtype)
        if self.graph is None or L != self.length:
            self._capture(input_ids, x)
        assert self.graph is not None and self.x is not None and self.logits is not None
        self.x.copy_(x)
        self.graph.replay()
        self.cache.length = L  # the graph wrote the key mask; the filled length lives on the host
        return self.logits
