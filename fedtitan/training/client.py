"""One federated client round, framework-free: what a Flower ClientApp calls.

``client_round`` takes the run config, the client's partition id, the global weights and the
client's persistent state (stream position, selector buffer, pruning subset, battery), trains
within the device's budgets, and returns new weights, flat numeric metrics and the new state.
Datasets, partitions and models are built once per process and cached.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedtitan.config import Config
from fedtitan.data import DataStream, NoiseSpec, load_dataset, partition
from fedtitan.data.dataset import Dataset
from fedtitan.devices import (
    Battery,
    FleetSpec,
    MeasuredMeter,
    affordable_units,
    device_for,
    get_profile,
    load_profiles,
)
from fedtitan.devices.budgets import adaptive_ratio, check_memory, training_memory_bytes
from fedtitan.devices.catalog import CATALOG, DeviceProfile
from fedtitan.devices.cost import static_round, streaming_round, train_cost
from fedtitan.models import build_model, count_forward_flops, param_bytes
from fedtitan.models.base import BlockModel
from fedtitan.selection import build_selector, prune
from fedtitan.selection.selectors import camel_flops
from fedtitan.training.common import evaluate, lr_at
from fedtitan.training.static import StaticConfig, train_static, warmup_scores
from fedtitan.training.streaming import StreamingConfig, train_streaming

STATUS = {"ok": 0, "reduced": 1, "declined": 2, "unavailable": 3}
DEVICE_IDS = {name: i for i, name in enumerate(CATALOG)}


class InjectedFault(RuntimeError):
    """Raised by a client when config ``faults.exception`` asks for it (for testing)."""


class InjectedDrop(RuntimeError):
    """A client that drops out mid-round (``faults.drop``): it trains, then never replies."""


@dataclass
class Setup:
    dataset: Dataset
    parts: list[np.ndarray]
    test_parts: list[np.ndarray]
    model: BlockModel
    forward_flops: int
    block_flops: int
    model_bytes: int
    memory_bytes: int
    extra_profiles: dict[str, DeviceProfile]


def model_options(cfg: Config) -> dict[str, Any]:
    return {"width": cfg.model.width} if cfg.model.width is not None and cfg.model.name in (
        "cnn", "speech_cnn", "har_cnn", "resnet18", "resnet34") else {}


@functools.lru_cache(maxsize=4)
def _dataset(name: str, data_dir: str | None, path: str | None, seed: int) -> Dataset:
    return load_dataset(name, data_dir=data_dir, path=path, seed=seed)


@functools.lru_cache(maxsize=4)
def _subsampled(name: str, data_dir: str | None, path: str | None, seed: int, max_train: int) -> Dataset:
    import dataclasses

    from fedtitan.data import stratified_holdout

    ds = _dataset(name, data_dir, path, seed)
    if max_train >= len(ds.y_train):
        return ds
    _, keep = stratified_holdout(ds.y_train, max_train / len(ds.y_train), seed)
    g = ds.groups_train[keep] if ds.groups_train is not None else None
    return dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep], groups_train=g)


def dataset_for(cfg: Config) -> Dataset:
    """The run's dataset (cached per process); ``data.max_train`` keeps a seeded stratified subset."""
    d = cfg.data
    if d.max_train is not None:
        return _subsampled(d.dataset, d.data_dir, d.path, cfg.run.seed, d.max_train)
    return _dataset(d.dataset, d.data_dir, d.path, cfg.run.seed)


def build_global_model(cfg: Config, ds: Dataset) -> BlockModel:
    torch.manual_seed(cfg.run.seed)
    return build_model(cfg.model.name, ds.input_shape, ds.num_classes, **model_options(cfg))


def partition_for(cfg: Config, ds: Dataset) -> list[np.ndarray]:
    """The run's client partitions of ``ds``'s training set (deterministic per seed)."""
    d = cfg.data
    return partition(ds.y_train, d.partition, d.num_clients, seed=cfg.run.seed, alpha=d.alpha,
                     classes_per_client=d.classes_per_client, min_samples=d.min_samples, groups=ds.groups_train)


@functools.lru_cache(maxsize=4)
def _setup(cfg_json: str) -> Setup:
    cfg = Config.from_json(cfg_json)
    ds = dataset_for(cfg)
    d = cfg.data
    parts = partition_for(cfg, ds)
    test_perm = np.random.default_rng([cfg.run.seed, 0x7E57]).permutation(len(ds.y_test))
    test_parts = [np.sort(p) for p in np.array_split(test_perm, d.num_clients)]
    model = build_global_model(cfg, ds)
    batch = cfg.selection.batch_size if cfg.regime == "streaming" else cfg.pruning.batch_size
    extra = load_profiles(cfg.fleet.profiles) if cfg.fleet.profiles else {}
    return Setup(
        dataset=ds, parts=parts, test_parts=test_parts, model=model,
        forward_flops=count_forward_flops(model, ds.input_shape),
        block_flops=count_forward_flops(model, ds.input_shape, n_blocks=cfg.selection.n_blocks),
        model_bytes=param_bytes(model), memory_bytes=training_memory_bytes(model, ds.input_shape, batch),
        extra_profiles=extra,
    )


def setup_for(cfg: Config) -> Setup:
    return _setup(cfg.to_json())


def fleet_spec(cfg: Config) -> FleetSpec:
    f = cfg.fleet
    if f.devices:
        return FleetSpec(size=cfg.data.num_clients, devices=tuple(f.devices), variation=f.variation)
    return FleetSpec.from_mix(f.mix, size=cfg.data.num_clients, variation=f.variation)


def device_of(cfg: Config, partition_id: int, override: str | None = None) -> DeviceProfile:
    """Catalog/TOML profile named by the node (deployment), else the fleet's device for this client."""
    extra = setup_for(cfg).extra_profiles
    if override:
        return get_profile(override, extra)
    return device_for(fleet_spec(cfg), cfg.run.seed, partition_id, extra)


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
        "select_wall_ms": 0.0, "sync_wall_ms": 0.0, "streamed": 0.0, "selected": 0.0, "steps": 0.0, "rho": 1.0,
        "status": float(STATUS["ok"]), "measured": 0.0, "wall_s": 0.0, "energy_j": 0.0,
        "energy_available": 1.0, "battery_j": -1.0,
    }


def client_round(
    cfg: Config, partition_id: int, global_state: dict[str, torch.Tensor], state: dict[str, Any] | None,
    server_round: int, device: str | None = None, meter: str | None = None,
) -> RoundOutput:
    setup = setup_for(cfg)
    state = dict(state or {})
    if not 0 <= partition_id < len(setup.parts):
        raise ValueError(f"partition-id {partition_id} is outside 0..{len(setup.parts) - 1}")
    model = setup.model
    model.load_state_dict(global_state)
    profile = device_of(cfg, partition_id, device)
    meter = meter or cfg.fleet.meter
    seed_seq = [cfg.run.seed, server_round, partition_id]
    rng = np.random.default_rng(seed_seq)
    torch.manual_seed(int(np.random.SeedSequence(seed_seq).generate_state(1)[0]))
    fault_rng = np.random.default_rng([*seed_seq, 0xFA17])
    faults = cfg.faults
    draws = fault_rng.random(4)
    if draws[0] < faults.exception:
        raise InjectedFault(f"injected client failure (partition {partition_id}, round {server_round})")

    batch = cfg.selection.batch_size if cfg.regime == "streaming" else cfg.pruning.batch_size
    check_memory(profile, setup.memory_bytes, batch)
    battery = Battery(profile.battery_j, state.get("battery_j"))
    metrics = _base_metrics(partition_id, profile, 0)
    metrics["measured"] = 1.0 if meter == "measured" else 0.0
    if not battery.available:
        metrics["status"] = float(STATUS["unavailable"])
        metrics["battery_j"] = 0.0
        return RoundOutput(global_state, metrics, state)

    measured = MeasuredMeter() if meter == "measured" else None
    if measured is not None:
        measured.start()
    t_wall = time.perf_counter()
    if cfg.regime == "streaming":
        _streaming(cfg, setup, partition_id, profile, state, server_round, rng, metrics)
    else:
        _static(cfg, setup, partition_id, profile, state, server_round, rng, metrics)
    metrics["wall_s"] = time.perf_counter() - t_wall
    if measured is not None:
        m = measured.stop()
        metrics["wall_s"] = m.time_s
        metrics["energy_available"] = 1.0 if m.energy_j is not None else 0.0
        metrics["energy_j"] = m.energy_j if m.energy_j is not None else math.nan
    else:
        metrics["energy_j"] = metrics["sim_energy_j"]
    if draws[2] < faults.slow:
        metrics["sim_time_s"] *= faults.slow_factor
    spent = metrics["energy_j"] if meter == "measured" and metrics["energy_available"] else metrics["sim_energy_j"]
    battery.spend(spent)
    if battery.level_j is not None:
        state["battery_j"] = battery.level_j
        metrics["battery_j"] = battery.level_j
    if draws[3] < faults.drop:
        raise InjectedDrop(f"client dropped mid-round (partition {partition_id}, round {server_round})")
    new_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if draws[1] < faults.nan:
        for v in new_state.values():
            if v.is_floating_point():
                v.fill_(math.nan)
                break
    return RoundOutput(new_state, metrics, state)


def _streaming(cfg: Config, setup: Setup, pid: int, profile: DeviceProfile, state: dict[str, Any],
               server_round: int, rng: np.random.Generator, metrics: dict[str, float]) -> None:
    s, d = cfg.selection, cfg.data
    noise = NoiseSpec(d.feature_noise, d.feature_sigma, d.label_noise)
    stream = DataStream(setup.dataset, setup.parts[pid], s.velocity, cfg.run.seed, pid, noise)
    if "stream" in state:
        stream.restore(state["stream"])
    opts: dict[str, Any] = {}
    if s.method == "titan":
        opts = {"buffer_size": s.buffer_size, "n_blocks": s.n_blocks, "pool": s.pool, "weighting": s.weighting,
                "coarse": s.coarse, "metric": s.metric, "carry_over": s.carry_over, "stratify": s.stratify, "seed": cfg.run.seed * 1_000_003 + pid}
    elif s.method in ("cis", "is"):
        opts = {"weighting": s.weighting}
    selector = build_selector(s.method, **opts)
    if "selector" in state:
        selector.load_state_dict(state["selector"])
    candidates = s.buffer_size if s.method == "titan" else s.velocity
    kw: dict[str, Any] = dict(forward_flops=setup.forward_flops, block_flops=setup.block_flops, batch_size=s.batch_size,
              velocity=s.velocity, candidates=candidates, model_bytes=setup.model_bytes,
              pipelined=cfg.run.pipeline, coarse=s.method == "titan", gradient_selection=s.method not in ("rs", "camel"),
              extra_select_flops=camel_flops(s.batch_size, s.velocity, math.prod(setup.dataset.input_shape))
              if s.method == "camel" else 0.0)
    if s.method == "titan":  # predict with the most the filter can score per step: v new + the kept
        kw["coarse_samples"] = s.velocity + (s.buffer_size if s.carry_over else 0)
    fixed = streaming_round(profile, steps=0, **kw)  # exchange + idle during it
    one = streaming_round(profile, steps=1, **kw)
    decision = affordable_units(profile.energy_budget_j, fixed.energy_j, one.energy_j - fixed.energy_j, s.local_steps)
    metrics["status"] = float(STATUS["ok" if decision.status == "full" else decision.status])
    if decision.units == 0:
        metrics["sim_time_s"], metrics["sim_energy_j"] = fixed.time_s, fixed.energy_j
        return
    global_step = (server_round - 1) * s.local_steps
    lr = lr_at(s.lr, "step", global_step, 0, decay=s.lr_decay, every=s.lr_decay_every)
    scfg = StreamingConfig(steps=decision.units, batch_size=s.batch_size, velocity=s.velocity, lr=lr,
                           pipeline=cfg.run.pipeline)
    records = train_streaming(setup.model, stream, selector, scfg, rng)
    if s.method == "titan":  # bill what ran: the samples the coarse filter actually scored
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
        "streamed": float(sum(r.streamed for r in records)), "selected": float(sum(r.selected for r in records)),
        "steps": float(len(records)),
    })


def _static(cfg: Config, setup: Setup, pid: int, profile: DeviceProfile, state: dict[str, Any],
            server_round: int, rng: np.random.Generator, metrics: dict[str, float]) -> None:
    p = cfg.pruning
    idx = setup.parts[pid]
    n = len(idx)
    scfg = StaticConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer,
                        schedule=p.schedule)
    warmup_samples = 0
    if "kept" not in state:
        rho = p.ratio
        if p.adaptive:
            rho = adaptive_ratio(profile, rho=rho, n_samples=n, epochs=p.epochs, forward_flops=setup.forward_flops,
                                 model_bytes=setup.model_bytes)
        if p.method == "warmup-loss":
            iters = max(1, math.ceil(p.warmup_epochs * n / p.batch_size))
            scores, res = warmup_scores(setup.model, setup.dataset, idx, iters, scfg, rng, p.unseen)
            warmup_samples = res.samples
            kept = prune("warmup-loss", n, rho, scores=scores)
        else:
            kept = prune(p.method, n, rho, rng=rng)
        state["kept"] = idx[kept]
        state["rho"] = rho
    kept_ids = np.asarray(state["kept"])
    per_sample = train_cost(profile, setup.forward_flops, 1)
    fixed = static_round(profile, forward_flops=setup.forward_flops, train_samples=0,
                         warmup_samples=warmup_samples, model_bytes=setup.model_bytes)
    unit_j = per_sample.energy_j + profile.idle_w * per_sample.time_s
    decision = affordable_units(profile.energy_budget_j, fixed.energy_j, unit_j * p.epochs, len(kept_ids))
    metrics["status"] = float(STATUS["ok" if decision.status == "full" else decision.status])
    metrics["rho"] = float(state["rho"]) * decision.units / max(len(kept_ids), 1)
    if decision.units == 0:
        metrics["sim_time_s"], metrics["sim_energy_j"] = fixed.time_s, fixed.energy_j
        return
    use = kept_ids[: decision.units]
    steps_per_round = p.epochs * math.ceil(len(use) / p.batch_size)
    res = train_static(setup.model, setup.dataset, use, scfg, rng, step_offset=(server_round - 1) * steps_per_round,
                       total_steps=cfg.run.rounds * steps_per_round)
    cost = static_round(profile, forward_flops=setup.forward_flops, train_samples=res.samples,
                        warmup_samples=warmup_samples, model_bytes=setup.model_bytes)
    metrics.update({
        "num-examples": float(len(use)), "train_loss": res.mean_loss, "sim_time_s": cost.time_s,
        "sim_energy_j": cost.energy_j, "sim_train_s": cost.phases["train"].time_s + cost.phases["warmup"].time_s,
        "sim_comm_s": cost.phases["comm"].time_s, "train_wall_ms": res.wall_s * 1e3, "steps": float(res.steps),
        "sim_train_j": cost.phases["train"].energy_j + cost.phases["warmup"].energy_j,
        "sim_comm_j": cost.phases["comm"].energy_j, "sim_idle_j": cost.phases["idle"].energy_j,
        "selected": float(res.samples), "streamed": float(warmup_samples),
    })


def client_evaluate(cfg: Config, partition_id: int, global_state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss and accuracy of the global model on this client's share of the test set."""
    setup = setup_for(cfg)
    setup.model.load_state_dict(global_state)
    ids = setup.test_parts[partition_id]
    loss, acc = evaluate(setup.model, setup.dataset.tensor("test", ids), setup.dataset.labels("test", ids))
    return {"num-examples": float(len(ids)), "loss": loss, "accuracy": acc, "partition_id": float(partition_id)}
