"""``mmmamba-bench sweep``: compare hybrid configurations (the paper's Tables 3-6 and any layouts) on quality and cost.

- :mod:`.configs`: what a configuration is (layout, init, stages) and the paper's ablations as presets.
- :mod:`.runner`: checks, then per configuration distil -> evaluate (per-sample logs) -> cost, resumable, with
  ``sweep.json`` recording settings, hashes and run times.
- :mod:`.cost`: decode ms/token and memory per context, measured by the profiler or modelled from the bandwidth floor.
- :mod:`.quality`: quality score and bootstrap intervals from lmms-eval's per-sample logs (``regress``'s statistics).
- :mod:`.verdicts`: the paper's orderings and whether the intervals support them.
- :mod:`.report`, :mod:`.plots`: ``report.md``, ``report.csv`` and the two Pareto plots.

``mmmamba-bench place``: where should a hybrid's attention layers go?

- :mod:`.place`: checks, the resumable search (``search.json``), the proposal, ``--evaluate``.
- :mod:`.utility`: one run per (layer, seed): a student keeping only that layer as attention, stage 3 alone, the
  held-out KL; paired seeding.
- :mod:`.ranking`: utilities with Student-t intervals over seeds, paired comparisons, the seed bootstrap.
- :mod:`.budget`: K layers / decode latency / memory budgets and the greedy selection.
- :mod:`.place_report`: ``place.json`` and ``place.md``; :mod:`.evaluate`: the proposal beside head-interleaved.

Importing this package is cheap: nothing heavy is imported until a function needs it.
"""
