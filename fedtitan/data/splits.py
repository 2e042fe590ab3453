"""Seeded train/test hold-outs: per class, or by whole groups."""

from __future__ import annotations

import numpy as np

from fedtitan.errors import DataError


def stratified_holdout(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of indices into (train, test); each class keeps >= 1 train sample."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = min(int(round(test_fraction * len(idx))), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def holdout_groups(groups: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of samples whose group is held out for test (whole groups)."""
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    n_test = max(1, int(round(test_fraction * len(uniq))))
    held = rng.choice(uniq, size=n_test, replace=False)
    return np.isin(groups, held)


__all__ = ["holdout_groups", "stratified_holdout"]
