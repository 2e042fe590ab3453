"""Results: run directories and tidy tables."""

from fedtitan.results.store import (
    DiskFullError,
    RunWriter,
    atomic_write_text,
    atomic_writer,
    prepare_dir,
)

__all__ = ["DiskFullError", "RunWriter", "atomic_write_text", "atomic_writer", "prepare_dir"]
