"""The shape every fedtitan model has: blocks -> neck -> linear head."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice

import torch
from torch import nn


class BlockModel(nn.Module):
    """A classifier built as ``head(neck(blocks(x)))``.

    * ``features(x, n_blocks)``: the output of the first ``n_blocks`` blocks (Titan's coarse
      filter uses block 1);
    * ``embed(x)``: the penultimate embedding ``h`` (input of the head);
    * ``head``: the final ``nn.Linear``, so last-layer gradients have a closed form.
    """

    def __init__(self, blocks: Sequence[nn.Module], neck: nn.Module, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.neck = neck
        self.head = nn.Linear(embed_dim, num_classes)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def features(self, x: torch.Tensor, n_blocks: int = 1) -> torch.Tensor:
        if not 1 <= n_blocks <= len(self.blocks):
            raise ValueError(f"n_blocks must be in 1..{len(self.blocks)}, got {n_blocks}")
        for block in islice(self.blocks, n_blocks):  # a slice of a ModuleList builds a new one (~90 us)
            x = block(x)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.neck(self.features(x, len(self.blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
