"""A client's partition replayed as an on-device data stream.

Each :meth:`DataStream.next` returns the next ``v`` sample indices. A pass over the
partition is a seeded permutation; every pass reshuffles. Optional noise (Titan, Appendix
B): a fixed ``feature_noise`` fraction of samples gets Gaussian noise on its features, a
fixed ``label_noise`` fraction is relabelled to another class. Which samples are noisy, and
how, is a pure function of (seed, client, sample id), so the same sample is always noisy
the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fedtitan.data.dataset import TensorSource
from fedtitan.errors import ConfigError
from fedtitan.seeding import keyed_rng


@dataclass(frozen=True)
class Chunk:
    """``v`` streamed samples: normalised inputs, labels, and their ids (training-set indices)."""

    x: torch.Tensor
    y: torch.Tensor
    ids: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class NoiseSpec:
    feature_fraction: float = 0.0
    feature_sigma: float = 1.0
    label_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name in ("feature_fraction", "label_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"noise {name} must be in [0, 1], got {v}")
        if self.feature_sigma < 0:
            raise ConfigError(f"noise feature_sigma must be >= 0, got {self.feature_sigma}")


class DataStream:
    """Replay ``indices`` of ``dataset``'s training split, ``v`` at a time.

    State is ``(epoch, offset)`` and can be saved/restored with :meth:`state`/:meth:`restore`
    so a client can resume its stream across rounds.
    """

    def __init__(
        self,
        dataset: TensorSource,
        indices: np.ndarray,
        v: int,
        seed: int,
        client: int,
        noise: NoiseSpec | None = None,
    ) -> None:
        if v < 1:
            raise ConfigError(f"stream velocity v must be >= 1, got {v}")
        if len(indices) == 0:
            raise ConfigError(f"client {client} has an empty partition; nothing to stream")
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        self.v = v
        self.seed = seed
        self.client = client
        self.noise = noise or NoiseSpec()
        self.epoch = 0
        self.offset = 0
        self._order_of: int | None = None  # the epoch whose permutation ``_cached`` holds, made when first read
        self._cached = self.indices
        self._noisy_features, self._new_labels = self._noise_plan()
        self._planned = 0  # chunks of ``v`` announced by :meth:`plan` and not yet read ahead
        self._ahead: list[Chunk] = []  # chunks read ahead, in stream order, not yet handed out

    @property
    def _order(self) -> np.ndarray:
        """This epoch's order of the client's samples, computed when first needed (a client that
        restores its stream, or ends a round at the end of a pass, computes none in vain)."""
        if self._order_of != self.epoch:
            self._cached, self._order_of = self._permutation(self.epoch), self.epoch
        return self._cached

    def _permutation(self, epoch: int) -> np.ndarray:
        rng = keyed_rng(self.seed, self.client, epoch, 0x5EED)
        return self.indices[rng.permutation(len(self.indices))]

    def _noise_plan(self) -> tuple[np.ndarray, dict[int, int]]:
        n = len(self.indices)
        nf = int(round(self.noise.feature_fraction * n))
        nl = int(round(self.noise.label_fraction * n))
        if not nf and not nl:  # no noise: no generator to key
            return np.empty(0, np.int64), {}
        rng = keyed_rng(self.seed, self.client, 0xA015E)
        feat = np.sort(rng.choice(self.indices, size=nf, replace=False)) if nf else np.empty(0, np.int64)
        relabel: dict[int, int] = {}
        if nl:
            k = self.dataset.num_classes
            chosen = rng.choice(self.indices, size=nl, replace=False)
            shift = rng.integers(1, k, size=nl) if k > 1 else np.zeros(nl, np.int64)
            for i, s in zip(chosen, shift, strict=True):
                relabel[int(i)] = int((self.dataset.y_train[i] + s) % k)
        return feat, relabel

    def state(self) -> dict[str, int]:
        """The position of the next sample :meth:`next` hands out (chunks read ahead and not yet
        handed out are not consumed)."""
        if not self._ahead:
            return {"epoch": self.epoch, "offset": self.offset}
        n = len(self.indices)
        at = self.epoch * n + self.offset - len(self._ahead) * self.v
        return {"epoch": at // n, "offset": at % n}

    def restore(self, state: dict[str, int]) -> None:
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])
        self._planned, self._ahead = 0, []

    # at most this many bytes of a plan's inputs are read at once (the rest when reached)
    AHEAD_BYTES = 4 << 20

    def plan(self, chunks: int) -> None:
        """Announce that the next ``chunks`` calls of :meth:`next` ask for ``v`` samples each.

        They are then read a block at a time (up to :attr:`AHEAD_BYTES` of inputs): one gather
        and one normalisation for many steps instead of one each, the same samples in the same
        order with the same values (the normalisation is element-wise). A small model's step
        spends more on these calls than on its arithmetic."""
        self._planned = max(int(chunks), 0)

    def _read_ahead(self) -> None:
        shape = getattr(self.dataset, "input_shape", None)  # unknown: one chunk at a time
        sample_bytes = 4 * max(math.prod(shape), 1) if shape else self.AHEAD_BYTES
        count = min(self._planned, max(1, self.AHEAD_BYTES // (sample_bytes * self.v)))
        self._planned -= count
        v = self.v
        block = self.materialise(self.next_ids(count * v))
        self._ahead = [Chunk(x=block.x[i * v:(i + 1) * v], y=block.y[i * v:(i + 1) * v], ids=block.ids[i * v:(i + 1) * v])
                       for i in range(count - 1, -1, -1)]  # popped from the end

    def next_ids(self, v: int | None = None) -> np.ndarray:
        v = self.v if v is None else v
        n = len(self.indices)
        if self.offset + v <= n:  # within this pass (the common case)
            ids = self._order[self.offset : self.offset + v].copy()
            self.offset += v
            if self.offset == n:
                self.epoch, self.offset = self.epoch + 1, 0
            return ids
        out = []
        need = v
        while need:
            take = min(need, n - self.offset)
            out.append(self._order[self.offset : self.offset + take])
            self.offset += take
            need -= take
            if self.offset == n:
                self.epoch += 1
                self.offset = 0
        return out[0].copy() if len(out) == 1 else np.concatenate(out)

    def materialise(self, ids: np.ndarray) -> Chunk:
        """Inputs and (possibly noisy) labels of training samples ``ids``."""
        x = self.dataset.tensor("train", ids)
        y = self.dataset.labels("train", ids)
        if len(self._noisy_features):
            mask = np.isin(ids, self._noisy_features)
            for r in np.flatnonzero(mask).tolist():
                state = np.random.SeedSequence([self.seed, self.client, int(ids[r])]).generate_state(1)
                g = torch.Generator().manual_seed(int(state[0]))
                x[r] += self.noise.feature_sigma * torch.randn(x[r].shape, generator=g).to(x.device)
        if self._new_labels:
            for row, i in enumerate(ids):
                new = self._new_labels.get(int(i))
                if new is not None:
                    y[row] = new
        return Chunk(x=x, y=y, ids=ids)

    def next(self, v: int | None = None) -> Chunk:
        if self._planned or self._ahead:
            if v is None or v == self.v:
                if not self._ahead:
                    self._read_ahead()
                return self._ahead.pop()
            self._drop_plan()  # asked for another size: what was read ahead goes back
        return self.materialise(self.next_ids(v))

    def _drop_plan(self) -> None:
        self.restore(self.state())
