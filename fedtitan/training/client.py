"""One federated client round, framework-free: what a Flower ClientApp calls.

``client_round`` takes the run config, the client's partition id, the global weights, the
client's persistent state (stream position, selector buffer, pruning subset, battery) and
what the server's strategy asked for (e.g. FedProx's ``proximal-mu``), trains within the
device's budgets, and returns new weights, its report (:class:`fedtitan.wire.ClientReport`, the
device by name) and the new state. The per-process set-up lives in :mod:`fedtitan.training.setup`,
injected faults in :mod:`fedtitan.training.faults`. The two training regimes, ``_streaming`` and
``_static``, read a frozen :class:`RoundContext` and return their :class:`Work` (what they did and
what it cost), which the round assembles into the report.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from fedtitan.compute import DeviceData, forget_entries, load_weights, seed_torch, to_cpu_state
from fedtitan.config import Config
from fedtitan.data import DataStream, NoiseSpec
from fedtitan.devices import Battery, MeasuredMeter, affordable_units
from fedtitan.devices.budgets import adaptive_ratio, check_memory, round_budget
from fedtitan.devices.catalog import DeviceProfile
from fedtitan.devices.cost import (
    RoundCost,
    auto_buffer_size,
    static_round,
    streaming_round,
    train_cost,
)
from fedtitan.seeding import keyed_seeds
from fedtitan.selection import build_selector, prune
from fedtitan.selection.pruning import WARMUP_PRUNERS, normalise_scores
from fedtitan.selection.selectors import camel_flops, info_keys
from fedtitan.status import Status
from fedtitan.training.common import Proximal, evaluate, lr_at
from fedtitan.training.faults import FaultPlan, InjectedDrop, InjectedFault
from fedtitan.training.setup import (
    Setup,
    data_on,
    device_of,
    fleet_dynamics,
    setup_for,
    train_units,
)
from fedtitan.training.static import (
    StaticConfig,
    StaticResult,
    train_static,
    warmup,
    warmup_samples_total,
)
from fedtitan.training.streaming import StreamingConfig, train_streaming
from fedtitan.wire import ACCURACY, LOSS, NUM_EXAMPLES, PARTITION_ID, PROXIMAL_MU_KEY, ClientReport

__all__ = ["RoundContext", "RoundOutput", "client_evaluate", "client_round"]


@dataclass(frozen=True)
class RoundOutput:
    """A client round's new weights, its report and the state the client continues from."""

    state_dict: dict[str, torch.Tensor]
    report: ClientReport
    state: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        """The report's numbers as they travel (a train reply's MetricRecord)."""
        return self.report.to_wire()[0]


@dataclass(frozen=True)
class RoundContext:
    """What a regime's round works with, fixed at the round's start. ``state`` is the client's
    persistent state: the regimes leave in it what the next round continues from."""

    cfg: Config
    setup: Setup
    data: DeviceData  # the dataset's tensors on the training unit
    profile: DeviceProfile  # as the device is at this moment (the fleet's dynamics applied)
    partition_id: int
    server_round: int
    select_dev: torch.device
    rng: np.random.Generator  # seeded from (seed, server_round, partition_id)
    prox: Proximal | None  # FedProx's term, anchored at the global weights
    budget_j: float | None  # the most this round may spend
    state: dict[str, Any]
    schedule_round: int  # the round the learning-rate schedule reads


@dataclass(frozen=True)
class SimCost:
    """The simulated round and its phases, as the report carries them."""

    time_s: float = 0.0
    energy_j: float = 0.0
    train_s: float = 0.0  # training, warm-up included
    select_s: float = 0.0
    comm_s: float = 0.0
    train_j: float = 0.0
    select_j: float = 0.0
    comm_j: float = 0.0
    idle_j: float = 0.0

    @classmethod
    def of(cls, cost: RoundCost) -> SimCost:
        ph = cost.phases
        train, warm, select = ph["train"], ph.get("warmup"), ph.get("select")
        return cls(
            time_s=cost.time_s, energy_j=cost.energy_j,
            train_s=train.time_s + warm.time_s if warm is not None else train.time_s,
            select_s=select.time_s if select is not None else 0.0, comm_s=ph["comm"].time_s,
            train_j=train.energy_j + warm.energy_j if warm is not None else train.energy_j,
            select_j=select.energy_j if select is not None else 0.0, comm_j=ph["comm"].energy_j, idle_j=ph["idle"].energy_j,
        )


@dataclass(frozen=True)
class Work:
    """What a regime did in a round and what it cost (nothing at all when it declined)."""

    status: Status
    sim: SimCost = SimCost()
    num_examples: int = 0
    train_loss: float = 0.0
    streamed: int = 0  # streaming: samples streamed; static: samples warmed up
    selected: int = 0  # streaming: samples selected; static: samples trained
    steps: int = 0
    train_wall_ms: float = 0.0
    select_wall_ms: float = 0.0
    sync_wall_ms: float = 0.0
    steps_wall_ms: float = 0.0
    rho: float = 1.0
    buffer_size: int = 0  # candidates per selection (streaming)
    info: Mapping[str, float] = field(default_factory=dict)  # the selector's info_keys: mean over the selections


def client_round(
    cfg: Config, partition_id: int, global_state: dict[str, torch.Tensor], state: dict[str, Any] | None,
    server_round: int, device: str | None = None, meter: str | None = None,
    strategy_config: Mapping[str, Any] | None = None, round_start_s: float = 0.0, schedule_round: int | None = None,
) -> RoundOutput:
    """One round of local training on ``partition_id``'s data as its device would do it.

    ``strategy_config``: what the server's strategy added to the train config
    (``proximal-mu`` turns on FedProx's proximal term in both regimes). ``round_start_s``:
    the virtual clock at the round's start, where the fleet's dynamics are read.
    ``schedule_round``: the round the learning-rate schedule reads (default ``server_round``;
    an asynchronous run's dispatches outnumber its server steps, and the schedule follows the steps)."""
    setup = setup_for(cfg)
    state = dict(state or {})
    if not 0 <= partition_id < len(setup.parts):
        raise ValueError(f"partition-id {partition_id} is outside 0..{len(setup.parts) - 1}")
    factors = fleet_dynamics(cfg).factors(partition_id, round_start_s)
    profile = factors.apply(device_of(cfg, partition_id, device, setup))  # as the device is at this moment
    meter = meter or cfg.fleet.meter
    train_dev, select_dev = train_units(cfg, profile, meter, setup)
    model = setup.model
    if next(model.parameters()).device != train_dev:  # only where a measured board trains on another unit
        model = model.to(train_dev)  # (.to walks every module even when nothing moves)
        forget_entries(model)
    load_weights(model, global_state)  # the one copy in (CPU arrays -> the training unit)
    data = data_on(cfg, train_dev, setup)
    mu = float((strategy_config or {}).get(PROXIMAL_MU_KEY, 0.0))
    prox = Proximal.at(model, mu)  # anchored at the global weights just loaded
    seeds = keyed_seeds(cfg.run.seed, server_round, partition_id)
    rng = np.random.Generator(np.random.PCG64(seeds))
    seed_torch(int(seeds.generate_state(1)[0]))
    faults = FaultPlan.draw(cfg.faults, cfg.run.seed, server_round, partition_id)
    if faults.exception:
        raise InjectedFault(f"injected client failure (partition {partition_id}, round {server_round})")

    batch = cfg.selection.batch_size if cfg.regime == "streaming" else cfg.pruning.batch_size
    check_memory(profile, setup.memory_bytes, batch)
    battery = Battery(profile.battery_j, state.get("battery_j"))
    extra = {k: math.nan for k in (info_keys(cfg.selection.method) if cfg.regime == "streaming" else ())}
    report = ClientReport(partition_id, profile.name, measured=meter == "measured", proximal_mu=mu,
                          available=bool(factors.available), speed_factor=factors.speed_factor,
                          select_share=factors.select_share, bandwidth_factor=factors.bandwidth_factor, extra=extra)
    if not factors.available:  # offline at this moment (its trace or dynamics): no work, no energy
        return RoundOutput(global_state, replace(report, status=Status.UNAVAILABLE), state)
    if not battery.available:
        return RoundOutput(global_state, replace(report, status=Status.UNAVAILABLE, battery_j=0.0), state)

    measured = MeasuredMeter() if meter == "measured" else None
    if measured is not None:
        measured.start()
    t_wall = time.perf_counter()
    ctx = RoundContext(cfg, setup, data, profile, partition_id, server_round, select_dev, rng, prox,
                       round_budget(profile.energy_budget_j, battery.level_j), state,
                       server_round if schedule_round is None else schedule_round)
    work = _streaming(ctx) if cfg.regime == "streaming" else _static(ctx)
    wall_s = time.perf_counter() - t_wall
    energy_available, energy_j = True, work.sim.energy_j
    if measured is not None:
        m = measured.stop()
        wall_s, energy_available = m.time_s, m.energy_j is not None
        energy_j = m.energy_j if m.energy_j is not None else math.nan
    battery.spend(energy_j if meter == "measured" and energy_available else work.sim.energy_j)
    if battery.level_j is not None:
        state["battery_j"] = battery.level_j
    if faults.drop:
        raise InjectedDrop(f"client dropped mid-round (partition {partition_id}, round {server_round})")
    new_state = to_cpu_state(model)  # the one copy out
    faults.corrupt(new_state, global_state, cfg.faults.scale_factor)
    sim = work.sim
    report = replace(
        report, status=work.status, num_examples=work.num_examples, train_loss=work.train_loss,
        sim_time_s=sim.time_s * cfg.faults.slow_factor if faults.slow else sim.time_s, sim_energy_j=sim.energy_j,
        sim_train_s=sim.train_s, sim_select_s=sim.select_s, sim_comm_s=sim.comm_s, sim_train_j=sim.train_j,
        sim_select_j=sim.select_j, sim_comm_j=sim.comm_j, sim_idle_j=sim.idle_j,
        train_wall_ms=work.train_wall_ms, select_wall_ms=work.select_wall_ms, sync_wall_ms=work.sync_wall_ms,
        steps_wall_ms=work.steps_wall_ms, train_on_gpu=train_dev.type != "cpu", select_on_gpu=select_dev.type != "cpu",
        streamed=work.streamed, selected=work.selected, steps=work.steps, rho=work.rho, buffer_size=work.buffer_size,
        fault_scaled=faults.scale, wall_s=wall_s, energy_j=energy_j, energy_available=energy_available,
        battery_j=battery.level_j, extra={k: float(work.info.get(k, math.nan)) for k in extra},
    )
    return RoundOutput(new_state, report, state)


def _streaming(ctx: RoundContext) -> Work:
    """Titan or a baseline selector over the client's stream, as many steps as the budget allows."""
    cfg, setup, profile, pid, state = ctx.cfg, ctx.setup, ctx.profile, ctx.partition_id, ctx.state
    s, d = cfg.selection, cfg.data
    noise = NoiseSpec(d.feature_noise, d.feature_sigma, d.label_noise)
    stream = DataStream(ctx.data, setup.parts[pid], s.velocity, cfg.run.seed, pid, noise)
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
    candidates = int(buffer if coarse else s.velocity)  # per selection
    if coarse:  # predict with the most the filter can score per step: v new + the kept
        kw["coarse_samples"] = s.velocity + (buffer if s.carry_over else 0)
    fixed = streaming_round(profile, steps=0, **kw)  # exchange + idle during it
    one = streaming_round(profile, steps=1, **kw)
    decision = affordable_units(ctx.budget_j, fixed.energy_j, one.energy_j - fixed.energy_j, s.local_steps)
    if decision.units == 0:  # not even one step fits: say so before spending anything
        return Work(Status.DECLINED, buffer_size=candidates)
    global_step = (ctx.schedule_round - 1) * s.local_steps
    lr = lr_at(s.lr, "step", global_step, 0, decay=s.lr_decay, every=s.lr_decay_every)
    scfg = StreamingConfig(steps=decision.units, batch_size=s.batch_size, velocity=s.velocity, lr=lr,
                           pipeline=cfg.run.pipeline)
    records = train_streaming(setup.model, stream, selector, scfg, ctx.rng, select_device=ctx.select_dev,
                              prox=ctx.prox)
    if coarse:  # bill what ran: the samples the coarse filter actually scored
        kw["coarse_samples"] = float(np.mean([r.info.get("coarse_forwards", s.velocity) for r in records]))
    cost = streaming_round(profile, steps=decision.units, **kw)
    state["stream"] = stream.state()
    state["selector"] = selector.state_dict()
    selected = sum(r.selected for r in records)
    return Work(
        Status.OK if decision.status == "full" else Status(decision.status), SimCost.of(cost),
        num_examples=selected, train_loss=float(np.mean([r.loss for r in records])),
        streamed=sum(r.streamed for r in records), selected=selected, steps=len(records),
        train_wall_ms=float(sum(r.train_ms for r in records)),
        select_wall_ms=float(sum(r.select_ms for r in records) + records[0].info.get("pipeline_fill_ms", 0.0)),
        sync_wall_ms=float(sum(r.sync_ms for r in records)), steps_wall_ms=float(sum(r.wall_ms for r in records)),
        buffer_size=candidates, info=_mean_info(records, info_keys(s.method)),
    )


def _mean_info(records: list[Any], keys: tuple[str, ...]) -> dict[str, float]:
    """Each of ``keys`` averaged over the selections that reported it (NaN: none did)."""
    out = {}
    for k in keys:
        values = [float(r.info[k]) for r in records if isinstance(r.info.get(k), int | float)]
        out[k] = float(np.mean(values)) if values else math.nan
    return out


def _static(ctx: RoundContext) -> Work:
    """Pruned epochs. The warm-up (``WARMUP_PRUNERS``) runs in the first
    rounds the client is sampled: all of it when the round's budget allows, else as many
    iterations as fit, round after round (the loss sums wait in the client's state) until it
    is complete; then the client prunes and trains on the kept subset with what the budget
    leaves. A round spends at most ``budget_j``; one that cannot afford a single unit of work
    declines before spending anything."""
    cfg, setup, profile, state = ctx.cfg, ctx.setup, ctx.profile, ctx.state
    p = cfg.pruning
    idx = setup.parts[ctx.partition_id]
    n = len(idx)
    scfg = StaticConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer,
                        schedule=p.schedule)
    fwd, mb = setup.forward_flops, setup.model_bytes
    per_sample = train_cost(profile, fwd, 1)
    unit_j = per_sample.energy_j + profile.idle_w * per_sample.time_s  # one training sample, idle included
    spent_j = static_round(profile, forward_flops=fwd, train_samples=0, model_bytes=mb).energy_j  # the exchange
    warm = StaticResult(0, 0, 0.0, 0.0)  # this round's warm-up
    if "kept" not in state and p.method in WARMUP_PRUNERS:
        total_iters = max(1, math.ceil(p.warmup_epochs * n / p.batch_size))
        total = warmup_samples_total(n, p.batch_size, total_iters)
        done = int(state.get("warmup_done", 0))  # warm-up samples processed in earlier rounds
        w = affordable_units(ctx.budget_j, spent_j, unit_j, total - done)  # warm-up samples this round
        if w.units == 0:
            return Work(Status.DECLINED)
        loss_sum, seen, warm = warmup(setup.model, ctx.data, idx, math.ceil(w.units / p.batch_size), scfg, ctx.rng,
                                      ctx.prox, state.get("warmup_loss_sum"), state.get("warmup_seen"),
                                      max_samples=w.units)
        spent_j += unit_j * warm.samples
        state["warmup_done"] = done + warm.samples
        if state["warmup_done"] < total:  # more warm-up next time; this round's update is the warm-up's
            state["warmup_loss_sum"], state["warmup_seen"] = loss_sum, seen
            return _static_work(ctx, Status.REDUCED, warm, None, loss=warm.mean_loss, examples=warm.samples,
                                rho=0.0)
        for key in ("warmup_loss_sum", "warmup_seen"):
            state.pop(key, None)
        state["kept"], state["rho"] = _prune(ctx, normalise_scores(loss_sum, seen, p.unseen))
    elif "kept" not in state:
        state["kept"], state["rho"] = _prune(ctx, None)
    kept_ids = np.asarray(state["kept"])
    decision = affordable_units(ctx.budget_j, spent_j, unit_j * p.epochs, len(kept_ids))  # kept samples to train
    if decision.units == 0 and warm.samples == 0:
        return Work(Status.DECLINED)
    status = Status.OK
    if decision.status != "full" or warm.samples and decision.units == 0:
        status = Status.REDUCED
    use = kept_ids[: decision.units]
    rho = float(state["rho"]) * decision.units / max(len(kept_ids), 1)
    if not len(use):  # the warm-up was this round's work
        return _static_work(ctx, status, warm, None, loss=0.0, examples=warm.samples, rho=rho)
    steps_per_round = p.epochs * math.ceil(len(use) / p.batch_size)
    res = train_static(setup.model, ctx.data, use, scfg, ctx.rng, step_offset=(ctx.schedule_round - 1) * steps_per_round,
                       total_steps=cfg.run.rounds * steps_per_round, prox=ctx.prox)
    return _static_work(ctx, status, warm, res, loss=res.mean_loss, examples=len(use), rho=rho)


def _static_work(ctx: RoundContext, status: Status, warm: StaticResult, trained: StaticResult | None, *,
                 loss: float, examples: int, rho: float) -> Work:
    """A static round's work: this round's warm-up and training (None: none), billed together."""
    train_samples, wall_s, steps = (trained.samples, trained.wall_s, trained.steps) if trained else (0, 0.0, 0)
    cost = static_round(ctx.profile, forward_flops=ctx.setup.forward_flops, train_samples=train_samples,
                        warmup_samples=warm.samples, model_bytes=ctx.setup.model_bytes)
    return Work(status, SimCost.of(cost), num_examples=examples, train_loss=loss, streamed=warm.samples,
                selected=train_samples, steps=steps + warm.steps, train_wall_ms=(wall_s + warm.wall_s) * 1e3, rho=rho)


def _prune(ctx: RoundContext, scores: np.ndarray | None) -> tuple[np.ndarray, float]:
    """(kept sample ids, rho): ``floor(rho * n)`` of the client's samples (``pruning.adaptive``:
    the largest rho whose training fits the per-round budget in the rounds after the warm-up)."""
    p, setup = ctx.cfg.pruning, ctx.setup
    idx = setup.parts[ctx.partition_id]
    n = len(idx)
    rho = p.ratio
    if p.adaptive:
        rho = adaptive_ratio(ctx.profile, rho=rho, n_samples=n, epochs=p.epochs, forward_flops=setup.forward_flops,
                             model_bytes=setup.model_bytes)
    kept = prune(p.method, n, rho, scores=scores, rng=ctx.rng, labels=setup.dataset.y_train[idx])
    return idx[kept], rho


def client_evaluate(cfg: Config, partition_id: int, global_state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss and accuracy of the global model on this client's share of the test set."""
    setup = setup_for(cfg)
    setup.model.to(setup.device).load_state_dict(global_state)
    ids = setup.test_parts[partition_id]
    loss, acc = evaluate(setup.model, setup.data.tensor("test", ids), setup.data.labels("test", ids))
    return {NUM_EXAMPLES: float(len(ids)), LOSS: loss, ACCURACY: acc, PARTITION_ID: float(partition_id)}
