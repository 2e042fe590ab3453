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


# Set by `fedtitan superlink --results-root`; a submitted run's `out` must stay inside it.
RESULTS_ROOT_ENV = "FEDTITAN_RESULTS_ROOT"


def inside_root(root: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """``out`` resolved under ``root`` (relative paths are taken under it); a path that leaves
    it (``..``, an absolute path elsewhere, a link pointing out) is refused with one line."""
    from fedtitan.errors import ConfigError

    base = Path(root).expanduser().resolve()
    cand = Path(out).expanduser()
    path = (cand if cand.is_absolute() else base / cand).resolve()
    if path != base and base not in path.parents:
        raise ConfigError(f"run output {str(out)!r} is outside the server's results root {base}; give a path inside "
                          "it (relative paths are taken under it)")
    return path


def cache_dir() -> Path:
    """Cache of decoded datasets: ``$FEDTITAN_CACHE`` or ``$XDG_CACHE_HOME/fedtitan``."""
    env = os.environ.get("FEDTITAN_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        path = Path(base) / "fedtitan"
    return path
