"""Device profiles: what a simulated edge device can compute, draw and send.

Numbers are *effective* rates (what training code achieves), not datasheet peaks. Each
profile lists its sources; where a number is an estimate, ``notes`` says how it was made.
The Jetson Nano (10 W) is calibrated to the Titan paper's anchor: about 20 s to train one
batch of 16 on MobileNetV1 at 224x224 (on the CPU). ``fedtitan devices calibrate`` measures
the machine it runs on and writes a profile TOML in the same format.
"""

from __future__ import annotations

import logging
import math
import tomllib
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from fedtitan.errors import ConfigError, did_you_mean

GB = 1024**3
MBIT = 1e6 / 8  # bytes per second in one Mbit/s

log = logging.getLogger(__name__)

# Old field names a profile TOML may still use ("bps" read as bits; the unit was always bytes/s).
RENAMED_FIELDS = {"uplink_bps": "uplink_bytes_per_s", "downlink_bps": "downlink_bytes_per_s"}
_renames_told: set[str] = set()


def _renamed(tab: dict[str, Any], where: str) -> dict[str, Any]:
    """``tab`` with old field names (:data:`RENAMED_FIELDS`) under their new names, saying so
    once per old name (a one-line logging warning)."""
    out = dict(tab)
    for old, new in RENAMED_FIELDS.items():
        if old not in out:
            continue
        if new in out:
            raise ConfigError(f"{where}: give {new} only ({old} is its old name)")
        out[new] = out.pop(old)
        if old not in _renames_told:
            _renames_told.add(old)
            log.warning("%s: %s is now %s (the unit is bytes per second, not bits: 10 Mbit/s = 1.25e6)",
                        where, old, new)
    return out


@dataclass(frozen=True)
class DeviceProfile:
    """One kind of device.

    Power model: ``idle_w`` is drawn whenever the device is on; ``train_w`` and ``select_w``
    are the whole-board power while that phase alone runs, so a phase adds
    ``(phase_w - idle_w)`` on top of idle, and concurrent phases add up.
    """

    name: str
    description: str
    train_flops: float  # effective FLOP/s of the unit that trains
    select_flops: float  # effective FLOP/s of the (idle) unit that runs selection
    train_w: float
    select_w: float
    idle_w: float
    radio_w: float
    memory_bytes: int
    uplink_bytes_per_s: float  # bytes (not bits) per second: 10 Mbit/s is 1.25e6
    downlink_bytes_per_s: float  # bytes (not bits) per second
    energy_budget_j: float | None = None  # per round; None = unlimited
    battery_j: float | None = None  # across rounds; None = mains powered
    availability: float = 1.0
    train_unit: str = "cpu"
    select_unit: str = "gpu"
    sources: tuple[str, ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        for f in ("train_flops", "select_flops", "uplink_bytes_per_s", "downlink_bytes_per_s"):
            v = getattr(self, f)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise ConfigError(f"device {self.name!r}: {f} must be a positive number, got {v!r}")
        for f in ("train_w", "select_w", "idle_w", "radio_w"):
            v = getattr(self, f)
            if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"device {self.name!r}: {f} must be a number >= 0, got {v!r}")
        if self.memory_bytes <= 0:
            raise ConfigError(f"device {self.name!r}: memory_bytes must be > 0")
        if not 0.0 < self.availability <= 1.0:
            raise ConfigError(f"device {self.name!r}: availability must be in (0, 1], got {self.availability}")
        for f in ("energy_budget_j", "battery_j"):
            v = getattr(self, f)
            if v is not None and not v > 0:
                raise ConfigError(f"device {self.name!r}: {f} must be > 0 or absent, got {v}")

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["sources"] = list(self.sources)
        return {k: v for k, v in d.items() if v is not None}


_JETSON = "NVIDIA Jetson module data sheets and developer-kit specifications (developer.nvidia.com/embedded/jetson-modules)"
_TITAN = "Titan (KDD'25), Sec. 4.1/Fig. 6: Jetson Nano trains one batch of 16 on MobileNetV1 (224x224) in about 20 s on the CPU"
_RPI = "Raspberry Pi 4/5 product briefs (raspberrypi.com) and published idle/load power measurements"
_UTIL = ("effective rate = peak x utilisation typical of small-batch PyTorch training "
         "(CPU 15-25% of peak NEON FLOP/s, GPU 5-10% of FP32 peak); calibrate to replace")

CATALOG: dict[str, DeviceProfile] = {
    p.name: p
    for p in [
        DeviceProfile(
            "jetson-nano-10w", "Jetson Nano 4GB, 10 W mode (4x A57 @1.43 GHz, 128-core Maxwell)",
            train_flops=2.73e9, select_flops=2.0e10, train_w=7.5, select_w=6.5, idle_w=1.5, radio_w=1.0,
            memory_bytes=4 * GB, uplink_bytes_per_s=20 * MBIT, downlink_bytes_per_s=50 * MBIT,
            sources=(_TITAN, _JETSON),
            notes="train_flops calibrated: 16 x 3 x 1.14 GFLOP (MobileNetV1 224) / 20 s; GPU select ~8% of 236 GFLOPS FP32",
        ),
        DeviceProfile(
            "jetson-nano-5w", "Jetson Nano 4GB, 5 W mode (2 cores @0.92 GHz, GPU @640 MHz)",
            train_flops=0.88e9, select_flops=1.4e10, train_w=4.5, select_w=4.2, idle_w=1.2, radio_w=1.0,
            memory_bytes=4 * GB, uplink_bytes_per_s=20 * MBIT, downlink_bytes_per_s=50 * MBIT,
            sources=(_TITAN, _JETSON),
            notes="10 W rates scaled by active cores x clock (2x0.92 / 4x1.43) and GPU clock (640/921 MHz)",
        ),
        DeviceProfile(
            "jetson-tx2", "Jetson TX2 (2x Denver2 + 4x A57 @2 GHz, 256-core Pascal), MAXN",
            train_flops=5.2e9, select_flops=4.5e10, train_w=11.0, select_w=10.0, idle_w=2.0, radio_w=1.0,
            memory_bytes=8 * GB, uplink_bytes_per_s=20 * MBIT, downlink_bytes_per_s=50 * MBIT,
            sources=(_JETSON,), notes=_UTIL,
        ),
        DeviceProfile(
            "xavier-nx", "Jetson Xavier NX 8GB, 15 W (6x Carmel, 384-core Volta)",
            train_flops=6.0e10, select_flops=1.2e10, train_w=12.0, select_w=8.0, idle_w=2.5, radio_w=1.0,
            memory_bytes=8 * GB, uplink_bytes_per_s=30 * MBIT, downlink_bytes_per_s=80 * MBIT, train_unit="gpu", select_unit="cpu",
            sources=(_JETSON,), notes=_UTIL + "; trains on the GPU, selects on the idle CPU",
        ),
        DeviceProfile(
            "orin-nano", "Jetson Orin Nano 8GB, 15 W (6x A78AE, 1024-core Ampere)",
            train_flops=1.0e11, select_flops=2.0e10, train_w=13.0, select_w=9.0, idle_w=3.0, radio_w=1.0,
            memory_bytes=8 * GB, uplink_bytes_per_s=30 * MBIT, downlink_bytes_per_s=80 * MBIT, train_unit="gpu", select_unit="cpu",
            sources=(_JETSON,), notes=_UTIL + "; trains on the GPU, selects on the idle CPU",
        ),
        DeviceProfile(
            "orin-nx", "Jetson Orin NX 16GB, 25 W (8x A78AE, 1024-core Ampere)",
            train_flops=1.5e11, select_flops=3.0e10, train_w=20.0, select_w=13.0, idle_w=4.0, radio_w=1.0,
            memory_bytes=16 * GB, uplink_bytes_per_s=30 * MBIT, downlink_bytes_per_s=80 * MBIT, train_unit="gpu", select_unit="cpu",
            sources=(_JETSON,), notes=_UTIL + "; trains on the GPU, selects on the idle CPU",
        ),
        DeviceProfile(
            "agx-orin", "Jetson AGX Orin 64GB, 60 W (12x A78AE, 2048-core Ampere)",
            train_flops=4.0e11, select_flops=5.0e10, train_w=45.0, select_w=25.0, idle_w=7.0, radio_w=1.5,
            memory_bytes=64 * GB, uplink_bytes_per_s=50 * MBIT, downlink_bytes_per_s=100 * MBIT, train_unit="gpu", select_unit="cpu",
            sources=(_JETSON,), notes=_UTIL + "; trains on the GPU, selects on the idle CPU",
        ),
        DeviceProfile(
            "rpi4", "Raspberry Pi 4 Model B 4GB (4x A72 @1.5 GHz), no accelerator",
            train_flops=4.0e9, select_flops=4.0e9, train_w=6.4, select_w=6.4, idle_w=2.7, radio_w=0.8,
            memory_bytes=4 * GB, uplink_bytes_per_s=30 * MBIT, downlink_bytes_per_s=60 * MBIT, select_unit="cpu",
            sources=(_RPI,), notes=_UTIL + "; selection shares the CPU with training",
        ),
        DeviceProfile(
            "rpi5", "Raspberry Pi 5 8GB (4x A76 @2.4 GHz), no accelerator",
            train_flops=1.0e10, select_flops=1.0e10, train_w=8.0, select_w=8.0, idle_w=2.7, radio_w=0.8,
            memory_bytes=8 * GB, uplink_bytes_per_s=40 * MBIT, downlink_bytes_per_s=80 * MBIT, select_unit="cpu",
            sources=(_RPI,), notes=_UTIL + "; selection shares the CPU with training",
        ),
        DeviceProfile(
            "phone-midrange", "Mid-range phone class (8-core Arm, mobile GPU/NPU, LTE), on battery",
            train_flops=1.5e10, select_flops=5.0e10, train_w=4.0, select_w=2.5, idle_w=0.6, radio_w=1.5,
            memory_bytes=6 * GB, uplink_bytes_per_s=10 * MBIT, downlink_bytes_per_s=30 * MBIT, battery_j=62_370.0,
            availability=0.8,
            sources=("4,500 mAh x 3.85 V battery = 62.4 kJ; LTE radio ~1-2 W (Huang et al., MobiSys 2012)",),
            notes=_UTIL,
        ),
    ]
}


def load_profiles(path: str | Path) -> dict[str, DeviceProfile]:
    """Profiles from a TOML file: one ``[devices.NAME]`` table per profile, fields as above.

    A table may name ``base = "catalog-name"`` and override only some fields.
    """
    p = Path(path).expanduser()
    try:
        doc = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"device profile file not found: {p}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"device profile file {p} is not valid TOML: {exc}") from None
    tables = doc.get("devices", {})
    if not tables:
        raise ConfigError(f"{p} has no [devices.NAME] tables")
    known = {f.name for f in fields(DeviceProfile)}
    out = {}
    for name, tab in tables.items():
        tab = _renamed(dict(tab), f"{p}: device {name!r}")
        base_name = tab.pop("base", None)
        unknown = set(tab) - known
        if unknown:
            raise ConfigError(f"{p}: device {name!r} has unknown fields {sorted(unknown)}; known: {sorted(known)}")
        if "sources" in tab:
            tab["sources"] = tuple(tab["sources"])
        if base_name is not None:
            out[name] = replace(get_profile(base_name), name=name, **tab)
        else:
            try:
                out[name] = DeviceProfile(name=name, **{k: v for k, v in tab.items() if k != "name"})
            except TypeError as exc:
                raise ConfigError(f"{p}: device {name!r}: {exc}") from None
    return out


def get_profile(name: str, extra: dict[str, DeviceProfile] | None = None) -> DeviceProfile:
    """A profile by catalog name, from ``extra`` profiles, or from a ``.toml`` path."""
    if extra and name in extra:
        return extra[name]
    if name in CATALOG:
        return CATALOG[name]
    if name.endswith(".toml"):
        profiles = load_profiles(name)
        return next(iter(profiles.values()))
    known = [*CATALOG, *(extra or {})]
    raise ConfigError(f"unknown device {name!r}{did_you_mean(name, known)} Known devices: {', '.join(known)}")


def profile_toml(profile: DeviceProfile) -> str:
    """Serialise a profile as a ``[devices.NAME]`` TOML table."""
    lines = [f"[devices.{profile.name}]"]
    for k, v in profile.to_dict().items():
        if k == "name":
            continue
        if isinstance(v, str):
            lines.append(f"{k} = {v!r}".replace("'", '"'))
        elif isinstance(v, list):
            lines.append(f"{k} = [" + ", ".join('"' + str(s).replace('"', "'") + '"' for s in v) + "]")
        else:
            lines.append(f"{k} = {v!r}")
    return "\n".join(lines) + "\n"

