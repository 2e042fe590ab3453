"""Titan's coarse-grained filter: running class estimators + a scored candidate buffer.

The trap (docs/selection.md): with the paper's definitions, ``Rep(x,y) + Div(x,y)`` equals
``E||f(x')||^2 - ||E f(x')||^2`` for every x of class y, so a literal implementation ranks
nothing within a class. Here:

* ``Rep(x, y) = -||f(x) - mu_y||^2`` with ``mu_y`` from running sums over every streamed
  sample of class y (the paper's running-sum estimators);
* ``Div(x, y) = mean_{b in K_y} ||f(x) - f(b)||^2`` measured against the samples already
  *kept* for class y, not against the class distribution.

The buffer is rebuilt greedily from (old buffer ∪ new chunk): first the most representative
sample of each class (so every observed class stays represented while the budget allows),
then repeatedly the candidate with the highest ``Rep + Div`` given what has been kept so far.
Since ``Rep + Div`` is then ``2 <f(x), mu_y - mean(K_y)> + const``, each pick pulls the kept
set towards the class mean from the side where it is thin, a herding-style rule that keeps
the buffer both representative and spread out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from fedtitan.data.stream import Chunk
from fedtitan.errors import ConfigError
from fedtitan.models.adapt import AdaptedModel
from fedtitan.models.base import BlockModel


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """An inference copy of ``module`` with every Conv->BatchNorm pair inside ``nn.Sequential``s
    folded into one conv (eval-mode statistics); other modules are shared, not copied."""
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        children = list(module)
        i = 0
        while i < len(children):
            a = children[i]
            b = children[i + 1] if i + 1 < len(children) else None
            if isinstance(a, nn.Conv1d | nn.Conv2d) and isinstance(b, nn.BatchNorm1d | nn.BatchNorm2d) \
                    and b.track_running_stats:
                out.append(fuse_conv_bn_eval(a.eval(), b.eval()))
                i += 2
            else:
                out.append(fold_batchnorm(a))
                i += 1
        return nn.Sequential(*out)
    return module


def coarse_features(model: BlockModel, x: torch.Tensor, n_blocks: int, pool: int) -> np.ndarray:
    """First ``n_blocks`` block outputs, average-pooled to ``pool`` x ``pool`` (or ``pool`` steps), flattened.

    Runs an inference copy of those blocks with batch norm folded into the convolutions (same
    outputs as ``model.eval().features`` up to float rounding), ``COARSE_CHUNK`` samples at a
    time, pooling each piece before the next: the full-resolution activations of a whole
    chunk of 100-130 samples (16 MB for the MobileNet stem) do not fit in cache, and one
    pass over them cost 4x more per sample than pieces of 32 (measured, one thread; see
    docs/results.md)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            run = _block_runner(model, n_blocks)
            pieces = []
            # pieces keep activations cache-resident on a CPU; an accelerator takes the lot at once
            for piece in x.split(COARSE_CHUNK if x.device.type == "cpu" else max(len(x), 1)):
                pieces.append(_pool(run(piece), pool))
    finally:
        model.train(was)
    return torch.cat(pieces).flatten(1).cpu().double().numpy()


COARSE_CHUNK = 32


def _block_runner(model: BlockModel, n_blocks: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The first ``n_blocks`` blocks as one function: a zoo model's with batch norm folded; a
    plugin model's (:class:`~fedtitan.models.adapt.AdaptedModel`) through its forward pass,
    stopped once the block has run (its blocks need not be callable one after another)."""
    if isinstance(model, AdaptedModel):
        return lambda piece: model.features(piece, n_blocks)
    blocks = [fold_batchnorm(block) for block in model.blocks[:n_blocks]]

    def run(piece: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            piece = block(piece)
        return piece

    return run


def _pool(f: torch.Tensor, pool: int) -> torch.Tensor:
    if f.ndim == 4 and pool > 0:
        return F.adaptive_avg_pool2d(f, pool)
    if f.ndim == 3 and pool > 0:
        return F.adaptive_avg_pool1d(f, pool * pool)
    return f


class CoarseFilter:
    """Candidate buffer of at most ``budget`` samples with per-class running estimators."""

    def __init__(self, budget: int = 30, n_blocks: int = 1, pool: int = 4, carry_over: bool = True,
                 refresh: bool = True, metric: str = "euclidean", rule: str = "repdiv", seed: int = 0,
                 stratify: bool = True) -> None:
        if budget < 1:
            raise ConfigError(f"buffer budget must be >= 1, got {budget}")
        if n_blocks < 1:
            raise ConfigError(f"coarse n_blocks must be >= 1, got {n_blocks}")
        self.budget = budget
        self.n_blocks = n_blocks
        self.pool = pool
        self.carry_over = carry_over  # keep unselected candidates for the next chunk
        self.refresh = refresh  # recompute kept candidates' features with the current model
        if metric not in ("euclidean", "sqeuclidean"):
            raise ConfigError(f"coarse metric must be 'euclidean' or 'sqeuclidean', got {metric!r}")
        self.metric = metric
        if rule not in ("repdiv", "random"):
            raise ConfigError(f"coarse rule must be 'repdiv' or 'random', got {rule!r}")
        self.rule = rule  # 'random': a uniform pre-filter, the ablation that isolates the scoring
        self.stratify = stratify  # class quotas follow the stream's class frequencies
        self._rng = np.random.default_rng([seed, 0xC0A25E])
        self.count: dict[int, int] = {}
        self.sum_f: dict[int, np.ndarray] = {}
        self.sum_sq: dict[int, float] = {}
        self.x: torch.Tensor | None = None
        self.y = np.zeros(0, dtype=np.int64)
        self.ids = np.zeros(0, dtype=np.int64)
        self.f = np.zeros((0, 0))
        self.last_scores = np.zeros(0)  # diagnostics: final scores of the last pool
        self.last_pool_y = np.zeros(0, dtype=np.int64)
        self.last_forwards = 0  # samples run through the first blocks by the last observe (billed)

    def __len__(self) -> int:
        return len(self.ids)

    def centroid(self, label: int) -> np.ndarray:
        return self.sum_f[label] / self.count[label]

    def _update_estimators(self, f: np.ndarray, y: np.ndarray) -> None:
        for c in np.unique(y):
            rows = y == c
            c = int(c)
            self.count[c] = self.count.get(c, 0) + int(rows.sum())
            self.sum_f[c] = self.sum_f.get(c, 0.0) + f[rows].sum(axis=0)
            self.sum_sq[c] = self.sum_sq.get(c, 0.0) + float((f[rows] ** 2).sum())

    def observe(self, chunk: Chunk, model: BlockModel) -> None:
        y_new = chunk.y.cpu().numpy().astype(np.int64)
        if not self.carry_over or self.x is None or len(self.ids) == 0:
            f_new = coarse_features(model, chunk.x, self.n_blocks, self.pool)
            pool_x, pool_y, pool_ids, pool_f = chunk.x, y_new, chunk.ids, f_new
            self.last_forwards = len(chunk)
        else:
            pool_x = torch.cat([self.x, chunk.x])
            pool_y = np.concatenate([self.y, y_new])
            pool_ids = np.concatenate([self.ids, chunk.ids])
            if self.refresh:  # one forward pass over kept + new: features from the same model
                pool_f = coarse_features(model, pool_x, self.n_blocks, self.pool)
                f_new = pool_f[len(self.ids):]
                self.last_forwards = len(pool_ids)
            else:
                f_new = coarse_features(model, chunk.x, self.n_blocks, self.pool)
                pool_f = np.concatenate([self.f, f_new])
                self.last_forwards = len(chunk)
        self._update_estimators(f_new, y_new)
        keep, scores = self._greedy(pool_f, pool_y)
        self.x = pool_x[torch.as_tensor(keep)]
        self.y, self.ids, self.f = pool_y[keep], pool_ids[keep], pool_f[keep]
        self.last_scores, self.last_pool_y = scores, pool_y

    def _greedy(self, f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the kept candidates (in pick order) and each candidate's final score."""
        n = len(y)
        k = min(self.budget, n)
        if self.rule == "random":
            return self._rng.choice(n, size=k, replace=False), np.zeros(n)
        mu = np.stack([self.centroid(int(c)) for c in y])
        rep = -((f - mu) ** 2).sum(axis=1)
        sq = (f**2).sum(axis=1)
        dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (f @ f.T), 0.0)
        if self.metric == "euclidean":
            rep, dist = -np.sqrt(-rep), np.sqrt(dist)
        same = y[:, None] == y[None, :]
        chosen = np.zeros(n, dtype=bool)
        kept_in_class = np.zeros(n)  # for each candidate: #kept of its class
        dist_sum = np.zeros(n)  # for each candidate: sum of distances to kept of its class
        order: list[int] = []

        def pick(i: int) -> None:
            chosen[i] = True
            order.append(i)
            mates = same[i]
            kept_in_class[mates] += 1
            dist_sum[mates] += dist[i, mates]

        classes, first, counts = np.unique(y, return_index=True, return_counts=True)
        # Floor: one slot per class (most populous classes first if there are more than k).
        for ci in np.lexsort((first, -counts))[:k]:
            rows = np.flatnonzero(y == classes[ci])
            pick(int(rows[np.argmax(rep[rows])]))
        room = np.full(n, np.inf)
        if self.stratify:
            quota = self._quotas(classes, counts, k)
            room = np.array([quota[int(c)] for c in y], dtype=np.float64)
        while len(order) < k:
            score = rep + dist_sum / np.maximum(kept_in_class, 1)
            score[chosen | (kept_in_class >= room)] = -np.inf
            pick(int(np.argmax(score)))
        final = rep + dist_sum / np.maximum(kept_in_class, 1)
        return np.asarray(order, dtype=np.int64), final

    def _quotas(self, classes: np.ndarray, available: np.ndarray, k: int) -> dict[int, int]:
        """Slots per class proportional to the stream's class frequencies (running counts),
        at least one each, at most what the pool holds; integers by largest remainder. C-IS's
        weights are unbiased relative to the buffer, so the buffer's class mix should follow
        the stream's."""
        from fedtitan.selection.cis import allocate

        freq = np.array([self.count.get(int(c), 1) for c in classes], dtype=np.float64)
        cap = available.astype(np.int64)
        quota = np.zeros(len(classes), dtype=np.int64)
        open_ = cap > 0
        left = k
        while left > 0 and open_.any():
            share = np.zeros(len(classes), dtype=np.int64)
            share[open_] = allocate(freq[open_], freq[open_], left) if left >= open_.sum() else 0
            if left < open_.sum():
                share[np.flatnonzero(open_)[np.argsort(-freq[open_], kind="stable")[:left]]] = 1
            new = np.minimum(quota + share, cap)
            left -= int((new - quota).sum())
            quota = new
            open_ = quota < cap
            if (share == 0).all():
                break
        return {int(c): int(q) for c, q in zip(classes, quota, strict=True)}

    def remove(self, ids: np.ndarray) -> None:
        """Drop consumed samples (by id) from the buffer."""
        if self.x is None or len(self.ids) == 0:
            return
        keep = ~np.isin(self.ids, ids)
        self.x = self.x[torch.as_tensor(keep)]
        self.y, self.ids, self.f = self.y[keep], self.ids[keep], self.f[keep]

    def as_chunk(self) -> Chunk:
        assert self.x is not None
        return Chunk(x=self.x, y=torch.as_tensor(self.y, device=self.x.device), ids=self.ids)

    def state_dict(self) -> dict[str, object]:
        return {
            "count": dict(self.count), "sum_f": {k: v.copy() for k, v in self.sum_f.items()},
            "sum_sq": dict(self.sum_sq), "x": None if self.x is None else self.x.clone(),
            "y": self.y.copy(), "ids": self.ids.copy(), "f": self.f.copy(),
            "rng": self._rng.bit_generator.state,  # the random rule's draws go on, not over
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.count = dict(state["count"])  # type: ignore[call-overload]
        self.sum_f = dict(state["sum_f"])  # type: ignore[call-overload]
        self.sum_sq = dict(state["sum_sq"])  # type: ignore[call-overload]
        self.x = state["x"]  # type: ignore[assignment]
        self.y, self.ids, self.f = state["y"], state["ids"], state["f"]  # type: ignore[assignment]
        if "rng" in state:  # states saved before it was kept restart the draws from the seed
            self._rng.bit_generator.state = state["rng"]  # type: ignore[assignment]
