"""Batch-1 decoding at the memory-bandwidth floor.

- :mod:`.torch_ops`: every fused decode op written plainly in PyTorch (the reference twins; the CPU path).
- :mod:`.triton_ops`: the same ops as fused Triton kernels (CUDA only; imported lazily, never at package import).
- :mod:`.decoder`: :class:`~.decoder.FastDecoder`, one decode step over the model's fixed-shape cache, built from
  those ops and captured once in a CUDA graph.
- :mod:`.prefill`: :class:`~.prefill.PrefillGraph`, a fixed-shape prompt's prefill captured once in a CUDA graph
  (reference twin: :func:`mmmamba_bench.generation.prefill`).
"""
