"""Named fleets: a name for a set of ``fleet.*`` settings, so fleets can be grid values.

A named fleet is a table of ``fleet.*`` keys (mix, devices, variation, profiles, meter,
dynamics, dynamics_options, trace). Where they come from, later ones winning on a name:
the built-ins below, the ``[fleets.NAME]`` tables of a fleets file (``fleet.file``), and
those of the preset itself. ``fleet.name = NAME`` applies one: its keys replace the
preset's ``[fleet]`` keys, and keys given with ``--set fleet.KEY=...`` still win over it.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any

from fedtitan.errors import ConfigError

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
# What a named fleet may set: the fleet section's keys but its own name and file.
NOT_IN_A_FLEET = ("name", "file")


def _fleet_keys() -> list[str]:
    from fedtitan.config import FleetSection

    return [k for k in FleetSection.model_fields if k not in NOT_IN_A_FLEET]


def check_fleet(name: str, table: Any, where: str) -> dict[str, Any]:
    """A named fleet's table, checked: only ``fleet.*`` keys (one line naming any other)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: fleet {name!r} must be a table of fleet settings ([fleets.{name}])")
    allowed = _fleet_keys()
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{where}: fleet {name!r} sets {key!r}, which is not a fleet setting; a named fleet "
                              f"holds only fleet.* keys ({', '.join(allowed)})")
    return dict(table)


def read_fleets_file(path: str) -> dict[str, dict[str, Any]]:
    """The ``[fleets.NAME]`` tables of a fleets TOML file."""
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
    return {n: check_fleet(n, t, str(p)) for n, t in doc.get("fleets", {}).items()}


def all_fleets(preset_fleets: dict[str, Any] | None = None, file: str | None = None) -> dict[str, tuple[str, dict]]:
    """Name -> (where it comes from, its fleet settings), built-ins first, then ``file``'s,
    then the preset's."""
    out: dict[str, tuple[str, dict]] = {n: ("built-in", dict(t)) for n, t in BUILTIN_FLEETS.items()}
    if file:
        out.update({n: (f"file {file}", t) for n, t in read_fleets_file(file).items()})
    out.update({n: ("preset", check_fleet(n, t, "preset [fleets]")) for n, t in (preset_fleets or {}).items()})
    return out


def named_fleet(name: str, preset_fleets: dict[str, Any] | None = None, file: str | None = None) -> dict[str, Any]:
    """The settings of fleet ``name``; an unknown name is one line listing the names there are."""
    fleets = all_fleets(preset_fleets, file)
    if name not in fleets:
        close = difflib.get_close_matches(name, list(fleets), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config fleet.name: unknown fleet {name!r}{hint} Fleets: {', '.join(fleets)}")
    return dict(fleets[name][1])


__all__ = ["BUILTIN_FLEETS", "BUILTIN_NOTES", "all_fleets", "check_fleet", "named_fleet", "read_fleets_file"]
