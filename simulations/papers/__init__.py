"""The papers' experiments (Titan, KDD'25; dataset pruning for edge learning): recipes on top of
the library and the launcher, kept apart from both (``python -m simulations.papers.table1``, ...)."""
