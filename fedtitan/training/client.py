"""One federated client round, framework-free: what a Flower ClientApp calls.

``client_round`` takes the run config, the client's partition id, the global weights, the
client's persistent state (stream position, selector buffer, pruning subset, battery) and
what the server's strategy asked for (e.g. FedProx's ``proximal-mu``), trains within the
device's budgets, and returns new weights, flat numeric metrics and the new state. The
per-process set-up lives in :mod:`fedtitan.training.setup`, injected faults in
:mod:`fedtitan.training.faults`; the two training regimes are ``_streaming`` and ``_static``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedtitan.compute import DeviceData, to_cpu_state
from fedtitan.config import Config
from fedtitan.data import DataStream, NoiseSpec
from fedtitan.devices import Battery, MeasuredMeter, affordable_units
from fedtitan.devices.budgets import adaptive_ratio, check_memory, round_budget
from fedtitan.devices.catalog import CATALOG, DeviceProfile
from fedtitan.devices.cost import auto_buffer_size, static_round, streaming_round, train_cost
from fedtitan.selection import build_selector, prune
from fedtitan.selection.pruning import WARMUP_PRUNERS, normalise_scores
from fedtitan.selection.selectors import camel_flops
from fedtitan.status import Status
from fedtitan.training.common import Proximal, evaluate, lr_at
from fedtitan.training.faults import FaultPlan, InjectedDrop, InjectedFault
from fedtitan.training.setup import (
    Setup,
    build_global_model,
    data_on,
    dataset_for,
    device_of,
    fleet_dynamics,
    partition_for,
    setup_for,
    train_units,
)
from fedtitan.training.static import StaticConfig, train_static, warmup, warmup_samples_total
from fedtitan.training.streaming import StreamingConfig, train_streaming

__all__ = ["InjectedDrop", "InjectedFault", "RoundOutput", "build_global_model", "client_evaluate", "client_round",
           "dataset_for", "partition_for", "setup_for"]

DEVICE_IDS = {name: i for i, name in enumerate(CATALOG)}


@dataclass
class RoundOutput:
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float]
    state: dict[str, Any]


def _base_metrics(partition_id: int, profile: DeviceProfile, n_examples: int) -> dict[str, float]:
    return {
        "num-examples": float(n_examples), "partition_id": float(partition_id),
        "device_id": float(DEVICE_IDS.get(profile.name, -1)), "train_loss": 0.0, "sim_time_s": 0.0,
        "sim_energy_j": 0.0, "sim_train_s": 0.0, "sim_select_s": 0.0, "sim_comm_s": 0.0, "sim_train_j": 0.0,
        "sim_select_j": 0.0, "sim_comm_j": 0.0, "sim_idle_j": 0.0, "train_wall_ms": 0.0,
        "select_wall_ms": 0.0, "sync_wall_ms": 0.0, "steps_wall_ms": 0.0, "train_on_gpu": 0.0, "select_on_gpu": 0.0,
        "streamed": 0.0, "selected": 0.0, "steps": 0.0, "rho": 1.0, "proximal_mu": 0.0, "fault_scaled": 0.0,
        "available": 1.0, "speed_factor": 1.0, "select_share": 1.0, "bandwidth_factor": 1.0, "buffer_size": 0.0,
        "status": Status.OK.code, "measured": 0.0, "wall_s": 0.0, "energy_j": 0.0,
        "energy_available": 1.0, "battery_j": -1.0,
    }


def client_round(
    cfg: Config, partition_id: int, global_state: dict[str, torch.Tensor], state: dict[str, Any] | None,
    server_round: int, device: str | None = None, meter: str | None = None,
    strategy_config: Mapping[str, Any] | None = None, round_start_s: float = 0.0,
) -> RoundOutput:
    """One round of local training on ``partition_id``'s data as its device would do it.

    ``strategy_config``: what the server's strategy added to the train config
    (``proximal-mu`` turns on FedProx's proximal term in both regimes). ``round_start_s``:
    the virtual clock at the round's start, where the fleet's dynamics are read."""
    setup = setup_for(cfg)
    state = dict(state or {})
    if not 0 <= partition_id < len(setup.parts):
        raise ValueError(f"partition-id {partition_id} is outside 0..{len(setup.parts) - 1}")
    factors = fleet_dynamics(cfg).factors(partition_id, round_start_s)
    profile = factors.apply(device_of(cfg, partition_id, device))  # as the device is at this moment
    meter = meter or cfg.fleet.meter
    train_dev, select_dev = train_units(cfg, profile, meter)
    model = setup.model.to(train_dev)  # a no-op unless a measured board trains on another unit
    model.load_state_dict(global_state)  # the one copy in (CPU arrays -> the training unit)
    data = data_on(cfg, train_dev)
    mu = float((strategy_config or {}).get("proximal-mu", 0.0))
    prox = Proximal.at(model, mu)  # anchored at the global weights just loaded
    seed_seq = [cfg.run.seed, server_round, partition_id]
    rng = np.random.default_rng(seed_seq)
    torch.manual_seed(int(np.random.SeedSequence(seed_seq).generate_state(1)[0]))
    faults = FaultPlan.draw(cfg.faults, cfg.run.seed, server_round, partition_id)
    if faults.exception:
        raise InjectedFault(f"injected client failure (partition {partition_id}, round {server_round})")

    batch = cfg.selection.batch_size if cfg.regime == "streaming" else cfg.pruning.batch_size
    check_memory(profile, setup.memory_bytes, batch)
    battery = Battery(profile.battery_j, state.get("battery_j"))
    metrics = _base_metrics(partition_id, profile, 0)
    metrics["measured"] = 1.0 if meter == "measured" else 0.0
    metrics["proximal_mu"] = mu
    metrics.update(available=float(factors.available), speed_factor=factors.speed_factor,
                   select_share=factors.select_share, bandwidth_factor=factors.bandwidth_factor)
    if not factors.available:  # offline at this moment (its trace or dynamics): no work, no energy
        metrics["status"] = Status.UNAVAILABLE.code
        return RoundOutput(global_state, metrics, state)
    if not battery.available:
        metrics["status"] = Status.UNAVAILABLE.code
        metrics["battery_j"] = 0.0
        return RoundOutput(global_state, metrics, state)

    measured = MeasuredMeter() if meter == "measured" else None
    if measured is not None:
        measured.start()
    t_wall = time.perf_counter()
    metrics["train_on_gpu"] = float(train_dev.type != "cpu")
    metrics["select_on_gpu"] = float(select_dev.type != "cpu")
    budget_j = round_budget(profile.energy_budget_j, battery.level_j)
    if cfg.regime == "streaming":
        _streaming(cfg, setup, data, select_dev, partition_id, profile, state, server_round, rng, metrics, prox,
                   budget_j)
    else:
        _static(cfg, setup, data, partition_id, profile, state, server_round, rng, metrics, prox, budget_j)
    metrics["wall_s"] = time.perf_counter() - t_wall
    if measured is not None:
        m = measured.stop()
        metrics["wall_s"] = m.time_s
        metrics["energy_available"] = 1.0 if m.energy_j is not None else 0.0
        metrics["energy_j"] = m.energy_j if m.energy_j is not None else math.nan
    else:
        metrics["energy_j"] = metrics["sim_energy_j"]
    if faults.slow:
        metrics["sim_time_s"] *= cfg.faults.slow_factor
    spent = metrics["energy_j"] if meter == "measured" and metrics["energy_available"] else metrics["sim_energy_j"]
    battery.spend(spent)
    if battery.level_j is not None:
        state["battery_j"] = battery.level_j
        metrics["battery_j"] = battery.level_j
    if faults.drop:
        raise InjectedDrop(f"client dropped mid-round (partition {partition_id}, round {server_round})")
    new_state = to_cpu_state(model)  # the one copy out
    faults.corrupt(new_state, global_state, cfg.faults.scale_factor)
    metrics["fault_scaled"] = float(faults.scale)
    return RoundOutput(new_state, metrics, state)


def _streaming(cfg: Config, setup: Setup, data: DeviceData, select_dev: torch.device, pid: int,
               profile: DeviceProfile, state: dict[str, Any], server_round: int, rng: np.random.Generator,
               metrics: dict[str, float], prox: Proximal | None = None, budget_j: float | None = None) -> None:
    s, d = cfg.selection, cfg.data
    noise = NoiseSpec(d.feature_noise, d.feature_sigma, d.label_noise)
    stream = DataStream(data, setup.parts[pid], s.velocity, cfg.run.seed, pid, noise)
    if "stream" in state:
        stream.restore(state["stream"])
    buffer = s.buffer_size
    if buffer == "auto":  # what the selecting unit can score during one training step, now
        buffer = auto_buffer_size(profile, forward_flops=setup.forward_flops, block_flops=setup.block_flops,
                                  batch_size=s.batch_size, velocity=s.velocity, buffer_max=s.buffer_max)
    offered = {"buffer_size": buffer, "n_blocks": s.n_blocks, "pool": s.pool, "weighting": s.weighting,
               "coarse": s.coarse, "metric": s.metric, "carry_over": s.carry_over, "stratify": s.stratify,
               "seed": cfg.run.seed * 1_000_003 + pid, "batch_size": s.batch_size, "velocity": s.velocity,
               "num_classes": setup.dataset.num_classes}
    selector = build_selector(s.method, offered, **s.options)
    if "selector" in state:
        selector.load_state_dict(state["selector"])
    coarse = bool(getattr(selector, "coarse_filter", False))
    kw: dict[str, Any] = dict(forward_flops=setup.forward_flops, block_flops=setup.block_flops, batch_size=s.batch_size,
              velocity=s.velocity, candidates=buffer if coarse else s.velocity, model_bytes=setup.model_bytes,
              pipelined=cfg.run.pipeline, coarse=coarse,
              gradient_selection=bool(getattr(selector, "forward_candidates", True)),
              extra_select_flops=camel_flops(s.batch_size, s.velocity, math.prod(setup.dataset.input_shape))
              if s.method == "camel" else 0.0)
    metrics["buffer_size"] = float(buffer if coarse else s.velocity)  # candidates per selection
    if coarse:  # predict with the most the filter can score per step: v new + the kept
        kw["coarse_samples"] = s.velocity + (buffer if s.carry_over else 0)
    fixed = streaming_round(profile, steps=0, **kw)  # exchange + idle during it
    one = streaming_round(profile, steps=1, **kw)
    decision = affordable_units(budget_j, fixed.energy_j, one.energy_j - fixed.energy_j, s.local_steps)
    metrics["status"] = (Status.OK if decision.status == "full" else Status(decision.status)).code
    if decision.units == 0:
        _decline(metrics)
        return
    global_step = (server_round - 1) * s.local_steps
    lr = lr_at(s.lr, "step", global_step, 0, decay=s.lr_decay, every=s.lr_decay_every)
    scfg = StreamingConfig(steps=decision.units, batch_size=s.batch_size, velocity=s.velocity, lr=lr,
                           pipeline=cfg.run.pipeline)
    records = train_streaming(setup.model, stream, selector, scfg, rng, select_device=select_dev, prox=prox)
    if coarse:  # bill what ran: the samples the coarse filter actually scored
        kw["coarse_samples"] = float(np.mean([r.info.get("coarse_forwards", s.velocity) for r in records]))
    cost = streaming_round(profile, steps=decision.units, **kw)
    state["stream"] = stream.state()
    state["selector"] = selector.state_dict()
    metrics.update({
        "num-examples": float(sum(r.selected for r in records)),
        "train_loss": float(np.mean([r.loss for r in records])),
        "sim_time_s": cost.time_s, "sim_energy_j": cost.energy_j,
        "sim_train_s": cost.phases["train"].time_s, "sim_select_s": cost.phases["select"].time_s,
        "sim_comm_s": cost.phases["comm"].time_s, "sim_train_j": cost.phases["train"].energy_j,
        "sim_select_j": cost.phases["select"].energy_j, "sim_comm_j": cost.phases["comm"].energy_j,
        "sim_idle_j": cost.phases["idle"].energy_j,
        "train_wall_ms": float(sum(r.train_ms for r in records)),
        "select_wall_ms": float(sum(r.select_ms for r in records) + records[0].info.get("pipeline_fill_ms", 0.0)),
        "sync_wall_ms": float(sum(r.sync_ms for r in records)),
        "steps_wall_ms": float(sum(r.wall_ms for r in records)),
        "streamed": float(sum(r.streamed for r in records)), "selected": float(sum(r.selected for r in records)),
        "steps": float(len(records)),
    })


def _static(cfg: Config, setup: Setup, data: DeviceData, pid: int, profile: DeviceProfile, state: dict[str, Any],
            server_round: int, rng: np.random.Generator, metrics: dict[str, float],
            prox: Proximal | None = None, budget_j: float | None = None) -> None:
    """Pruned epochs. The warm-up (``WARMUP_PRUNERS``) runs in the first
    rounds the client is sampled: all of it when the round's budget allows, else as many
    iterations as fit, round after round (the loss sums wait in the client's state) until it
    is complete; then the client prunes and trains on the kept subset with what the budget
    leaves. A round spends at most ``budget_j``; one that cannot afford a single unit of work
    declines before spending anything."""
    p = cfg.pruning
    idx = setup.parts[pid]
    n = len(idx)
    scfg = StaticConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer,
                        schedule=p.schedule)
    fwd, mb = setup.forward_flops, setup.model_bytes
    per_sample = train_cost(profile, fwd, 1)
    unit_j = per_sample.energy_j + profile.idle_w * per_sample.time_s  # one training sample, idle included
    spent_j = static_round(profile, forward_flops=fwd, train_samples=0, model_bytes=mb).energy_j  # the exchange
    warmup_samples, warm_steps, warm_wall_s, status = 0, 0, 0.0, Status.OK
    if "kept" not in state and p.method in WARMUP_PRUNERS:
        total_iters = max(1, math.ceil(p.warmup_epochs * n / p.batch_size))
        total = warmup_samples_total(n, p.batch_size, total_iters)
        done = int(state.get("warmup_done", 0))  # warm-up samples processed in earlier rounds
        w = affordable_units(budget_j, spent_j, unit_j, total - done)  # warm-up samples this round
        if w.units == 0:
            _decline(metrics)
            return
        loss_sum, seen, wres = warmup(setup.model, data, idx, math.ceil(w.units / p.batch_size), scfg, rng, prox,
                                      state.get("warmup_loss_sum"), state.get("warmup_seen"), max_samples=w.units)
        warmup_samples, warm_steps, warm_wall_s = wres.samples, wres.steps, wres.wall_s
        spent_j += unit_j * warmup_samples
        state["warmup_done"] = done + warmup_samples
        if state["warmup_done"] < total:  # more warm-up next time; this round's update is the warm-up's
            state["warmup_loss_sum"], state["warmup_seen"] = loss_sum, seen
            _static_metrics(metrics, profile, setup, Status.REDUCED, warmup_samples, 0, wres.mean_loss,
                            warm_wall_s, warm_steps, warmup_samples, rho=0.0)
            return
        for key in ("warmup_loss_sum", "warmup_seen"):
            state.pop(key, None)
        scores = normalise_scores(loss_sum, seen, p.unseen)
        _prune(cfg, profile, setup, state, n, idx, rng, scores)
    elif "kept" not in state:
        _prune(cfg, profile, setup, state, n, idx, rng, None)
    kept_ids = np.asarray(state["kept"])
    decision = affordable_units(budget_j, spent_j, unit_j * p.epochs, len(kept_ids))  # kept samples to train
    if decision.units == 0 and warmup_samples == 0:
        _decline(metrics)
        return
    if decision.status != "full" or warmup_samples and decision.units == 0:
        status = Status.REDUCED
    use = kept_ids[: decision.units]
    train_samples, loss, wall_s, steps = 0, math.nan, 0.0, 0
    if len(use):
        steps_per_round = p.epochs * math.ceil(len(use) / p.batch_size)
        res = train_static(setup.model, data, use, scfg, rng, step_offset=(server_round - 1) * steps_per_round,
                           total_steps=cfg.run.rounds * steps_per_round, prox=prox)
        train_samples, loss, wall_s, steps = res.samples, res.mean_loss, res.wall_s, res.steps
    rho = float(state["rho"]) * decision.units / max(len(kept_ids), 1)
    examples = len(use) if len(use) else warmup_samples
    _static_metrics(metrics, profile, setup, status, warmup_samples, train_samples,
                    loss if len(use) else metrics.get("train_loss", 0.0), wall_s + warm_wall_s, steps + warm_steps,
                    examples, rho)


def _prune(cfg: Config, profile: DeviceProfile, setup: Setup, state: dict[str, Any], n: int, idx: np.ndarray,
           rng: np.random.Generator, scores: np.ndarray | None) -> None:
    """Keep ``floor(rho * n)`` samples (``pruning.adaptive``: the largest rho whose training
    fits the per-round budget in the rounds after the warm-up)."""
    p = cfg.pruning
    rho = p.ratio
    if p.adaptive:
        rho = adaptive_ratio(profile, rho=rho, n_samples=n, epochs=p.epochs, forward_flops=setup.forward_flops,
                             model_bytes=setup.model_bytes)
    kept = prune(p.method, n, rho, scores=scores, rng=rng, labels=setup.dataset.y_train[idx])
    state["kept"] = idx[kept]
    state["rho"] = rho


def _decline(metrics: dict[str, float]) -> None:
    """Not even one unit of work fits: the client says so before it spends anything."""
    metrics["status"] = Status.DECLINED.code
    metrics["sim_time_s"], metrics["sim_energy_j"] = 0.0, 0.0


def _static_metrics(metrics: dict[str, float], profile: DeviceProfile, setup: Setup, status: Status,
                    warmup_samples: int, train_samples: int, loss: float, wall_s: float, steps: int,
                    examples: int, rho: float) -> None:
    cost = static_round(profile, forward_flops=setup.forward_flops, train_samples=train_samples,
                        warmup_samples=warmup_samples, model_bytes=setup.model_bytes)
    metrics.update({
        "status": status.code, "rho": rho,
        "num-examples": float(examples), "train_loss": loss, "sim_time_s": cost.time_s,
        "sim_energy_j": cost.energy_j, "sim_train_s": cost.phases["train"].time_s + cost.phases["warmup"].time_s,
        "sim_comm_s": cost.phases["comm"].time_s, "train_wall_ms": wall_s * 1e3, "steps": float(steps),
        "sim_train_j": cost.phases["train"].energy_j + cost.phases["warmup"].energy_j,
        "sim_comm_j": cost.phases["comm"].energy_j, "sim_idle_j": cost.phases["idle"].energy_j,
        "selected": float(train_samples), "streamed": float(warmup_samples),
    })


def client_evaluate(cfg: Config, partition_id: int, global_state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss and accuracy of the global model on this client's share of the test set."""
    setup = setup_for(cfg)
    setup.model.to(setup.device).load_state_dict(global_state)
    ids = setup.test_parts[partition_id]
    loss, acc = evaluate(setup.model, setup.data.tensor("test", ids), setup.data.labels("test", ids))
    return {"num-examples": float(len(ids)), "loss": loss, "accuracy": acc, "partition_id": float(partition_id)}
