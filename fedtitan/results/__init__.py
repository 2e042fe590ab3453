"""Results: run directories and tidy tables."""

from fedtitan.results.store import RunWriter, atomic_write_text, prepare_dir

__all__ = ["RunWriter", "atomic_write_text", "prepare_dir"]
