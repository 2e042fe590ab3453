"""Two models written without fedtitan in mind, as a researcher would bring them
(docs/models.md, "Bring your own model"): fedtitan finds their head, embedding and first
block itself.

* :func:`make_vit`: a small vision transformer over images (patch embedding, transformer
  encoder, mean-pooled tokens, a linear head);
* :class:`WindowGRU`: a GRU over sensor windows shaped ``(channels, steps)``, classifying
  from its last hidden output.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyViT(nn.Module):
    def __init__(self, channels: int, side: int, num_classes: int, dim: int = 32, depth: int = 1, heads: int = 2,
                 patch: int = 4) -> None:
        super().__init__()
        self.patch = nn.Conv2d(channels, dim, patch, patch)
        tokens = (side // patch) ** 2
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.fc(self.norm(self.encoder(t).mean(dim=1)))


def make_vit(input_shape: tuple[int, ...], num_classes: int, dim: int = 32, depth: int = 1,
             patch: int = 4) -> nn.Module:
    """A small ViT for ``input_shape = (channels, side, side)`` images."""
    return TinyViT(input_shape[0], input_shape[-1], num_classes, dim=dim, depth=depth, patch=patch)


class WindowGRU(nn.Module):
    """A GRU over ``(channels, steps)`` windows; the last step's output is the embedding."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.gru = nn.GRU(input_shape[0], hidden, batch_first=True)
        self.out = nn.Sequential(nn.Dropout(0.1), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.gru(x.transpose(1, 2))
        return self.out(seq[:, -1])
