"""One-shot dataset pruners (Ale et al., "Lightweight Edge Learning via Dataset Pruning").

A pruner maps per-sample scores to kept indices. ``warmup-loss`` keeps the
``M = floor(rho * N)`` highest warm-up losses (ties: lower index first); ``random`` keeps a
seeded uniform subset; ``random-warmup`` is ``random`` after the same warm-up as
``warmup-loss`` (the caller trains it), the fair baseline that separates the selection from
the extra warm-up epoch; ``full`` keeps everything. ``rho`` is the fraction *kept*.
"""

from __future__ import annotations

import math

import numpy as np

from fedtitan.errors import ConfigError

PRUNERS = ("warmup-loss", "random", "random-warmup", "full")
WARMUP_PRUNERS = ("warmup-loss", "random-warmup")  # the client trains a warm-up before pruning
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


def prune(method: str, n: int, rho: float, *, scores: np.ndarray | None = None,
          rng: np.random.Generator | None = None) -> np.ndarray:
    """Kept positions (sorted, into ``range(n)``) for ``method`` at ratio ``rho``."""
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
    raise ConfigError(f"unknown pruning method {method!r}; choose one of {', '.join(PRUNERS)}")
