"""Forward FLOPs per sample, counted once with ``torch.utils.flop_counter``."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_forward_flops(model: nn.Module, input_shape: tuple[int, ...], n_blocks: int | None = None) -> int:
    """FLOPs (2 x multiply-accumulates, torch's convention) of one forward pass on one sample.

    With ``n_blocks`` only the first blocks are counted (``model.features``). Counts matmuls
    and convolutions, which dominate; element-wise ops are not counted.
    """
    was_training = model.training
    model.eval()
    weight = next(iter(model.parameters()), None)  # the sample goes where the model is (a GPU, say)
    x = torch.zeros((1, *input_shape), device=weight.device if weight is not None else None)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            if n_blocks is None:
                model(x)
            else:
                model.features(x, n_blocks)  # type: ignore[operator]
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def param_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers as exchanged with the server (float32)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
