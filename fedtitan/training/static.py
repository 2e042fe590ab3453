"""Static local training over a (pruned) subset, and the warm-up that scores samples.

Algorithm 1 of the pruning paper: T0 warm-up SGD iterations on the full local set, where
each observed sample's loss (with the weights before that iteration's update, i.e. the same
forward pass that computes the gradient) is accumulated; scores are normalised by how often
each sample was observed; then training continues from the warm-up weights on the kept subset.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from fedtitan.data.dataset import TensorSource
from fedtitan.models.base import BlockModel
from fedtitan.selection.pruning import normalise_scores
from fedtitan.training.common import Proximal, lr_at, make_optimizer, set_lr, weighted_step


@dataclass(frozen=True)
class StaticConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "cosine"
    momentum: float = 0.0
    weight_decay: float = 0.0


@dataclass(frozen=True)
class StaticResult:
    steps: int
    samples: int
    mean_loss: float
    wall_s: float


def _batches(n: int, batch_size: int, rng: np.random.Generator, steps: int) -> list[np.ndarray]:
    """``steps`` minibatches as positions in ``range(n)``: shuffled passes, reshuffled every pass."""
    out: list[np.ndarray] = []
    order = rng.permutation(n)
    pos = 0
    while len(out) < steps:
        if pos >= n:
            order, pos = rng.permutation(n), 0
        out.append(order[pos : pos + batch_size])
        pos += batch_size
    return out


def warmup(
    model: BlockModel, dataset: TensorSource, indices: np.ndarray, iterations: int, cfg: StaticConfig,
    rng: np.random.Generator, prox: Proximal | None = None,
    loss_sum: np.ndarray | None = None, seen: np.ndarray | None = None, max_samples: int | None = None,
) -> tuple[np.ndarray, np.ndarray, StaticResult]:
    """Train ``iterations`` warm-up steps on ``indices``, adding each observed sample's loss
    to ``loss_sum`` and its count to ``seen`` (fresh zeros if not given: a warm-up spread
    over rounds passes the running sums); at most ``max_samples`` samples (the last batch is
    cut short). Returns the sums and what ran."""
    n = len(indices)
    loss_sum = np.zeros(n) if loss_sum is None else loss_sum.copy()
    seen = np.zeros(n, dtype=np.int64) if seen is None else seen.copy()
    opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    t0 = time.perf_counter()
    total, samples = 0.0, 0
    for pos in _batches(n, cfg.batch_size, rng, iterations):
        if max_samples is not None:
            pos = pos[: max_samples - samples]
            if not len(pos):
                break
        ids = indices[pos]
        loss, per = weighted_step(model, opt, dataset.tensor("train", ids), dataset.labels("train", ids), prox=prox)
        np.add.at(loss_sum, pos, per.double().cpu().numpy())
        np.add.at(seen, pos, 1)
        total += loss
        samples += len(pos)
    return loss_sum, seen, StaticResult(iterations, samples, total / max(iterations, 1), time.perf_counter() - t0)


def warmup_samples_total(n: int, batch_size: int, iterations: int) -> int:
    """How many samples ``iterations`` warm-up steps over ``n`` process (a pass's last batch
    may be short), i.e. what a complete warm-up costs."""
    total, pos = 0, 0
    for _ in range(iterations):
        if pos >= n:
            pos = 0
        total += min(batch_size, n - pos)
        pos += batch_size
    return total


def warmup_scores(
    model: BlockModel, dataset: TensorSource, indices: np.ndarray, iterations: int, cfg: StaticConfig,
    rng: np.random.Generator, unseen: str = "mean", prox: Proximal | None = None,
) -> tuple[np.ndarray, StaticResult]:
    """Train ``iterations`` steps on ``indices`` and return per-sample mean warm-up losses."""
    loss_sum, seen, res = warmup(model, dataset, indices, iterations, cfg, rng, prox)
    return normalise_scores(loss_sum, seen, unseen), res


def train_static(
    model: BlockModel, dataset: TensorSource, indices: np.ndarray, cfg: StaticConfig, rng: np.random.Generator,
    step_offset: int = 0, total_steps: int | None = None, prox: Proximal | None = None,
) -> StaticResult:
    """``cfg.epochs`` epochs of minibatch training over ``indices`` (the kept subset)."""
    n = len(indices)
    steps = cfg.epochs * int(np.ceil(n / cfg.batch_size))
    total = total_steps if total_steps is not None else steps
    opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay)
    t0 = time.perf_counter()
    loss_total, samples = 0.0, 0
    for s, pos in enumerate(_batches(n, cfg.batch_size, rng, steps)):
        set_lr(opt, lr_at(cfg.lr, cfg.schedule, step_offset + s, total))
        ids = indices[pos]
        loss, _ = weighted_step(model, opt, dataset.tensor("train", ids), dataset.labels("train", ids), prox=prox)
        loss_total += loss
        samples += len(pos)
    return StaticResult(steps, samples, loss_total / max(steps, 1), time.perf_counter() - t0)
