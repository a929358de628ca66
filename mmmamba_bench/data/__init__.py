"""Data: the offline mini-suite generator (``minisuite``) and the local copies of the real benchmarks (``real``)."""
