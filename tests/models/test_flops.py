"""The hooks' FLOP count (zoo models) is exactly FlopCounterMode's; other models fall back to it."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from fedtitan.models import MODELS, build_model, count_forward_flops, takes_stem
from fedtitan.models import flops as flops_mod
from fedtitan.models.base import BlockModel

# every input shape the zoo is used with: the datasets' (MNIST-like, CIFAR, UCI HAR, Speech
# Commands), the MLP on flattened images and sensor windows, and the ImageNet size (stems)
SHAPES = {
    "mlp": [(1, 8, 8), (1, 28, 28), (9, 128), (561,)],
    "cnn": [(1, 28, 28), (3, 32, 32), (1, 98, 40)],
    "har_cnn": [(9, 128), (3, 50)],
    "speech_cnn": [(1, 98, 40), (1, 28, 28)],
}
IMAGES = [(3, 32, 32), (1, 28, 28), (1, 98, 40), (3, 96, 96)]


def reference(model, shape, n_blocks=None):
    was_training = model.training
    model.eval()
    x = torch.zeros(1, *shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x) if n_blocks is None else model.features(x, n_blocks)
    model.train(was_training)
    return counter.get_total_flops()


def cases():
    for name in sorted(MODELS):
        for shape in SHAPES.get(name, IMAGES if name != "alexnet" else IMAGES[:2]):  # alexnet: square only
            yield name, shape, {}
        if takes_stem(name) and name != "alexnet":
            yield name, (1, 98, 40), {"stem": "imagenet"}
    yield "mobilenet_v1", (3, 32, 32), {"width_mult": 0.5}
    yield "mobilenet_v2", (3, 32, 32), {"width_mult": 1.4}
    yield "alexnet", (3, 32, 32), {"batch_norm": False}


@pytest.mark.parametrize(("name", "shape", "options"), list(cases()))
def test_hooks_count_what_flop_counter_counts(name, shape, options):
    model = build_model(name, shape, 10, **options)
    assert flops_mod.hooks_count(model)
    assert count_forward_flops(model, shape) == reference(model, shape)
    for n in range(1, model.num_blocks + 1):
        assert count_forward_flops(model, shape, n_blocks=n) == reference(model, shape, n)
    assert model.training  # left as it was


@pytest.mark.parametrize("name", ["resnet18", "alexnet", "squeezenet", "mobilenet_v1"])
def test_imagenet_size(name):
    model = build_model(name, (3, 224, 224), 1000)
    assert count_forward_flops(model, (3, 224, 224)) == reference(model, (3, 224, 224))


class _Scaled(nn.Module):
    """A module the hooks do not know, whose forward calls a matmul of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(4, 4))

    def forward(self, x):
        return x @ self.w


class _MyLinear(nn.Linear):
    """A subclass of a known layer: its forward may differ, so it is not known either."""

    def forward(self, x):
        return super().forward(x) + x @ self.weight.T


@pytest.mark.parametrize("block", [_Scaled, lambda: _MyLinear(4, 4),
                                   lambda: nn.MultiheadAttention(4, 2, batch_first=True)])
def test_unknown_modules_fall_back_to_flop_counter(block, monkeypatch):
    inner = block()
    if isinstance(inner, nn.MultiheadAttention):
        class Attn(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = inner

            def forward(self, x):
                return self.a(x, x, x)[0]
        inner = Attn()
    model = BlockModel([nn.Sequential(nn.Unflatten(1, (1, 4)), inner, nn.Flatten())], nn.Identity(), 4, 3)
    assert not flops_mod.hooks_count(model)
    monkeypatch.setattr(flops_mod, "_count_with_hooks", lambda *a: pytest.fail("hooks used for an unknown module"))
    got = count_forward_flops(model, (4,))
    assert got == reference(model, (4,))
    if not hasattr(inner, "a"):  # (attention in eval runs a fused op that torch does not count)
        assert got > 2 * 4 * 3  # the unknown module's matmul is counted


def test_zoo_set_up_does_not_import_dynamo():
    import subprocess
    import sys

    code = ("import sys; from fedtitan.models import build_model, count_forward_flops; "
            "m = build_model('resnet18', (3, 32, 32), 10); count_forward_flops(m, (3, 32, 32)); "
            "count_forward_flops(m, (3, 32, 32), 1); print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
