"""Numerical kernels: each fast path sits beside a plain-PyTorch reference twin (see ssd.py, backends.py)."""
