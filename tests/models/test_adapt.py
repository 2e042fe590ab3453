"""Plugin models: a foreign nn.Module gets the parts Titan reads (first block, embedding,
linear head), found once and checked, and every selector and the pruner run on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fedtitan.config import load_config
from fedtitan.errors import ConfigError
from fedtitan.models import AdaptedModel, build_model, count_forward_flops
from fedtitan.preflight import check_config
from fedtitan.selection.coarse import coarse_features
from fedtitan.selection.lastlayer import full_gradients, head_stats
from fedtitan.training.client import client_round
from fedtitan.training.setup import setup_for

SRC = Path(__file__).resolve().parents[1] / "plugins" / "fedtitan-example" / "src"
VIT = "fedtitan_example.models:make_vit"
GRU = "fedtitan_example.models:WindowGRU"
BASE = ["data.num_clients=3", "server.fraction=1.0", "data.min_samples=20", "selection.local_steps=2"]


@pytest.fixture(autouse=True)
def plugin_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SRC))


class Scaled(nn.Module):
    """Logits divided by a temperature after the head: C-IS's closed form would be wrong."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 16), nn.ReLU())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x)) / 2.0


def scaled(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return Scaled(input_shape, num_classes)


def flat(input_shape: tuple[int, ...], num_classes: int, hidden: int = 16) -> nn.Module:
    """Everything in one nn.Sequential: the blocks are its children before the head."""
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def test_a_vit_gets_its_head_embedding_and_first_block():
    torch.manual_seed(0)
    m = build_model(VIT, (1, 8, 8), 10)
    assert isinstance(m, AdaptedModel)
    assert (m.head_name, m.embedding_name, m.block_names) == ("fc", None, ["patch", "encoder", "norm"])
    x = torch.randn(5, 1, 8, 8)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m.features(x, 1), m.net.patch(x))  # block 1: the patch embedding
        h = m.embed(x)
        want = m.net.norm(m.net.encoder(m.net.patch(x).flatten(2).transpose(1, 2) + m.net.pos).mean(1))
        assert torch.allclose(h, want, atol=1e-6) and torch.allclose(m.head(h), m(x), atol=1e-6)
        pooled = coarse_features(m, x, 1, 2)
        assert np.allclose(pooled, F.adaptive_avg_pool2d(m.net.patch(x), 2).flatten(1).double().numpy(), atol=1e-6)
    # the cost model sees the block and the whole forward
    assert 0 < count_forward_flops(m, (1, 8, 8), 1) < count_forward_flops(m, (1, 8, 8))


def test_closed_form_last_layer_gradients_hold_on_an_adapted_model():
    """C-IS's per-sample gradients at the head equal autograd's on the plugin's own fc layer."""
    torch.manual_seed(1)
    m = build_model(GRU, (3, 12), 4)
    x, y = torch.randn(6, 3, 12), torch.tensor([0, 1, 2, 3, 0, 1])
    stats = head_stats(m, x, y)
    m.eval()
    for i in range(len(y)):
        m.zero_grad()
        F.cross_entropy(m(x[i:i + 1]), y[i:i + 1]).backward()
        head = m.net.out[1]
        want = torch.cat([head.weight.grad.flatten(), head.bias.grad]).double().numpy()
        # full_gradients lays out [dW | db] per row of W with its bias: reorder to compare
        k, d = head.weight.shape
        got = full_gradients(stats)[i].reshape(k, d + 1)
        assert np.allclose(np.concatenate([got[:, :d].ravel(), got[:, d]]), want, atol=1e-6)
    assert m.head_name == "out.1" and m.block_names == ["gru"]  # the GRU's tuple output: its sequence


def test_named_parts_and_a_single_sequential():
    m = build_model("tests.models.test_adapt:flat", (1, 8, 8), 10)
    assert m.head_name == "3" and m.block_names == ["0", "1", "2"]
    named = build_model(VIT, (1, 8, 8), 10, head="fc", embedding="norm", first_block="encoder")
    assert named.block_names == ["encoder"] and named.embed(torch.zeros(2, 1, 8, 8)).shape == (2, 32)
    assert named.features(torch.zeros(2, 1, 8, 8)).shape == (2, 4, 32)


@pytest.mark.parametrize(("kw", "message"), [
    ({"name": "tests.models.test_adapt:scaled"}, "the model's output is not head('fc') of its embedding"),
    ({"head": "encoder"}, "model.head_module: 'encoder' is a TransformerEncoder; the head must be an nn.Linear"),
    ({"head": "fc2"}, "the model has no submodule 'fc2'; its submodules: patch, pos"[:48]),
    ({"embedding": "patch"}, "model.embedding_module: 'patch' (Conv2d) must give (N, 32) vectors"),
    ({"first_block": "nowhere"}, "model.first_block_module: the model has no submodule 'nowhere'"),
    ({"dim": "big"}, "failed to build a model for inputs (1, 8, 8) and 10 classes: TypeError"),
])
def test_bad_plugin_models_are_one_line_errors(kw, message):
    kw = dict(kw)
    name = kw.pop("name", VIT)
    with pytest.raises(ConfigError) as exc:
        build_model(name, (1, 8, 8), 10, **kw)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_a_model_without_a_class_head_or_not_a_module():
    with pytest.raises(ConfigError, match="calls no nn.Linear with 7 outputs"):
        build_model("tests.models.test_adapt:flat_no_head", (1, 8, 8), 7)
    with pytest.raises(ConfigError, match="returned int, not a torch.nn.Module"):
        build_model("tests.models.test_adapt:not_a_module", (1, 8, 8), 10)


def flat_no_head(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 2 * num_classes),
                         nn.Unflatten(1, (2, num_classes)), _Sum())


class _Sum(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(1)


def not_a_module(input_shape: tuple[int, ...], num_classes: int) -> int:
    return 3


@pytest.mark.parametrize(("sets", "message"), [
    (["model.name=fedtitan_example.models:make_vit", "model.options.dimm=8"], "unknown option 'dimm'"),
    (["model.name=fedtitan_example.models:make_vit", "model.width=8"], "model.width: applies to the zoo's models"),
    (["model.name=mlp", "model.head_module=head"], "'mlp' is a zoo model, whose parts are known"),
    (["model.name=fedtitan_example.models:make_vit", "model.options.num_classes=3"], "not settable"),
    (["model.name=vitt"], "unknown value 'vitt'"),
])
def test_bad_model_settings_are_caught_before_a_run(sets, message):
    with pytest.raises(ConfigError) as exc:
        check_config(load_config("quickstart", sets))
    assert message in str(exc.value) and "\n" not in str(exc.value)


SELECTIONS = [["selection.method=" + m] for m in ("titan", "cis", "rs", "is", "hl", "ll", "ce", "ocs", "camel")] + [
    ["pruning.method=warmup-loss", "pruning.ratio=0.5"]]


@pytest.mark.parametrize("sets", SELECTIONS, ids=lambda s: s[0].split("=")[1])
def test_every_selector_and_the_pruner_train_a_plugin_model(sets):
    cfg = load_config("quickstart", [*BASE, f"model.name={VIT}", "model.options.dim=16", *sets])
    check_config(cfg)
    setup = setup_for(cfg)
    assert isinstance(setup.model, AdaptedModel) and setup.block_flops < setup.forward_flops
    g = {k: v.clone() for k, v in setup.model.state_dict().items()}
    out = client_round(cfg, 0, g, {}, 1)
    assert out.metrics["steps"] > 0 and out.metrics["sim_train_s"] > 0 and out.metrics["status"] == 0
    moved = [k for k in g if not torch.equal(g[k], out.state_dict[k])]
    assert "net.fc.weight" in moved and "net.patch.weight" in moved  # the whole plugin model trains


def test_n_blocks_beyond_the_model_is_a_config_error():
    cfg = load_config("quickstart", [*BASE, f"model.name={VIT}", "selection.n_blocks=4"])
    with pytest.raises(ConfigError, match="selection.n_blocks: 4 blocks, but model .* has 3; choose 1..3"):
        setup_for(cfg)
