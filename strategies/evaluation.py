"""Central evaluation of the global model on a seeded test subset (and, if asked, on the clients).

The subset is drawn once from the run's seed, so every round, every resumed run and every
loop that evaluates sees the same samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedtitan.config import Config
from fedtitan.training.common import evaluate


def eval_indices(cfg: Config, n_test: int) -> np.ndarray:
    """The seeded test subset of ``server.eval_samples`` used for central evaluation."""
    return np.sort(np.random.default_rng([cfg.run.seed, 0xE7A1]).permutation(n_test)[: cfg.server.eval_samples])


@dataclass(frozen=True)
class Evaluation:
    """A round's evaluation: NaN where the round was not evaluated; ``client_accuracy``:
    client id -> accuracy on its own data (``server.client_eval``)."""

    accuracy: float = math.nan
    loss: float = math.nan
    client_accuracy: dict[int, float] | None = None


class CentralEval:
    """The model and test tensors central evaluation runs on, on the run's compute device."""

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model, self.x, self.y = model, x, y

    def __call__(self, state: dict[str, np.ndarray]) -> tuple[float, float]:
        """(loss, accuracy) of the weights ``state``."""
        self.model.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
        loss, acc = evaluate(self.model, self.x, self.y)
        return loss, acc
