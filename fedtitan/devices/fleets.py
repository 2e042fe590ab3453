"""Named fleets: a name for a set of ``fleet.*`` settings, so fleets can be grid values.

A named fleet is a table of ``fleet.*`` keys (mix, devices, variation, profiles, meter,
dynamics, dynamics_options, trace). Where they come from, later ones winning on a name:
the built-ins below, the ``[fleets.NAME]`` tables of a fleets file (``fleet.file``), and
those of the preset itself. ``fleet.name = NAME`` applies one: its keys replace the
preset's ``[fleet]`` keys, and keys given with ``--set fleet.KEY=...`` still win over it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fedtitan.errors import ConfigError, did_you_mean

# From the catalog: the papers' lab, a phone-class fleet, a mixed edge fleet, a Pi cluster.
BUILTIN_FLEETS: dict[str, dict[str, Any]] = {
    "jetson-lab": {"mix": {"jetson-nano-10w": 0.5, "jetson-nano-5w": 0.2, "orin-nano": 0.3}},
    "edge-mix": {"mix": {"jetson-nano-10w": 0.4, "orin-nano": 0.3, "rpi4": 0.3}},
    "phones": {"mix": {"phone-midrange": 1.0}, "variation": 0.1, "dynamics": "diurnal"},
    "pi-cluster": {"mix": {"rpi4": 0.5, "rpi5": 0.5}},
}
BUILTIN_NOTES = {
    "jetson-lab": "the Titan paper's Jetson lab (the titan-fl-cifar10 preset's fleet)",
    "edge-mix": "mixed edge devices (the quickstart fleet)",
    "phones": "mid-range phones on battery, available by a diurnal cycle",
    "pi-cluster": "Raspberry Pi 4 and 5, half each",
}


# The fleet settings that name a file: relative paths in a TOML file are read from its folder.
PATH_SETTINGS = ("profiles", "trace")


def resolve_path(value: Any, base: Path) -> Any:
    """``value`` (a path a TOML file in folder ``base`` gives) made absolute against ``base``
    when relative, so it names the same file whatever the working folder; other values as
    they are."""
    if not isinstance(value, str) or not value:
        return value
    p = Path(value).expanduser()
    return value if p.is_absolute() else str(base / p)


def resolve_paths(table: dict[str, Any], base: Path, keys: Sequence[str] = PATH_SETTINGS) -> dict[str, Any]:
    """``table`` with its ``keys`` resolved by :func:`resolve_path` against ``base``."""
    return {k: resolve_path(v, base) if k in keys else v for k, v in table.items()}


def check_fleet(name: str, table: Any, where: str, keys: Sequence[str]) -> dict[str, Any]:
    """A named fleet's table, checked: only ``keys`` (the ``fleet.*`` settings a named fleet may
    hold, :data:`fedtitan.config.FLEET_SETTINGS`; one line naming any other)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: fleet {name!r} must be a table of fleet settings ([fleets.{name}])")
    allowed = list(keys)
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: fleet {name!r} sets {key!r}, which is not a fleet setting; a named fleet "
                              f"holds only fleet.* keys ({', '.join(allowed)})")
    return dict(table)


def read_fleets_file(path: str, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The ``[fleets.NAME]`` tables of a fleets TOML file; their relative paths (``profiles``,
    ``trace``) are read from the file's folder, not the working folder."""
    p = Path(path).expanduser()
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config fleet.file: {p} not found") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config fleet.file: {p} is not readable TOML ({exc})") from None
    extra = [k for k in doc if k != "fleets"]
    if extra or not isinstance(doc.get("fleets", {}), dict):
        raise ConfigError(f"config fleet.file: {p} may hold only [fleets.NAME] tables (found {', '.join(extra)})")
    base = p.resolve().parent
    return {n: resolve_paths(check_fleet(n, t, str(p), keys), base) for n, t in doc.get("fleets", {}).items()}


def all_fleets(preset_fleets: dict[str, Any] | None, file: str | None,
               keys: Sequence[str]) -> dict[str, tuple[str, dict]]:
    """Name -> (where it comes from, its fleet settings), built-ins first, then ``file``'s,
    then the preset's; ``keys``: the settings a named fleet may hold."""
    out: dict[str, tuple[str, dict]] = {n: ("built-in", dict(t)) for n, t in BUILTIN_FLEETS.items()}
    if file:
        out.update({n: (f"file {file}", t) for n, t in read_fleets_file(file, keys).items()})
    out.update({n: ("preset", check_fleet(n, t, "preset [fleets]", keys)) for n, t in (preset_fleets or {}).items()})
    return out


def named_fleet(name: str, preset_fleets: dict[str, Any] | None, file: str | None,
                keys: Sequence[str]) -> dict[str, Any]:
    """The settings of fleet ``name``; an unknown name is one line listing the names there are."""
    fleets = all_fleets(preset_fleets, file, keys)
    if name not in fleets:
        raise ConfigError(f"config fleet.name: unknown fleet {name!r}{did_you_mean(name, fleets)} Fleets: {', '.join(fleets)}")
    return dict(fleets[name][1])


__all__ = ["BUILTIN_FLEETS", "BUILTIN_NOTES", "PATH_SETTINGS", "all_fleets", "check_fleet", "named_fleet",
           "read_fleets_file", "resolve_path", "resolve_paths"]
