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


def take(chunk: Chunk, rows: np.ndarray, weights: np.ndarray, info: dict[str, float] | None = None) -> Selection:
    """Selection of ``rows`` (positions in ``chunk``, repeats allowed) with ``weights``."""
    r = torch.as_tensor(np.asarray(rows, dtype=np.int64))
    return Selection(
        x=chunk.x[r], y=chunk.y[r], ids=chunk.ids[np.asarray(rows, dtype=np.int64)],
        weights=torch.as_tensor(np.asarray(weights, dtype=np.float32)), info=info or {},
    )


def uniform_weights(n: int) -> np.ndarray:
    return np.full(n, 1.0 / max(n, 1))
