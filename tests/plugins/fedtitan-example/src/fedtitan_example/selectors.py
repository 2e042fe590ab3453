"""``margin``: uncertainty sampling. Of the newest ``v`` streamed samples, train on the
``B`` whose top-two softmax probabilities are closest (the smallest margin)."""

from __future__ import annotations

import numpy as np
import torch

from fedtitan.data.stream import Chunk
from fedtitan.models.base import BlockModel
from fedtitan.selection.base import Selection, take, uniform_weights


class MarginSelector:
    name = "margin"
    coarse_filter = False  # no first-block pass over the stream
    forward_candidates = True  # one forward over the v candidates per selection (the cost model bills it)
    info_keys = ("mean_margin",)  # Selection.info that clients.csv shows, as info_mean_margin

    def __init__(self, seed: int = 0, temperature: float = 1.0) -> None:
        # ``seed`` is one of the selection settings fedtitan offers (it passes those a
        # constructor accepts); ``temperature`` comes from [selection.options].
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature
        self.chunk: Chunk | None = None
        self.selections = 0

    def observe(self, chunk: Chunk, model: BlockModel) -> None:
        self.chunk = chunk

    @torch.no_grad()
    def select(self, batch_size: int, model: BlockModel, rng: np.random.Generator) -> Selection:
        if self.chunk is None:
            raise RuntimeError("margin: select() before any data was observed")
        was = model.training
        model.eval()
        try:
            probs = torch.softmax(model(self.chunk.x) / self.temperature, dim=1).cpu().numpy()
        finally:
            model.train(was)
        top2 = np.sort(probs, axis=1)[:, -2:]
        margin = top2[:, 1] - top2[:, 0]
        rows = np.lexsort((np.arange(len(margin)), margin))[: min(batch_size, len(margin))]
        self.selections += 1
        return take(self.chunk, rows, uniform_weights(len(rows)), {"mean_margin": float(margin[rows].mean())})

    def state_dict(self) -> dict[str, object]:
        return {"selections": self.selections}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.selections = int(state.get("selections", 0))  # type: ignore[call-overload]
