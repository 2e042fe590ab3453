"""Heterogeneous devices: catalog, fleets, cost model, budgets and meters."""

from fedtitan.devices.budgets import (
    Battery,
    BudgetDecision,
    adaptive_ratio,
    affordable_units,
    check_memory,
)
from fedtitan.devices.catalog import (
    CATALOG,
    DeviceProfile,
    get_profile,
    load_profiles,
    profile_toml,
)
from fedtitan.devices.cost import PhaseCost, RoundCost, static_round, step_time, streaming_round
from fedtitan.devices.fleet import FleetSpec, device_for, device_names
from fedtitan.devices.meters import MeasuredMeter, Measurement, SimulatedMeter, detect_counter

__all__ = [
    "CATALOG", "Battery", "BudgetDecision", "DeviceProfile", "FleetSpec", "MeasuredMeter", "Measurement",
    "PhaseCost", "RoundCost", "SimulatedMeter", "adaptive_ratio", "affordable_units", "check_memory",
    "detect_counter", "device_for", "device_names", "get_profile", "load_profiles", "profile_toml",
    "static_round", "step_time", "streaming_round",
]
