"""Table-2 baselines (LLaVA-Phi, MobileVLM-3B, Cobra-3.5B, VisualRWKV-3B) with random weights of their published
shapes, built from library classes, and the Table-2 speed recipe run on them.

- :mod:`~mmmamba_bench.baselines.spec`: the shapes, read from the model cards (``models/<name>.yaml``).
- :mod:`~mmmamba_bench.baselines.projectors`: the small vision-to-language projectors, in ``torch.nn``.
- :mod:`~mmmamba_bench.baselines.build`: the model on a device (libraries imported lazily).
- :mod:`~mmmamba_bench.baselines.paths`: which kernels a library actually took (recorded in every row).
- :mod:`~mmmamba_bench.baselines.speed`: the release-style run and the best our tooling makes of it.

Importing this package imports nothing heavy.
"""
