"""``normbound``: FedAvg that leaves out any update whose L2 norm exceeds ``max_norm``
(a simple defence against scaled updates), built on Flower's FedAvg."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg


class FedAvgNormBound(FedAvg):
    def __init__(self, *, max_norm: float = 10.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.max_norm = max_norm
        self.current: dict[str, np.ndarray] = {}
        self.left_out: list[int] = []  # node ids left out in the last round

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current = {k: v.numpy() for k, v in arrays.items()}  # what the updates are relative to
        return super().configure_train(server_round, arrays, config, grid)

    def _norm(self, reply: Message) -> float:
        arrays = next(iter(reply.content.array_records.values()))
        return float(np.sqrt(sum(float(((v.numpy().astype(np.float64) - self.current[k]) ** 2).sum())
                                 for k, v in arrays.items() if np.issubdtype(self.current[k].dtype, np.floating))))

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        kept = [r for r in replies if r.has_error() or self._norm(r) <= self.max_norm]
        self.left_out = [r.metadata.src_node_id for r in replies if r not in kept]
        return super().aggregate_train(server_round, kept)
