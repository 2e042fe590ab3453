"""Energy, battery and memory limits, and the pruning ratio that fits a budget."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from fedtitan.devices.catalog import DeviceProfile
from fedtitan.devices.cost import comm_cost, train_cost
from fedtitan.errors import ConfigError


@dataclass(frozen=True)
class BudgetDecision:
    """What a client can afford this round: ``status`` is ``full``, ``reduced`` or ``declined``."""

    status: str
    units: int  # local steps (streaming) or training samples (static) it will do
    requested: int
    predicted_energy_j: float


def affordable_units(budget_j: float | None, fixed_j: float, unit_j: float, requested: int) -> BudgetDecision:
    """Largest number of work units (each costing ``unit_j``) that fits ``budget_j`` after the
    fixed cost ``fixed_j`` (model exchange, idle). No budget: everything requested."""
    if budget_j is None or requested == 0:
        return BudgetDecision("full", requested, requested, fixed_j + unit_j * requested)
    units = requested if unit_j <= 0 else min(requested, max(0, math.floor((budget_j - fixed_j) / unit_j + 1e-9)))
    status = "full" if units == requested else ("declined" if units == 0 else "reduced")
    return BudgetDecision(status, units, requested, fixed_j + unit_j * units)


def round_budget(energy_budget_j: float | None, battery_j: float | None) -> float | None:
    """What a round may spend: the per-round budget, and no more than the battery holds."""
    caps = [c for c in (energy_budget_j, battery_j) if c is not None]
    return min(caps) if caps else None


class Battery:
    """Energy left across rounds; a spent battery makes the device unavailable."""

    def __init__(self, capacity_j: float | None, level_j: float | None = None) -> None:
        self.capacity_j = capacity_j
        self.level_j = capacity_j if level_j is None else level_j

    @property
    def available(self) -> bool:
        return self.level_j is None or self.level_j > 0

    def spend(self, energy_j: float) -> float:
        """Draw energy; returns what was actually drawn (capped at what is left)."""
        if self.level_j is None:
            return energy_j
        drawn = min(energy_j, self.level_j)
        self.level_j -= drawn
        return drawn


def adaptive_ratio(p: DeviceProfile, *, rho: float, n_samples: int, epochs: int, forward_flops: float,
                   model_bytes: float, budget_j: float | None = None) -> float:
    """The pruning paper's dynamic ratio: the largest rho' <= rho whose predicted round energy
    (training ``rho' * N * epochs`` samples + exchange + idle) fits the budget. Returns
    ``rho`` when there is no budget; at least one sample's worth otherwise (the caller
    declines if even that does not fit)."""
    budget = p.energy_budget_j if budget_j is None else budget_j
    if budget is None or n_samples == 0:
        return rho
    per = train_cost(p, forward_flops, 1)
    unit_j = per.energy_j + p.idle_w * per.time_s
    comm = comm_cost(p, model_bytes, model_bytes)
    fixed_j = comm.energy_j + p.idle_w * comm.time_s
    samples = max(0.0, (budget - fixed_j) / unit_j) / max(epochs, 1)
    return float(min(rho, max(samples / n_samples, 1.0 / n_samples)))


def activation_bytes_per_sample(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Bytes of every leaf module's output for one sample (what backward must keep)."""
    total = 0

    def hook(_m: nn.Module, _i: object, out: object) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape)))
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return total


def training_memory_bytes(model: nn.Module, input_shape: tuple[int, ...], batch_size: int,
                          optimizer_states: int = 1) -> int:
    """Weights + gradients + optimiser state + activations for one batch (an estimate)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return params * (2 + optimizer_states) + batch_size * activation_bytes_per_sample(model, input_shape)


def check_memory(p: DeviceProfile, needed_bytes: int, batch_size: int) -> None:
    """Raise a clear error when a batch cannot fit the device's memory."""
    if needed_bytes > p.memory_bytes:
        raise ConfigError(
            f"device {p.name!r} has {p.memory_bytes / 2**30:.1f} GiB but training with batch {batch_size} needs "
            f"about {needed_bytes / 2**30:.2f} GiB; lower the batch size or use a smaller model"
        )


__all__ = ["Battery", "BudgetDecision", "adaptive_ratio", "affordable_units", "check_memory", "round_budget",
           "training_memory_bytes"]
