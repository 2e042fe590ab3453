"""Writing files the way results need: atomically, with the usual mode under the umask, and
with a full disk reported as one line; and finding a table that an archive keeps gzipped."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from fedtitan.errors import FedtitanError


class DiskFullError(FedtitanError):
    """The disk filled up while writing results; what is finished is still on disk."""


_MODE: int | None = None


def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file under this process's umask
    (0644 under umask 022): results are meant to be shared."""
    global _MODE
    if _MODE is None:
        mask = os.umask(0o022)
        os.umask(mask)
        _MODE = 0o666 & ~mask
    return _MODE


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str], fsync: bool = False) -> Iterator[IO[bytes]]:
    """A binary file handle whose content replaces ``path`` only once complete (temp file in
    the same folder + rename: readers never see half a file). The file gets the usual mode
    under the umask; a full disk becomes :class:`DiskFullError` and leaves ``path`` as it was.
    ``fsync``: the content reaches the disk before the rename (a power cut cannot leave an
    empty file under the final name)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise DiskFullError(f"the disk is full: could not write {path}") from None
        raise


def append_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Append ``data`` to ``path`` in one ``write`` (a killed process leaves all of it or none;
    only a full disk or a power cut can leave part). A full disk is :class:`DiskFullError`."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
    try:
        with _full_disk_as_error(path):
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Make the content of the file at ``path`` durable (a file removed or replaced meanwhile
    has nothing left to keep). A full disk is :class:`DiskFullError`."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        with _full_disk_as_error(path):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _full_disk_as_error(path: str | os.PathLike[str]) -> Iterator[None]:
    """A full disk inside the block becomes one :class:`DiskFullError` line naming ``path``."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise DiskFullError(f"the disk is full: could not write {path}") from None
        raise


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the renames inside folder ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def table_path(folder: str | os.PathLike[str], name: str) -> Path:
    """``folder/name`` (e.g. ``clients.csv``), or ``folder/name.gz`` where only that exists:
    the archived run folders under docs/results keep their large tables gzipped, live runs
    write them plain, and pandas reads either (``read_csv`` infers gzip from the suffix).
    The plain path where neither exists, so ``.exists()`` and error messages name it."""
    plain = Path(folder) / name
    if plain.exists():
        return plain
    packed = plain.with_name(plain.name + ".gz")
    return packed if packed.exists() else plain


def find_tables(root: str | os.PathLike[str], name: str) -> list[Path]:
    """Every ``name`` under ``root`` (any depth), plain or gzipped (:func:`table_path`: one per
    folder, the plain one where both are), sorted by folder."""
    folders = {p.parent for pattern in (name, name + ".gz") for p in Path(root).rglob(pattern)}
    return [table_path(f, name) for f in sorted(folders)]


__all__ = ["DiskFullError", "atomic_writer", "file_mode", "find_tables", "fsync_dir", "table_path"]
