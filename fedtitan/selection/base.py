"""The selector interface: streamed samples in, a weighted batch out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from fedtitan.data.stream import Chunk
from fedtitan.models.base import BlockModel


@dataclass(frozen=True)
class Selection:
    """A training batch: inputs, labels, sample ids and per-sample loss weights.

    The training loss is ``sum_i weights[i] * loss_i``; uniform selection has weights
    ``1/B`` (the batch mean). ``info`` carries scalar diagnostics for the metrics.
    """

    x: torch.Tensor
    y: torch.Tensor
    ids: np.ndarray
    weights: torch.Tensor
    info: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


class StreamingSelector(Protocol):
    """A streaming data selector: ``observe`` each arriving chunk, ``select`` a batch."""

    name: str

    def observe(self, chunk: Chunk, model: BlockModel) -> None: ...

    def select(self, batch_size: int, model: BlockModel, rng: np.random.Generator) -> Selection: ...

    def state_dict(self) -> dict[str, object]: ...

    def load_state_dict(self, state: dict[str, object]) -> None: ...


def take(chunk: Chunk, rows: np.ndarray, weights: np.ndarray | torch.Tensor,
         info: dict[str, float] | None = None) -> Selection:
    """Selection of ``rows`` (positions in ``chunk``, repeats allowed) with ``weights`` (float32
    as a tensor; a tensor is taken as it is, and must not be changed in place afterwards)."""
    rows = np.asarray(rows, dtype=np.int64)
    x, y = chunk.x, chunk.y
    if x.is_cpu and y.is_cpu and not x.requires_grad and x.dtype in _NUMPY_DTYPES and y.dtype in _NUMPY_DTYPES:
        # numpy's gather of a few rows: the same values, a third of torch's indexing cost
        x, y = torch.from_numpy(x.numpy()[rows]), torch.from_numpy(y.numpy()[rows])
    else:
        r = torch.as_tensor(rows, device=x.device)
        x, y = x[r], y[r.to(y.device)]
    w = weights if isinstance(weights, torch.Tensor) else torch.from_numpy(np.asarray(weights, dtype=np.float32))
    return Selection(x=x, y=y, ids=chunk.ids[rows], weights=w, info=info or {})


_NUMPY_DTYPES = frozenset((torch.float32, torch.float64, torch.float16, torch.uint8, torch.int64))


def uniform_weights(n: int) -> np.ndarray:
    return np.full(n, 1.0 / max(n, 1))


_UNIFORM: dict[int, torch.Tensor] = {}


def uniform_weight_tensor(n: int) -> torch.Tensor:
    """:func:`uniform_weights` as the float32 tensor :func:`take` makes of it, made once per
    ``n`` (shared: read, never changed in place)."""
    w = _UNIFORM.get(n)
    if w is None:
        w = _UNIFORM[n] = torch.from_numpy(uniform_weights(n).astype(np.float32))
    return w
