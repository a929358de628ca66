"""Evaluation glue: metric math (``metrics``), task discovery and preflight checks (``tasks``).

Kept free of imports so that ``import mmmamba_bench.eval.metrics`` never pulls in lmms-eval or torch.
"""
