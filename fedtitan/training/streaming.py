"""Streaming local training: stream v -> select B -> one weighted SGD step, k times.

With ``pipeline=True`` selection for step t+1 runs in a worker thread on a snapshot of the
model while step t trains (Titan's one-round delay): the batch trained at step t+1 was
chosen with the weights of step t. After both finish, the snapshot is re-synchronised with
the trained weights. The snapshot may live on another compute unit (``select_device``): a
Jetson Orin trains on its GPU and selects on its CPU, a Nano the reverse; streamed chunks
go to the selecting unit, the chosen batch comes back to the training unit, and the sync
copies the weights across. Per step the wall time of training, selection, synchronisation
and of the whole step is recorded (their difference is the overlap the pipeline bought).
With ``pipeline=False`` each step selects with the current model and then trains; a run is
then bit-for-bit reproducible for a seed.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from fedtitan.data.stream import Chunk, DataStream
from fedtitan.models.base import BlockModel
from fedtitan.selection.base import Selection, StreamingSelector
from fedtitan.training.common import Proximal, make_optimizer, set_lr, weighted_step


@dataclass(frozen=True)
class StepRecord:
    step: int
    loss: float
    train_ms: float
    select_ms: float
    sync_ms: float
    streamed: int
    selected: int
    info: dict[str, float] = field(default_factory=dict)
    wall_ms: float = 0.0  # the whole step as the device lived it (train || select, then sync)


@dataclass(frozen=True)
class StreamingConfig:
    steps: int = 3
    batch_size: int = 10
    velocity: int = 100
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    optimizer: str = "sgd"
    pipeline: bool = False


def _moved(chunk: Chunk, device: torch.device | None) -> Chunk:
    if device is None or chunk.x.device == device:
        return chunk
    return Chunk(x=chunk.x.to(device), y=chunk.y.to(device), ids=chunk.ids)


def _select(selector: StreamingSelector, stream: DataStream, model: BlockModel, cfg: StreamingConfig,
            rng: np.random.Generator, select_device: torch.device | None = None,
            train_device: torch.device | None = None) -> tuple[Selection, float]:
    """Stream v samples, let the selector see them and pick a batch; with two units, the
    chunk moves to the selecting unit and the batch back to the training unit."""
    t0 = time.perf_counter()
    chunk = _moved(stream.next(cfg.velocity), select_device)
    selector.observe(chunk, model)
    sel = selector.select(cfg.batch_size, model, rng)
    if train_device is not None and sel.x.device != train_device:
        sel = dataclasses.replace(sel, x=sel.x.to(train_device), y=sel.y.to(train_device))
    return sel, (time.perf_counter() - t0) * 1e3


def train_streaming(
    model: BlockModel,
    stream: DataStream,
    selector: StreamingSelector,
    cfg: StreamingConfig,
    rng: np.random.Generator,
    lr: float | None = None,
    select_device: torch.device | None = None,
    prox: Proximal | None = None,
) -> list[StepRecord]:
    """Run ``cfg.steps`` streaming steps on ``model`` in place; returns one record per step.

    ``select_device`` (pipeline only): the unit the selection snapshot lives on; default the
    model's own device."""
    opt = make_optimizer(model, cfg.optimizer, cfg.lr if lr is None else lr, cfg.momentum, cfg.weight_decay)
    if lr is not None:
        set_lr(opt, lr)
    records: list[StepRecord] = []
    stream.plan(cfg.steps)  # each step streams one chunk of v (read a block at a time)
    if not cfg.pipeline:
        for t in range(cfg.steps):
            sel, select_ms = _select(selector, stream, model, cfg, rng)
            t0 = time.perf_counter()
            loss, _ = weighted_step(model, opt, sel.x, sel.y, sel.weights, prox)
            train_ms = (time.perf_counter() - t0) * 1e3
            records.append(StepRecord(t, loss, train_ms, select_ms, 0.0, cfg.velocity, len(sel), sel.info,
                                      wall_ms=train_ms + select_ms))
        return records

    train_device = next(model.parameters()).device
    snapshot = copy.deepcopy(model).to(select_device or train_device).eval()
    unit = {"select_device": select_device, "train_device": train_device}
    sel, first_select_ms = _select(selector, stream, snapshot, cfg, rng, **unit)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtitan-select") as pool:
        for t in range(cfg.steps):
            t0 = time.perf_counter()
            future = pool.submit(_select, selector, stream, snapshot, cfg, rng, **unit) if t + 1 < cfg.steps else None
            loss, _ = weighted_step(model, opt, sel.x, sel.y, sel.weights, prox)
            train_ms = (time.perf_counter() - t0) * 1e3
            next_sel, select_ms = future.result() if future is not None else (None, 0.0)
            t1 = time.perf_counter()
            if next_sel is not None:
                with torch.no_grad():
                    for dst, src in zip(snapshot.state_dict().values(), model.state_dict().values(), strict=True):
                        dst.copy_(src)
            sync_ms = (time.perf_counter() - t1) * 1e3
            info = dict(sel.info)
            if t == 0:
                info["pipeline_fill_ms"] = first_select_ms
            records.append(StepRecord(t, loss, train_ms, select_ms, sync_ms, cfg.velocity, len(sel), info,
                                      wall_ms=(time.perf_counter() - t0) * 1e3))
            if next_sel is not None:
                sel = next_sel
    return records
