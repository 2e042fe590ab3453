"""Model zoo: MLP, small CNNs, MobileNetV1/V2, ResNet-18/34 (CIFAR variants), HAR and speech nets.

All are written here (no torchvision). Image models take ``(N, C, H, W)``; HAR nets take
``(N, C, L)``; the MLP takes any shape and flattens it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fedtitan.models.base import BlockModel


class GlobalAvgPool(nn.Module):
    """Average over every spatial (or time) axis, keeping ``(N, C, 1[, 1])``.

    On the CPU this is torch's adaptive average pooling (so CPU results stay what they were);
    on an accelerator it is a plain mean, whose backward is deterministic on CUDA (adaptive
    pooling's backward is not, which ``run.deterministic`` would warn about)."""

    def __init__(self, dims: int = 2) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu":
            return F.adaptive_avg_pool2d(x, 1) if self.dims == 2 else F.adaptive_avg_pool1d(x, 1)
        return x.mean(dim=tuple(range(-self.dims, 0)), keepdim=True)


def _pool_flatten(dims: int = 2) -> nn.Module:
    return nn.Sequential(GlobalAvgPool(dims), nn.Flatten())


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def mlp(input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...] = (256, 128)) -> BlockModel:
    """Fully connected net; one block per hidden layer (the Titan paper's HAR MLP has two)."""
    d = math.prod(input_shape)
    blocks: list[nn.Module] = []
    for i, h in enumerate(hidden):
        layers: list[nn.Module] = [nn.Flatten()] if i == 0 else []
        layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]
        blocks.append(nn.Sequential(*layers))
        d = h
    return BlockModel(blocks, nn.Identity(), d, num_classes)


def cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> BlockModel:
    """Small 3-block CNN for CIFAR-sized (or smaller) images."""
    c = input_shape[0]
    w = width
    blocks = [
        nn.Sequential(nn.Conv2d(c, w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
        nn.Sequential(nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True)),
    ]
    return BlockModel(blocks, _pool_flatten(), 4 * w, num_classes)


def speech_cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> BlockModel:
    """CNN for (1, 98, 40) log-mel spectrograms, with batch norm."""
    c = input_shape[0]
    w = width
    blocks = [
        nn.Sequential(_conv_bn(c, w), nn.MaxPool2d(2)),
        nn.Sequential(_conv_bn(w, 2 * w), nn.MaxPool2d(2)),
        nn.Sequential(_conv_bn(2 * w, 4 * w), nn.MaxPool2d(2)),
        _conv_bn(4 * w, 4 * w),
    ]
    return BlockModel(blocks, _pool_flatten(), 4 * w, num_classes)


def har_cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 32) -> BlockModel:
    """1-D CNN for inertial windows ``(channels, steps)``, e.g. UCI HAR (9, 128)."""
    c = input_shape[0]
    w = width

    def block(cin: int, cout: int, k: int, pool: bool) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Conv1d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm1d(cout),
                                   nn.ReLU(inplace=True)]
        if pool:
            layers.append(nn.MaxPool1d(2))
        return nn.Sequential(*layers)

    blocks = [block(c, w, 5, True), block(w, 2 * w, 5, True), block(2 * w, 4 * w, 3, False)]
    return BlockModel(blocks, _pool_flatten(1), 4 * w, num_classes)


def mobilenet_v1(input_shape: tuple[int, ...], num_classes: int, width_mult: float = 1.0,
                 stem_stride: int | None = None) -> BlockModel:
    """MobileNetV1 (Howard et al., 2017). For inputs up to 64 px the CIFAR variant (stride-1
    stem); larger inputs get the original stride-2 stem (569 M MACs at 224x224).

    Block 1 is the stem conv; then one block per depthwise-separable stage.
    """
    if stem_stride is None:
        stem_stride = 1 if input_shape[-1] <= 64 else 2
    def ch(v: int) -> int:
        return max(8, int(v * width_mult))

    def dw_sep(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(_conv_bn(cin, cin, 3, stride, groups=cin), _conv_bn(cin, cout, 1))

    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    stages = [[0], [1, 2], [3, 4], [5, 6, 7, 8, 9, 10], [11, 12]]
    cin = ch(32)
    blocks: list[nn.Module] = [_conv_bn(input_shape[0], cin, 3, stem_stride)]
    for stage in stages:
        layers = []
        for i in stage:
            cout, s = cfg[i]
            layers.append(dw_sep(cin, ch(cout), s))
            cin = ch(cout)
        blocks.append(nn.Sequential(*layers))
    return BlockModel(blocks, _pool_flatten(), cin, num_classes)


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


def mobilenet_v2(input_shape: tuple[int, ...], num_classes: int, width_mult: float = 1.0) -> BlockModel:
    """MobileNetV2 (Sandler et al., 2018), CIFAR variant (stride-1 stem and first stage)."""
    def ch(v: int) -> int:
        return max(8, int(round(v * width_mult / 8)) * 8)

    cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    cin = ch(32)
    blocks: list[nn.Module] = [_conv_bn(input_shape[0], cin, 3, 1)]
    for t, c, n, s in cfg:
        layers = []
        for i in range(n):
            layers.append(_InvertedResidual(cin, ch(c), s if i == 0 else 1, t))
            cin = ch(c)
        blocks.append(nn.Sequential(*layers))
    last = max(1280, ch(1280)) if width_mult > 1 else 1280
    blocks.append(_conv_bn(cin, last, 1))
    return BlockModel(blocks, _pool_flatten(), last, num_classes)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.short(x))


def _resnet(input_shape: tuple[int, ...], num_classes: int, layers: list[int], width: int = 64) -> BlockModel:
    blocks: list[nn.Module] = [_conv_bn(input_shape[0], width, 3, 1)]
    cin = width
    for i, n in enumerate(layers):
        cout = width * 2**i
        stage = [_BasicBlock(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
        blocks.append(nn.Sequential(*stage))
        cin = cout
    return BlockModel(blocks, _pool_flatten(), cin, num_classes)


def resnet18(input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> BlockModel:
    """ResNet-18, CIFAR variant (3x3 stride-1 stem, no max-pool)."""
    return _resnet(input_shape, num_classes, [2, 2, 2, 2], width)


def resnet34(input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> BlockModel:
    """ResNet-34, CIFAR variant."""
    return _resnet(input_shape, num_classes, [3, 4, 6, 3], width)
