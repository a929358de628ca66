"""Training: the tiny HoVLE-architecture teacher and the paper's three-stage distillation (Sec. 4.1-4.4)."""

from __future__ import annotations


def train_teacher(recipe, data_dir, out_dir, **kwargs):
    """See :func:`mmmamba_bench.train.teacher.train_teacher`."""
    from mmmamba_bench.train.teacher import train_teacher as _impl

    return _impl(recipe, data_dir, out_dir, **kwargs)


def distill(recipe, teacher_dir, out_dir, stages=(1, 2, 3), **kwargs):
    """See :func:`mmmamba_bench.train.distill.distill`."""
    from mmmamba_bench.train.distill import distill as _impl

    return _impl(recipe, teacher_dir, out_dir, stages=stages, **kwargs)


__all__ = ["train_teacher", "distill"]
