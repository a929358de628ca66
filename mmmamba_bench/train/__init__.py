"""Training: the tiny HoVLE-architecture teacher and the paper's three-stage distillation (Sec. 4.1-4.4).

Entry points: :func:`mmmamba_bench.train.teacher.train_teacher` and :func:`mmmamba_bench.train.distill.distill`.
(No re-exports here: a package attribute named like a submodule is replaced by that submodule once it is
imported, which once turned ``distill`` into a module in the middle of the demo.)
"""
