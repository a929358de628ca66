"""What every process of a data-parallel evaluation runs: ``python -m mmmamba_bench.eval.launched PLAN.json``.

``mmmamba-bench eval --num-processes N`` (:func:`mmmamba_bench.eval.runner.run_eval`) makes its checks once, writes
the evaluation's :class:`~mmmamba_bench.eval.runner.EvalPlan` to a JSON file and starts this module N times through
``accelerate launch --multi_gpu --num_processes N -m mmmamba_bench.eval.launched PLAN.json``. Each process evaluates
its shard (:func:`~mmmamba_bench.eval.runner.evaluate`); rank 0 gathers the results and writes them.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys


def main(argv: list[str] | None = None) -> int:
    from mmmamba_bench.eval.runner import EvalPlan, evaluate
    from mmmamba_bench.process_group import leave

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m mmmamba_bench.eval.launched PLAN.json (written by mmmamba-bench eval "
              "--num-processes N)", file=sys.stderr)
        return 2
    rank_0 = os.environ.get("RANK", "0") == "0"  # the other ranks say only what goes wrong
    logging.basicConfig(level=logging.INFO if rank_0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    finished = False
    try:
        evaluate(EvalPlan.read(args[0]))
        finished = True
    finally:
        leave(wait_for_others=finished)  # before the interpreter ends: mmmamba_bench.process_group says why
    return 0


if __name__ == "__main__":
    faulthandler.enable()  # a rank that dies in C code (a signal) prints where it was
    raise SystemExit(main())
