"""Score regression between two evaluation runs: paired statistics over per-sample logs (``mmmamba-bench regress``)."""
