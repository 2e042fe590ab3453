import pytest
import torch
from torch import nn

from fedtitan.errors import ConfigError
from fedtitan.models import MODELS, build_model, count_forward_flops
from fedtitan.models.base import BlockModel

SHAPES = {
    "mlp": (1, 8, 8), "cnn": (3, 32, 32), "mobilenet_v1": (3, 32, 32), "mobilenet_v2": (3, 32, 32),
    "resnet18": (3, 32, 32), "resnet34": (3, 32, 32), "har_cnn": (9, 128), "speech_cnn": (1, 98, 40),
    "resnet50": (3, 32, 32), "alexnet": (3, 32, 32), "squeezenet": (3, 32, 32),
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


def test_flops_are_counted_where_the_model_is():
    # single_device counts a model already moved to its device (a GPU); the counting sample
    # must follow it. The meta device stands in for a GPU here: same count, no CPU tensor met.
    model = BlockModel([nn.Conv2d(1, 2, 3, padding=1, bias=False)],
                       nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 2, 3).to("meta")
    assert count_forward_flops(model, (1, 4, 4)) == 576 + 12
    assert count_forward_flops(model, (1, 4, 4), n_blocks=1) == 576


def test_known_mobilenet_v1_cifar_cost():
    # MobileNetV1 on 32x32 inputs: about 46 M multiply-accumulates
    flops = count_forward_flops(build_model("mobilenet_v1", (3, 32, 32), 10), (3, 32, 32))
    assert 85e6 < flops < 100e6


def test_unknown_model_and_bad_blocks():
    with pytest.raises(ConfigError, match="config model.name: unknown value .vgg.*package.module:factory"):
        build_model("vgg", (3, 32, 32), 10)
    model = build_model("cnn", (3, 32, 32), 10)
    with pytest.raises(ValueError, match="n_blocks"):
        model.features(torch.zeros(1, 3, 32, 32), 9)


# Published figures at 224x224, 1,000 classes (torchvision's model cards, which follow the
# papers' layouts): parameters exactly, multiply-accumulates within 1%.
PUBLISHED = {"alexnet": (61_100_840, 0.714e9), "resnet50": (25_557_032, 4.09e9),
             "resnet18": (11_689_512, 1.814e9), "resnet34": (21_797_672, 3.664e9),
             "squeezenet": (1_235_496, 0.349e9 - 86.5e6)}  # our linear head: the class conv's 86.5 M MACs saved


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_table1_models_match_their_published_size_and_cost(name):
    params, macs = PUBLISHED[name]
    model = build_model(name, (3, 224, 224), 1000)
    assert sum(p.numel() for p in model.parameters()) == params
    assert count_forward_flops(model, (3, 224, 224)) / 2 == pytest.approx(macs, rel=0.01)
    cifar = build_model(name, (3, 32, 32), 10)  # the CIFAR variant keeps the layout, with a small stem
    assert cifar(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    assert len(cifar.blocks) == len(model.blocks)


def test_stems_are_chosen_by_input_size_or_by_name():
    assert build_model("resnet50", (3, 32, 32), 10).blocks[0][0].kernel_size == (3, 3)
    assert build_model("resnet50", (3, 96, 96), 10).blocks[0][0].kernel_size == (7, 7)
    assert build_model("alexnet", (3, 32, 32), 10, stem="imagenet").blocks[0][0].kernel_size == (11, 11)
    with pytest.raises(ValueError, match="stem must be"):
        build_model("squeezenet", (3, 32, 32), 10, stem="tiny")


def test_resnet34_on_speech_spectrograms_takes_either_stem():
    """Table 1's ResNet34 runs on 98x40 Speech Commands spectrograms with the ImageNet stem: the
    map halves twice before the stages (25x10) and ends at 4x2; the CIFAR stem keeps 98x40 into
    the first stage, 12x the cost (4.5 G MACs against 0.38 G)."""
    shape = (1, 98, 40)
    auto, imagenet = build_model("resnet34", shape, 12), build_model("resnet34", shape, 12, stem="imagenet")
    assert auto.blocks[0][0].kernel_size == (3, 3) and imagenet.blocks[0][0].kernel_size == (7, 7)
    x = torch.zeros(2, *shape)
    assert imagenet.features(x, 1).shape == (2, 64, 25, 10) and imagenet.features(x, 5).shape == (2, 512, 4, 2)
    assert imagenet(x).shape == (2, 12)
    assert count_forward_flops(imagenet, shape) / 2 == pytest.approx(0.379e9, rel=0.01)
    assert count_forward_flops(auto, shape) / 2 == pytest.approx(4.517e9, rel=0.01)


def test_cifar_variants_of_alexnet_and_squeezenet_have_batch_norm_imagenet_ones_not():
    def norms(m):
        return sum(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())

    assert norms(build_model("alexnet", (3, 32, 32), 10)) == 5
    assert norms(build_model("squeezenet", (3, 32, 32), 10)) == 1 + 3 * 8  # first conv + 3 per fire module
    assert norms(build_model("alexnet", (3, 224, 224), 10)) == norms(build_model("squeezenet", (3, 224, 224), 10)) == 0
    assert norms(build_model("alexnet", (3, 32, 32), 10, batch_norm=False)) == 0
