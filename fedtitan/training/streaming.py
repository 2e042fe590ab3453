"""Streaming local training: stream v -> select B -> one weighted SGD step, k times.

With ``pipeline=True`` selection for step t+1 runs in a worker thread on a snapshot of the
model while step t trains (Titan's one-round delay): the batch trained at step t+1 was
chosen with the weights of step t. After both finish, the snapshot is re-synchronised with
the trained weights. Per step the wall time of training, selection and synchronisation is
recorded. With ``pipeline=False`` each step selects with the current model and then trains;
a run is then bit-for-bit reproducible for a seed.
"""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from fedtitan.data.stream import DataStream
from fedtitan.models.base import BlockModel
from fedtitan.selection.base import Selection, StreamingSelector
from fedtitan.training.common import make_optimizer, set_lr, weighted_step


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


def _select(selector: StreamingSelector, stream: DataStream, model: BlockModel, cfg: StreamingConfig,
            rng: np.random.Generator) -> tuple[Selection, float]:
    t0 = time.perf_counter()
    chunk = stream.next(cfg.velocity)
    selector.observe(chunk, model)
    sel = selector.select(cfg.batch_size, model, rng)
    return sel, (time.perf_counter() - t0) * 1e3


def train_streaming(
    model: BlockModel,
    stream: DataStream,
    selector: StreamingSelector,
    cfg: StreamingConfig,
    rng: np.random.Generator,
    lr: float | None = None,
) -> list[StepRecord]:
    """Run ``cfg.steps`` streaming steps on ``model`` in place; returns one record per step."""
    opt = make_optimizer(model, cfg.optimizer, cfg.lr if lr is None else lr, cfg.momentum, cfg.weight_decay)
    if lr is not None:
        set_lr(opt, lr)
    records: list[StepRecord] = []
    if not cfg.pipeline:
        for t in range(cfg.steps):
            sel, select_ms = _select(selector, stream, model, cfg, rng)
            t0 = time.perf_counter()
            loss, _ = weighted_step(model, opt, sel.x, sel.y, sel.weights)
            train_ms = (time.perf_counter() - t0) * 1e3
            records.append(StepRecord(t, loss, train_ms, select_ms, 0.0, cfg.velocity, len(sel), sel.info))
        return records

    snapshot = copy.deepcopy(model).eval()
    sel, first_select_ms = _select(selector, stream, snapshot, cfg, rng)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fedtitan-select") as pool:
        for t in range(cfg.steps):
            future = pool.submit(_select, selector, stream, snapshot, cfg, rng) if t + 1 < cfg.steps else None
            t0 = time.perf_counter()
            loss, _ = weighted_step(model, opt, sel.x, sel.y, sel.weights)
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
            records.append(StepRecord(t, loss, train_ms, select_ms, sync_ms, cfg.velocity, len(sel), info))
            if next_sel is not None:
                sel = next_sel
    return records
