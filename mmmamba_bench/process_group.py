"""Leaving a ``torch.distributed`` process group before the interpreter ends.

A process started by ``accelerate launch`` (or torchrun) that exits with its group still open can die at exit: Gloo's
worker threads may still hold finished work whose tensors the interpreter's finalisation frees without the GIL, and
the process aborts (SIGABRT) after its work is done. The launcher then stops the other ranks, rank 0's results
half-written (seen once in CI: ``mmmamba-bench eval --num-processes 2``, rank 1 SIGABRT two seconds in; torch pull
request 179291 describes the crash). Every entry point a launcher starts therefore ends with :func:`leave`.
"""

from __future__ import annotations

import sys


def leave(*, wait_for_others: bool) -> bool:
    """Destroy the default process group if this process joined one; True when it did.

    ``wait_for_others``: a barrier first, so no rank exits while another still works (rank 0 writing the results);
    pass False after a failure, where the other ranks may never arrive. Never imports torch itself: a process that
    did not load ``torch.distributed`` has no group.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return False
    try:
        if wait_for_others:
            dist.barrier()
    finally:
        dist.destroy_process_group()
    return True
