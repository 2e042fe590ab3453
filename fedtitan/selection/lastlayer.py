"""Closed-form per-sample gradients of the last linear layer under softmax cross-entropy.

For ``z = W h + b`` and loss ``CE(softmax(z), y)``: ``dL/dW = (p - e_y) h^T`` and
``dL/db = p - e_y``. With ``a = p - e_y`` and ``h~ = [h, 1]``:

* per-sample gradient norm ``||g_i|| = ||a_i|| * sqrt(||h_i||^2 + 1)``;
* gradient inner products ``<g_i, g_j> = <a_i, a_j> * (<h_i, h_j> + 1)``.

No autograd and no per-sample backward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedtitan.models.base import BlockModel


@dataclass(frozen=True)
class HeadStats:
    """Per-sample quantities at the head, as float64 numpy arrays."""

    a: np.ndarray  # (n, K) = softmax - onehot
    h: np.ndarray  # (n, d) embeddings
    probs: np.ndarray  # (n, K)
    loss: np.ndarray  # (n,)

    @property
    def grad_norms(self) -> np.ndarray:
        return np.linalg.norm(self.a, axis=1) * np.sqrt((self.h**2).sum(axis=1) + 1.0)

    def gram(self, rows: np.ndarray | None = None) -> np.ndarray:
        """``<g_i, g_j>`` for the chosen rows (all when ``None``)."""
        a = self.a if rows is None else self.a[rows]
        h = self.h if rows is None else self.h[rows]
        return (a @ a.T) * (h @ h.T + 1.0)

    def entropy(self) -> np.ndarray:
        p = np.clip(self.probs, 1e-12, 1.0)
        return -(p * np.log(p)).sum(axis=1)


@torch.no_grad()
def head_stats(model: BlockModel, x: torch.Tensor, y: torch.Tensor) -> HeadStats:
    """One forward pass in eval mode (on ``x``'s device); returns what every gradient-based
    selector needs, as CPU float64 arrays."""
    was = model.training
    model.eval()
    try:
        h = model.embed(x)
        z = model.head(h)
    finally:
        model.train(was)
    # The float64 arithmetic runs on the CPU wherever the model is: a few KB cross (n x K
    # logits, n x d embeddings for n <= ~130 candidates), and numpy takes it from there.
    h, z, y = h.cpu(), z.cpu(), y.cpu()
    p = F.softmax(z.double(), dim=1)
    a = p.clone()
    a[torch.arange(len(y)), y] -= 1.0
    loss = F.cross_entropy(z.double(), y, reduction="none")
    return HeadStats(a=a.numpy(), h=h.double().numpy(), probs=p.numpy(), loss=loss.numpy())


def full_gradients(stats: HeadStats) -> np.ndarray:
    """Explicit flattened ``[dW, db]`` per sample, (n, K*(d+1)): for tests and small cases."""
    ht = np.concatenate([stats.h, np.ones((len(stats.h), 1))], axis=1)
    return np.einsum("nk,nd->nkd", stats.a, ht).reshape(len(ht), -1)
