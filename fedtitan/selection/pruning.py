"""One-shot dataset pruners (Ale et al., "Lightweight Edge Learning via Dataset Pruning").

A pruner maps per-sample scores to kept indices. ``warmup-loss`` keeps the
``M = floor(rho * N)`` highest warm-up losses (ties: lower index first);
``warmup-loss-stratified`` keeps the highest warm-up losses *within each class*, with the
``M`` places split over the classes in proportion to their counts (so the kept label mix is the
client's: an ablation, not in the paper, that separates "hard samples" from "the classes the
top losses come from"); ``random`` keeps a seeded uniform subset; ``random-warmup`` is ``random`` after the same warm-up as
``warmup-loss`` (the caller trains it), the fair baseline that separates the selection from
the extra warm-up epoch; ``full`` keeps everything. ``rho`` is the fraction *kept*.
"""

from __future__ import annotations

import math

import numpy as np

from fedtitan.errors import ConfigError, did_you_mean

PRUNERS = ("warmup-loss", "warmup-loss-stratified", "random", "random-warmup", "full")
WARMUP_PRUNERS = ("warmup-loss", "warmup-loss-stratified", "random-warmup")  # the client trains a warm-up before pruning
UNSEEN_RULES = ("mean", "keep", "drop")


def check_ratio(rho: float) -> float:
    if not (isinstance(rho, int | float) and math.isfinite(rho) and 0.0 < rho <= 1.0):
        raise ConfigError(f"pruning ratio rho must be in (0, 1] (the fraction kept), got {rho}")
    return float(rho)


def kept_count(n: int, rho: float) -> int:
    """``M = floor(rho * N)``, at least 1 for a non-empty set (rho > 0 must keep something)."""
    check_ratio(rho)
    return max(1, math.floor(rho * n + 1e-9)) if n else 0


def normalise_scores(loss_sum: np.ndarray, seen: np.ndarray, unseen: str = "mean") -> np.ndarray:
    """Mean loss per observation; samples never observed get a score by ``unseen``:

    * ``mean``: the mean score of the observed samples (neutral: ranked by index among ties);
    * ``keep``: ``+inf`` (never prune what was not looked at);
    * ``drop``: ``-inf`` (the literal reading of Algorithm 1, where the score stays 0).
    """
    if unseen not in UNSEEN_RULES:
        raise ConfigError(f"pruning unseen rule must be one of {', '.join(UNSEEN_RULES)}, got {unseen!r}")
    scores = np.divide(loss_sum, seen, out=np.zeros_like(loss_sum, dtype=np.float64), where=seen > 0)
    mask = seen == 0
    if mask.any():
        if unseen == "mean":
            fill = scores[~mask].mean() if (~mask).any() else 0.0
        else:
            fill = np.inf if unseen == "keep" else -np.inf
        scores[mask] = fill
    return scores


def top_m(scores: np.ndarray, m: int) -> np.ndarray:
    """Indices (sorted) of the ``m`` highest scores; ties go to the lower index."""
    order = np.lexsort((np.arange(len(scores)), -np.asarray(scores, dtype=np.float64)))
    return np.sort(order[:m])


def class_quotas(counts: np.ndarray, m: int) -> np.ndarray:
    """Split ``m`` places over classes in proportion to ``counts`` (largest remainder; ties: the
    larger class, then the lower position). Never more than a class holds, since ``m <= sum``."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if not 0 <= m <= total:
        raise ValueError(f"cannot keep {m} of {total} samples")
    exact = counts * (m / total) if total else np.zeros(len(counts))
    quota = np.floor(exact + 1e-9).astype(np.int64)
    order = np.lexsort((np.arange(len(counts)), -counts, -(exact - quota)))
    quota[order[: m - int(quota.sum())]] += 1
    return quota


def prune(method: str, n: int, rho: float, *, scores: np.ndarray | None = None,
          rng: np.random.Generator | None = None, labels: np.ndarray | None = None) -> np.ndarray:
    """Kept positions (sorted, into ``range(n)``) for ``method`` at ratio ``rho``
    (``labels``, one per sample, only for ``warmup-loss-stratified``)."""
    m = kept_count(n, rho)
    if method == "full":
        return np.arange(n)
    if method in ("random", "random-warmup"):
        gen = rng if rng is not None else np.random.default_rng(0)
        return np.sort(gen.choice(n, size=m, replace=False))
    if method == "warmup-loss":
        if scores is None or len(scores) != n:
            raise ValueError("warmup-loss pruning needs one score per sample")
        return top_m(scores, m)
    if method == "warmup-loss-stratified":
        if scores is None or labels is None or len(scores) != n or len(labels) != n:
            raise ValueError("warmup-loss-stratified pruning needs one score and one label per sample")
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        kept = []
        for c, q in enumerate(class_quotas(counts, m)):
            pos = np.flatnonzero(inverse == c)  # this class's samples
            kept.append(pos[top_m(scores[pos], int(q))])
        return np.sort(np.concatenate(kept))
    raise ConfigError(f"unknown pruning method {method!r}; choose one of {', '.join(PRUNERS)}"
                      f"{did_you_mean(method, PRUNERS)}")
