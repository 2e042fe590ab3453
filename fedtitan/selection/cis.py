"""Classified importance sampling (C-IS), Titan's fine-grained selection (Lemma 2).

Over a candidate set S with classes y, per-sample gradient norms ``n_i`` and gradients ``g_i``:

* intra-class probability ``P_y(i) = n_i / sum_{j in S_y} n_j`` (uniform if all are 0);
* class importance ``I(y) = |S_y| * sqrt((mean_{S_y} n)^2 - ||mean_{S_y} g||^2)``
  (eq. 2 evaluated under the uniform measure; >= 0 by Jensen, clipped at 0 for rounding);
* ``|B_y|`` proportional to ``I(y)``, integers summing to B (see :func:`allocate`);
* ``|B_y|`` draws from S_y with probability P_y, **with replacement** (Theorem 2's i.i.d.
  draws); weight ``w_i = 1 / (|S| * |B_y| * P_y(i))`` so the weighted batch gradient
  ``sum_i w_i g_i`` is an unbiased estimate of the mean gradient over S (Appendix A.2, eq. f).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def class_importance(labels: np.ndarray, norms: np.ndarray, gram: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(classes, I)`` for the classes present in ``labels``; ``gram[i, j] = <g_i, g_j>``."""
    classes = np.unique(labels)
    imp = np.empty(len(classes))
    for k, c in enumerate(classes):
        rows = np.flatnonzero(labels == c)
        m = len(rows)
        mean_norm = norms[rows].mean()
        mean_grad_sq = gram[np.ix_(rows, rows)].sum() / (m * m)
        imp[k] = m * np.sqrt(max(mean_norm**2 - mean_grad_sq, 0.0))
    return classes, imp


def allocate(importance: np.ndarray, counts: np.ndarray, batch_size: int) -> np.ndarray:
    """Integer class sizes ``|B_y|`` for a batch of ``batch_size``.

    Rules (documented in docs/selection.md):

    * every class present gets >= 1 slot when ``batch_size >= #classes``: a class with no
      slot would be missing from the estimate, which is then biased. The remaining slots
      follow ``I(y)`` by water-filling: the continuous optimum of ``sum I_y^2 / b_y`` under
      ``b_y >= 1`` is ``b_y = max(1, lambda * I_y)``;
    * integers by largest remainder (ties: larger ``I``, then lower class position);
    * if every remaining ``I(y)`` is 0 (e.g. singleton classes, or zero gradients), the
      slots follow class counts ``|S_y|`` instead (plain stratified sampling);
    * ``batch_size < #classes``: the ``batch_size`` classes of largest ``I`` (then count)
      get one slot each; the estimate is then biased, and C-IS reports it.
    """
    importance = np.asarray(importance, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    c = len(importance)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if c == 0:
        return np.zeros(0, dtype=np.int64)
    if batch_size < c:
        order = np.lexsort((np.arange(c), -counts, -importance))
        out = np.zeros(c, dtype=np.int64)
        out[order[:batch_size]] = 1
        return out
    fixed = np.zeros(c, dtype=bool)
    share = np.zeros(c)
    while True:
        free = ~fixed
        remaining = batch_size - fixed.sum()
        basis = importance if importance[free].sum() > 0 else counts
        share[free] = remaining * basis[free] / basis[free].sum()
        share[fixed] = 1.0
        low = free & (share < 1.0)
        if not low.any():
            break
        fixed |= low
    out = np.floor(share + 1e-9).astype(np.int64)
    left = batch_size - out.sum()
    if left > 0:
        frac = share - out
        order = np.lexsort((np.arange(c), -importance, -frac))
        out[order[:left]] += 1
    return out


@dataclass(frozen=True)
class CisDraw:
    rows: np.ndarray  # positions in the candidate set (repeats possible)
    weights: np.ndarray  # unbiased weights, or 1/B when weighting is off
    probs: np.ndarray  # P_y(i) of each drawn row
    sizes: dict[int, int]  # |B_y| per class
    biased: bool


def intra_class_probs(labels: np.ndarray, norms: np.ndarray) -> np.ndarray:
    """``P_y(i)`` for every candidate: gradient norm over its class's sum (uniform on zero)."""
    probs = np.empty(len(labels))
    for c in np.unique(labels):
        rows = labels == c
        total = norms[rows].sum()
        probs[rows] = norms[rows] / total if total > 0 else 1.0 / rows.sum()
    return probs


def cis_draw(
    labels: np.ndarray,
    norms: np.ndarray,
    gram: np.ndarray,
    batch_size: int,
    rng: np.random.Generator,
    weighting: bool = True,
) -> CisDraw:
    """Draw a C-IS batch from a candidate set."""
    n = len(labels)
    classes, imp = class_importance(labels, norms, gram)
    counts = np.array([(labels == c).sum() for c in classes])
    sizes = allocate(imp, counts, batch_size)
    probs_all = intra_class_probs(labels, norms)
    rows_out, w_out, p_out = [], [], []
    for c, b in zip(classes, sizes, strict=True):
        if b == 0:
            continue
        rows = np.flatnonzero(labels == c)
        p = probs_all[rows]
        drawn = rows[rng.choice(len(rows), size=int(b), replace=True, p=p / p.sum())]
        rows_out.append(drawn)
        p_out.append(probs_all[drawn])
        w_out.append(1.0 / (n * b * probs_all[drawn]))
    rows_arr = np.concatenate(rows_out)
    weights = np.concatenate(w_out) if weighting else np.full(len(rows_arr), 1.0 / len(rows_arr))
    return CisDraw(
        rows=rows_arr, weights=weights, probs=np.concatenate(p_out),
        sizes={int(c): int(b) for c, b in zip(classes, sizes, strict=True)},
        biased=bool(batch_size < len(classes)),
    )


def is_draw(
    norms: np.ndarray, batch_size: int, rng: np.random.Generator, weighting: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Plain importance sampling (Katharopoulos & Fleuret, 2018): ``P(i) ∝ n_i`` over the whole
    set, ``batch_size`` i.i.d. draws, weights ``1 / (|S| * B * P(i))``."""
    n = len(norms)
    total = norms.sum()
    p = norms / total if total > 0 else np.full(n, 1.0 / n)
    rows = rng.choice(n, size=batch_size, replace=True, p=p)
    w = 1.0 / (n * batch_size * p[rows]) if weighting else np.full(batch_size, 1.0 / batch_size)
    return rows, w


def estimator_variances(labels: np.ndarray, norms: np.ndarray, gram: np.ndarray, batch_size: int) -> dict[str, float]:
    """Exact total variance ``E||estimate - mean gradient||^2`` of one batch's gradient estimate
    over a candidate set, from the Gram matrix alone, for four samplers of ``batch_size``:

    * ``uniform``: i.i.d. uniform draws, weights 1/B;
    * ``uniform_no_replacement``: a uniform subset (what random selection does), ``x (n-B)/(n-1)``;
    * ``is``: plain importance sampling, ``P(i) ∝ n_i``;
    * ``cis``: C-IS as :func:`cis_draw` draws (its class allocation, ``P_y``, weights).

    For i.i.d. draws with weights ``1/(n B P(i))`` the variance is ``(1/B)(sum_i ||g_i||^2 /
    (n^2 P(i)) - ||mean g||^2)``; C-IS adds that up per class with ``b_y`` draws and its class's
    share of the mean. ``cis`` is NaN when the batch cannot cover every class (biased)."""
    n = len(labels)
    sq = np.diag(gram).astype(np.float64)
    mean_sq = float(gram.sum()) / n**2
    out = {"uniform": (sq.mean() - mean_sq) / batch_size}
    out["uniform_no_replacement"] = out["uniform"] * (n - batch_size) / (n - 1) if n > 1 else 0.0
    total = norms.sum()
    p = norms / total if total > 0 else np.full(n, 1.0 / n)
    out["is"] = (float(np.sum(sq[p > 0] / (n**2 * p[p > 0]))) - mean_sq) / batch_size
    classes, imp = class_importance(labels, norms, gram)
    counts = np.array([(labels == c).sum() for c in classes])
    sizes = allocate(imp, counts, batch_size)
    if (sizes == 0).any():
        out["cis"] = float("nan")
        return out
    probs = intra_class_probs(labels, norms)
    var = 0.0
    for c, b in zip(classes, sizes, strict=True):
        rows = np.flatnonzero(labels == c)
        pr = probs[rows]
        keep = pr > 0
        second = float(np.sum(sq[rows][keep] / (n**2 * pr[keep])))
        class_mean_sq = float(gram[np.ix_(rows, rows)].sum()) / n**2
        var += (second - class_mean_sq) / b
    out["cis"] = var
    return out
