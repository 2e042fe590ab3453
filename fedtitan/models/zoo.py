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


class _Residual(nn.Module):
    """``relu(body(x) + shortcut(x))``; the shortcut is a strided 1x1 conv with batch norm where
    the shape changes (ResNet's option B)."""

    def __init__(self, body: nn.Module, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = body
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.short(x))


def _basic_block(cin: int, cout: int, stride: int) -> _Residual:
    """ResNet-18/34's block: two 3x3 convs."""
    body = nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
    )
    return _Residual(body, cin, cout, stride)


def _resnet(input_shape: tuple[int, ...], num_classes: int, layers: list[int], width: int = 64,
            stem: str = "auto") -> BlockModel:
    blocks: list[nn.Module] = [_resnet_stem(input_shape, width, stem)]
    cin = width
    for i, n in enumerate(layers):
        cout = width * 2**i
        stage = [_basic_block(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
        blocks.append(nn.Sequential(*stage))
        cin = cout
    return BlockModel(blocks, _pool_flatten(), cin, num_classes)


def resnet18(input_shape: tuple[int, ...], num_classes: int, width: int = 64, stem: str = "auto") -> BlockModel:
    """ResNet-18 (11.7 M parameters and 1.81 G MACs at 224x224 with 1,000 classes). CIFAR variant
    (3x3/1 stem, no max-pool) up to 64 px, the original 7x7/2 stem and 3x3/2 max-pool above
    (``stem`` as :func:`resnet50`)."""
    return _resnet(input_shape, num_classes, [2, 2, 2, 2], width, stem)


def resnet34(input_shape: tuple[int, ...], num_classes: int, width: int = 64, stem: str = "auto") -> BlockModel:
    """ResNet-34 (21.8 M parameters and 3.66 G MACs at 224x224 with 1,000 classes); stems as
    :func:`resnet18`. The Table 1 reproduction runs it on 98x40 Speech Commands spectrograms
    with ``stem="imagenet"`` (0.38 G MACs a clip; the CIFAR stem would make it 4.5 G)."""
    return _resnet(input_shape, num_classes, [3, 4, 6, 3], width, stem)


def _resnet_stem(input_shape: tuple[int, ...], width: int, stem: str) -> nn.Module:
    """A ResNet's first block: the ImageNet stem (7x7/2 conv, batch norm, ReLU, 3x3/2 max-pool)
    or the CIFAR one (3x3/1 conv, batch norm, ReLU), as :func:`_imagenet_stem` decides."""
    c = input_shape[0]
    if _imagenet_stem(input_shape, stem):
        return nn.Sequential(nn.Conv2d(c, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width),
                             nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
    return _conv_bn(c, width, 3, 1)


def _imagenet_stem(input_shape: tuple[int, ...], stem: str) -> bool:
    """Whether a model takes the ImageNet stem: ``stem`` = "imagenet", "cifar" or "auto"
    (the ImageNet stem for inputs larger than 64 px)."""
    if stem not in ("auto", "cifar", "imagenet"):
        raise ValueError(f"stem must be auto, cifar or imagenet, got {stem!r}")
    return stem == "imagenet" or (stem == "auto" and input_shape[-1] > 64)


def _conv_relu(cin: int, cout: int, k: int, stride: int = 1, pad: int = 0, bn: bool = False) -> list[nn.Module]:
    """A conv and its ReLU, with batch norm between them when ``bn`` (the conv then has no bias)."""
    if not bn:
        return [nn.Conv2d(cin, cout, k, stride, pad), nn.ReLU(inplace=True)]
    return [nn.Conv2d(cin, cout, k, stride, pad, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def alexnet(input_shape: tuple[int, ...], num_classes: int, stem: str = "auto", dropout: float = 0.5,
            batch_norm: bool | None = None) -> BlockModel:
    """AlexNet (Krizhevsky et al., 2012; torchvision's single-GPU layout: 61.1 M parameters
    and 0.71 G MACs at 224x224 with 1,000 classes).

    ImageNet stem: 11x11/4 conv, 3x3/2 max-pools, 6x6 pooled features. CIFAR variant (inputs
    up to 64 px): 3x3/1 first conv, 2x2/2 max-pools, and the 4x4 map of a 32x32 input
    flattened (256 x 4 x 4 into the first fully connected layer: 35.9 M parameters and
    0.20 G MACs at 10 classes), and batch norm after each conv (``batch_norm``; default: on
    for the CIFAR variant, off for the ImageNet one, which keeps the published layout).
    Without it, SGD at the Titan paper's lr 0.1 (batch 10) leaves the net at chance for
    1,500 steps, and at 0.01 too (measured; docs/models.md). Blocks: the first conv stage (the coarse filter's), the second, the three 3x3
    convs, and the two fully connected layers (dropout before each); the last 4096-wide
    layer is the embedding.
    """
    c = input_shape[0]
    imagenet = _imagenet_stem(input_shape, stem)
    bn = not imagenet if batch_norm is None else batch_norm
    if imagenet:
        first = nn.Sequential(*_conv_relu(c, 64, 11, 4, 2, bn), nn.MaxPool2d(3, 2))
        second = nn.Sequential(*_conv_relu(64, 192, 5, 1, 2, bn), nn.MaxPool2d(3, 2))
        pool: nn.Module = nn.Sequential(nn.MaxPool2d(3, 2), nn.AdaptiveAvgPool2d(6))
        side = 6
    else:
        first = nn.Sequential(*_conv_relu(c, 64, 3, 1, 1, bn), nn.MaxPool2d(2))
        second = nn.Sequential(*_conv_relu(64, 192, 3, 1, 1, bn), nn.MaxPool2d(2))
        pool = nn.MaxPool2d(2)
        side = input_shape[-1] // 8
    third = nn.Sequential(*_conv_relu(192, 384, 3, 1, 1, bn), *_conv_relu(384, 256, 3, 1, 1, bn),
                          *_conv_relu(256, 256, 3, 1, 1, bn), pool)
    fc = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(256 * side * side, 4096), nn.ReLU(inplace=True),
                       nn.Dropout(dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True))
    return BlockModel([first, second, third, fc], nn.Identity(), 4096, num_classes)


class _Fire(nn.Module):
    """SqueezeNet's fire module: a 1x1 squeeze, then 1x1 and 3x3 expands side by side."""

    def __init__(self, cin: int, squeeze: int, e1: int, e3: int, bn: bool = False) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(*_conv_relu(cin, squeeze, 1, bn=bn))
        self.e1 = nn.Sequential(*_conv_relu(squeeze, e1, 1, bn=bn))
        self.e3 = nn.Sequential(*_conv_relu(squeeze, e3, 3, pad=1, bn=bn))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


def squeezenet(input_shape: tuple[int, ...], num_classes: int, stem: str = "auto",
               batch_norm: bool | None = None) -> BlockModel:
    """SqueezeNet 1.1 (Iandola et al., 2016; the v1.1 of the authors' repository: 2.4x less
    compute than 1.0 at the same accuracy). 1,235,496 parameters at 1,000 classes, as
    torchvision's ``squeezenet1_1``.

    The head differs from the original in form, not in size: the original ends with dropout,
    a 1x1 conv to the classes, ReLU and global pooling; here global pooling gives the
    512-wide embedding and a linear layer the classes (the same 513 x classes parameters;
    86.5 M fewer MACs at 224x224, since the class conv ran on the 13x13 map). ImageNet stem:
    3x3/2 conv and 3x3/2 ceil-mode max-pools (0.26 G MACs at 224x224 with this head). CIFAR
    variant (up to 64 px): 3x3/1 first conv, the same pools (32 -> 16 -> 8 -> 4), and batch
    norm after each conv (``batch_norm``, as for :func:`alexnet`: without it SGD at lr 0.1 or
    0.01 leaves the net at chance for 1,500 steps; measured). Blocks: the first conv (the
    coarse filter's), then each pool with its fire modules.
    """
    c = input_shape[0]
    imagenet = _imagenet_stem(input_shape, stem)
    bn = not imagenet if batch_norm is None else batch_norm
    blocks: list[nn.Module] = [nn.Sequential(*_conv_relu(c, 64, 3, 2 if imagenet else 1, 0 if imagenet else 1, bn))]
    stages = [[(64, 16, 64, 64), (128, 16, 64, 64)], [(128, 32, 128, 128), (256, 32, 128, 128)],
              [(256, 48, 192, 192), (384, 48, 192, 192), (384, 64, 256, 256), (512, 64, 256, 256)]]
    for stage in stages:
        blocks.append(nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True), *(_Fire(*f, bn=bn) for f in stage)))
    return BlockModel(blocks, _pool_flatten(), 512, num_classes)


def _bottleneck(cin: int, width: int, stride: int) -> _Residual:
    """ResNet-50's block: 1x1, 3x3, 1x1 (v1.5: the stride on the 3x3 conv, as torchvision)."""
    cout = 4 * width
    body = nn.Sequential(
        nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
        nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
    )
    return _Residual(body, cin, cout, stride)


def resnet50(input_shape: tuple[int, ...], num_classes: int, stem: str = "auto", width: int = 64) -> BlockModel:
    """ResNet-50 (He et al., 2016; bottleneck v1.5 as torchvision: 25.6 M parameters and
    4.09 G MACs at 224x224 with 1,000 classes). ImageNet stem: 7x7/2 conv and a 3x3/2
    max-pool; CIFAR variant (up to 64 px): a 3x3/1 conv and no max-pool, as the ResNet-18/34
    here. Blocks: the stem (the coarse filter's), then the four stages; the embedding is 2048 wide.
    """
    blocks: list[nn.Module] = [_resnet_stem(input_shape, width, stem)]
    cin = width
    for i, n in enumerate([3, 4, 6, 3]):
        w = width * 2**i
        stage = [_bottleneck(cin if j == 0 else 4 * w, w, (1 if i == 0 else 2) if j == 0 else 1) for j in range(n)]
        blocks.append(nn.Sequential(*stage))
        cin = 4 * w
    return BlockModel(blocks, _pool_flatten(), cin, num_classes)
