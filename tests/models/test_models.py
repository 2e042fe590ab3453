import pytest
import torch
from torch import nn

from fedtitan.errors import ConfigError
from fedtitan.models import MODELS, build_model, count_forward_flops
from fedtitan.models.base import BlockModel

SHAPES = {
    "mlp": (1, 8, 8), "cnn": (3, 32, 32), "mobilenet_v1": (3, 32, 32), "mobilenet_v2": (3, 32, 32),
    "resnet18": (3, 32, 32), "resnet34": (3, 32, 32), "har_cnn": (9, 128), "speech_cnn": (1, 98, 40),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_shapes_and_parts(name):
    shape = SHAPES[name]
    model = build_model(name, shape, 7)
    x = torch.randn(2, *shape)
    model.eval()
    out = model(x)
    assert out.shape == (2, 7)
    h = model.embed(x)
    assert isinstance(model.head, nn.Linear) and h.shape == (2, model.head.in_features)
    assert torch.allclose(model.head(h), out, atol=1e-5)
    assert model.features(x, 1).shape[0] == 2
    assert count_forward_flops(model, shape) > count_forward_flops(model, shape, n_blocks=1) > 0


def test_flops_of_tiny_conv_net_by_hand():
    # conv 1->2, 3x3, padding 1 on 4x4: 2 * (2*4*4 outputs * 9 MACs) = 576 FLOPs
    # linear 2 -> 3 after global pooling: 2 * 2 * 3 = 12 FLOPs
    model = BlockModel([nn.Conv2d(1, 2, 3, padding=1, bias=False)],
                       nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 2, 3)
    assert count_forward_flops(model, (1, 4, 4)) == 576 + 12
    assert count_forward_flops(model, (1, 4, 4), n_blocks=1) == 576


def test_known_mobilenet_v1_cifar_cost():
    # MobileNetV1 on 32x32 inputs: about 46 M multiply-accumulates
    flops = count_forward_flops(build_model("mobilenet_v1", (3, 32, 32), 10), (3, 32, 32))
    assert 85e6 < flops < 100e6


def test_unknown_model_and_bad_blocks():
    with pytest.raises(ConfigError, match="unknown model"):
        build_model("vgg", (3, 32, 32), 10)
    model = build_model("cnn", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="n_blocks"):
        model.features(torch.zeros(1, 3, 32, 32), 9)
