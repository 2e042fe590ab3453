"""Forward FLOPs per sample: torch's convention (``torch.utils.flop_counter``), counted once.

Models made only of known layers (every zoo model) are counted with forward hooks and the
layers' formulas; any other model with ``torch.utils.flop_counter.FlopCounterMode``, whose
first use imports ``torch._dynamo`` (about 1.7 s, in every process that sets a run up).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedtitan.models import zoo
from fedtitan.models.base import BlockModel


def _linear_flops(m: nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> int:
    # F.linear: addmm / mm (matmul for N-d inputs, flattened to one mm): 2 x rows x in x out
    assert isinstance(m, nn.Linear)
    return 2 * (out.numel() // m.out_features) * m.in_features * m.out_features


def _conv_flops(m: nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> int:
    # torch's conv_flop_count: 2 x batch x out spatial x out channels x (in channels / groups)
    # x kernel (the weight's shape; the bias is not counted). An unbatched input has batch 1.
    assert isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d)
    return 2 * out.numel() * math.prod(m.weight.shape[1:])


# Modules whose FLOPs are a formula of their output (the matmuls and convolutions: what
# FlopCounterMode counts), by exact type: a subclass may do more in its forward.
_COUNTED: dict[type, Callable[[nn.Module, tuple[Any, ...], torch.Tensor], int]] = {
    nn.Linear: _linear_flops, nn.Conv1d: _conv_flops, nn.Conv2d: _conv_flops, nn.Conv3d: _conv_flops,
}
# Modules that do no matmul or convolution of their own: element-wise, normalisation,
# pooling and reshaping layers, and the containers whose forward only calls their children
# (and adds, concatenates) — the zoo's blocks.
_FREE: frozenset[type] = frozenset({
    nn.Sequential, nn.ModuleList, BlockModel, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    zoo.GlobalAvgPool, zoo._Residual, zoo._InvertedResidual, zoo._Fire,
})


def hooks_count(model: nn.Module) -> bool:
    """Whether :func:`count_forward_flops` counts ``model`` with hooks: every module in it is
    of a type known here (otherwise a forward might call a matmul no hook sees)."""
    return all(type(m) in _COUNTED or type(m) in _FREE for m in model.modules())


def count_forward_flops(model: nn.Module, input_shape: tuple[int, ...], n_blocks: int | None = None) -> int:
    """FLOPs (2 x multiply-accumulates, torch's convention) of one forward pass on one sample.

    With ``n_blocks`` only the first blocks are counted (``model.features``). Counts matmuls
    and convolutions, which dominate; element-wise ops are not counted. Models made of known
    layers (:func:`hooks_count`: every zoo model) are counted by hooks on those layers, any
    other with ``torch.utils.flop_counter.FlopCounterMode``; the two give the same total.
    """
    was_training = model.training
    model.eval()
    weight = next(iter(model.parameters()), None)  # the sample goes where the model is (a GPU, say)
    x = torch.zeros((1, *input_shape), device=weight.device if weight is not None else None)

    def forward() -> None:
        if n_blocks is None:
            model(x)
        else:
            model.features(x, n_blocks)  # type: ignore[operator]

    try:
        if hooks_count(model):
            return _count_with_hooks(model, forward)
        from torch.utils.flop_counter import FlopCounterMode

        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            forward()
        return int(counter.get_total_flops())
    finally:
        model.train(was_training)


def _count_with_hooks(model: nn.Module, forward: Callable[[], None]) -> int:
    total = 0

    def hook(m: nn.Module, inputs: tuple[Any, ...], out: torch.Tensor) -> None:
        nonlocal total
        total += _COUNTED[type(m)](m, inputs, out)

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m) in _COUNTED]
    try:
        with torch.no_grad():
            forward()
    finally:
        for h in handles:
            h.remove()
    return total


def param_bytes(model: nn.Module) -> int:
    """Bytes of parameters and buffers as exchanged with the server (float32)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())
