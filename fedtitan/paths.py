"""Where fedtitan looks for data and keeps its caches."""

from __future__ import annotations

import os
from pathlib import Path


def data_dirs(data_dir: str | os.PathLike[str] | None = None) -> list[Path]:
    """Folders searched for datasets, in order: the argument, ``$FEDTITAN_DATA``, ``~/.fedtitan/data``."""
    dirs: list[Path] = []
    if data_dir is not None:
        dirs.append(Path(data_dir).expanduser())
    env = os.environ.get("FEDTITAN_DATA")
    if env:
        dirs.extend(Path(p).expanduser() for p in env.split(os.pathsep) if p)
    dirs.append(Path.home() / ".fedtitan" / "data")
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


def cache_dir() -> Path:
    """Cache of decoded datasets: ``$FEDTITAN_CACHE`` or ``$XDG_CACHE_HOME/fedtitan``."""
    env = os.environ.get("FEDTITAN_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "fedtitan"
    return path
