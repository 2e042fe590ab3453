import numpy as np
import pytest
import torch

from fedtitan.data import load_dataset
from fedtitan.data.stream import DataStream
from fedtitan.models import build_model
from fedtitan.selection import SELECTORS, build_selector
from fedtitan.selection.pruning import prune
from fedtitan.training import (
    StaticConfig,
    StreamingConfig,
    evaluate,
    lr_at,
    train_static,
    train_streaming,
    warmup_scores,
)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _run(ds, method, pipeline, seed=0, steps=4):
    torch.manual_seed(seed)
    model = build_model("cnn", ds.input_shape, 10, width=8)
    stream = DataStream(ds, np.arange(len(ds.y_train)), v=40, seed=seed, client=0)
    recs = train_streaming(model, stream, build_selector(method),
                           StreamingConfig(steps=steps, batch_size=8, velocity=40, lr=0.05, pipeline=pipeline),
                           np.random.default_rng(seed))
    return model, recs


@pytest.mark.parametrize("method", sorted(SELECTORS))
def test_every_selector_trains_and_is_reproducible(digits, method):
    m1, r1 = _run(digits, method, pipeline=False)
    m2, r2 = _run(digits, method, pipeline=False)
    assert len(r1) == 4 and all(r.selected >= 1 for r in r1)
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # bit-for-bit with the pipeline off
    assert [r.loss for r in r1] == [r.loss for r in r2]


def test_pipeline_runs_concurrently_and_records_times(digits):
    _, recs = _run(digits, "titan", pipeline=True, steps=5)
    assert len(recs) == 5
    assert all(r.train_ms > 0 for r in recs)
    assert all(r.select_ms > 0 for r in recs[:-1])  # the last step has nothing left to select
    assert recs[-1].select_ms == 0.0
    assert "pipeline_fill_ms" in recs[0].info


def test_pipeline_uses_one_step_old_weights(digits):
    """With the pipeline, the batch of step t+1 is chosen with the weights of step t: with
    one step the two modes train on the same first batch, so they agree exactly."""
    m_seq, _ = _run(digits, "rs", pipeline=False, steps=1)
    m_pipe, _ = _run(digits, "rs", pipeline=True, steps=1)
    for a, b in zip(m_seq.state_dict().values(), m_pipe.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_warmup_scores_and_pruned_training(digits):
    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, 10)
    idx = np.arange(200)
    cfg = StaticConfig(epochs=1, batch_size=20, lr=1e-3)
    scores, res = warmup_scores(model, digits, idx, iterations=10, cfg=cfg, rng=np.random.default_rng(0))
    assert res.steps == 10 and scores.shape == (200,) and np.isfinite(scores).all()  # one full epoch
    kept = prune("warmup-loss", 200, 0.3, scores=scores)
    assert len(kept) == 60
    assert scores[kept].min() >= np.delete(scores, kept).max()
    out = train_static(model, digits, idx[kept], cfg, np.random.default_rng(1))
    assert out.steps == 3 and out.samples == 60


def test_lr_schedules():
    assert lr_at(0.1, "step", 250, 1000) == pytest.approx(0.1 * 0.95**2)
    assert lr_at(1.0, "cosine", 0, 10) == pytest.approx(1.0)
    assert lr_at(1.0, "cosine", 10, 10) == pytest.approx(0.0)
    assert lr_at(0.3, "constant", 99, 100) == 0.3


def test_titan_learns_digits(digits):
    """A short streaming run beats chance clearly (this test can fail)."""
    torch.manual_seed(0)
    model = build_model("mlp", digits.input_shape, 10)
    stream = DataStream(digits, np.arange(len(digits.y_train)), v=50, seed=0, client=0)
    train_streaming(model, stream, build_selector("titan", buffer_size=20),
                    StreamingConfig(steps=150, batch_size=10, velocity=50, lr=0.1), np.random.default_rng(0))
    _, acc = evaluate(model, digits.tensor("test"), digits.labels("test"))
    assert acc > 0.6


def test_random_warmup_pays_the_warmup_and_keeps_a_random_subset():
    """``random-warmup``: the same warm-up as ``warmup-loss`` (same samples, same weights
    after it), then a uniform subset instead of the top losses."""
    from fedtitan.config import load_config
    from fedtitan.training.client import client_round
    from fedtitan.training.setup import setup_for

    out = {}
    for method in ("warmup-loss", "random-warmup", "random"):
        cfg = load_config("quickstart", ["data.num_clients=3", "model.name=cnn", "model.width=8",
                                         f"pruning.method={method}", "pruning.ratio=0.3"])
        g = {k: v.clone() for k, v in setup_for(cfg).model.state_dict().items()}
        out[method] = client_round(cfg, 0, g, {}, 1)
    wl, rw, r = out["warmup-loss"], out["random-warmup"], out["random"]
    assert wl.metrics["streamed"] == rw.metrics["streamed"] > 0 and r.metrics["streamed"] == 0  # warm-up samples
    assert wl.metrics["sim_train_s"] == pytest.approx(rw.metrics["sim_train_s"])  # same bill
    assert len(wl.state["kept"]) == len(rw.state["kept"]) == len(r.state["kept"])
    assert not np.array_equal(wl.state["kept"], rw.state["kept"])


def test_stratified_warmup_loss_keeps_the_clients_label_mix():
    """``warmup-loss-stratified`` pays the same warm-up and keeps each class's share of the
    client's data (to one sample), where plain ``warmup-loss`` shifts the mix."""
    from fedtitan.config import load_config
    from fedtitan.selection.pruning import class_quotas
    from fedtitan.training.client import client_round
    from fedtitan.training.setup import setup_for

    out = {}
    for method in ("warmup-loss", "warmup-loss-stratified"):
        cfg = load_config("quickstart", ["data.num_clients=3", "model.name=cnn", "model.width=8",
                                         f"pruning.method={method}", "pruning.ratio=0.3"])
        setup = setup_for(cfg)
        g = {k: v.clone() for k, v in setup.model.state_dict().items()}
        out[method] = client_round(cfg, 0, g, {}, 1)
    y, part = setup.dataset.y_train, setup.parts[0]
    classes, counts = np.unique(y[part], return_counts=True)
    kept = out["warmup-loss-stratified"].state["kept"]
    want = class_quotas(counts, len(kept))
    assert [int((y[kept] == c).sum()) for c in classes] == list(want)
    assert out["warmup-loss"].metrics["sim_train_s"] == pytest.approx(out["warmup-loss-stratified"].metrics["sim_train_s"])
    assert len(out["warmup-loss"].state["kept"]) == len(kept)


def test_the_pipeline_repeats_bit_for_bit_too(digits):
    """The worker thread selects on its own snapshot with its own draws: the one-round-delay
    pipeline is as reproducible as the sequential mode."""
    m1, r1 = _run(digits, "titan", pipeline=True, steps=5)
    m2, r2 = _run(digits, "titan", pipeline=True, steps=5)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values(), strict=True))
    assert [r.loss for r in r1] == [r.loss for r in r2]


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_a_plain_sgd_step_taken_directly_is_torchs_step_bit_for_bit():
    """weighted_step takes a plain SGD step itself (no profiler ranges or hooks); the weights
    must be torch's own, bit for bit, through learning-rate changes and weighted losses."""
    from fedtitan.training.common import direct_sgd, make_optimizer, set_lr, weighted_step

    a, b = _mlp(), _mlp()
    opt_a = make_optimizer(a, "sgd", 0.1)
    opt_b = make_optimizer(b, "sgd", 0.1)
    assert direct_sgd(opt_a)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        x, y = torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)
        w = torch.rand(5, generator=g)
        if step == 3:
            set_lr(opt_a, 0.037)
            set_lr(opt_b, 0.037)
        la, _ = weighted_step(a, opt_a, x, y, w)
        opt_b.zero_grad(set_to_none=True)  # torch's own step, as the reference
        lb = (w * torch.nn.functional.cross_entropy(b(x), y, reduction="none")).sum()
        lb.backward()
        opt_b.step()
        assert la == float(lb.detach())
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


PLAIN_SGD_SCRIPT = """
import sys, torch
from fedtitan.training.common import make_optimizer, plain_sgd
wrapped = torch.optim.Optimizer.add_param_group.__wrapped__
m = torch.nn.Linear(6, 3)
opt = make_optimizer(m, "sgd", 0.1)
assert "torch._dynamo" not in sys.modules, "made importing TorchDynamo"
assert not hasattr(wrapped, "__dynamo_disable"), "torch's wrapper left changed"
ref = torch.optim.SGD(m.parameters(), lr=0.1)  # torch's own way: imports TorchDynamo
assert "torch._dynamo" in sys.modules
assert type(opt) is type(ref) and opt.defaults == ref.defaults
assert opt.param_groups[0].keys() == ref.param_groups[0].keys()
assert all(opt.param_groups[0][k] == ref.param_groups[0][k] for k in ref.param_groups[0] if k != "params")
assert all(a is b for a, b in zip(opt.param_groups[0]["params"], ref.param_groups[0]["params"], strict=True))
again = plain_sgd(list(m.parameters()), 0.2)  # TorchDynamo imported: made the usual way
assert again.param_groups[0]["lr"] == 0.2 and getattr(wrapped, "__dynamo_disable") is not wrapped
print("ok")
"""


def test_plain_sgd_is_made_without_importing_torchdynamo_and_is_torchs_own():
    """The first optimiser of a process made the usual way imports TorchDynamo (2.4 s of CPU,
    measured); plain SGD is made without it until something else imports it, and equals torch's."""
    import subprocess
    import sys

    got = subprocess.run([sys.executable, "-c", PLAIN_SGD_SCRIPT], capture_output=True, text=True, timeout=300)
    assert got.returncode == 0 and got.stdout.strip() == "ok", got.stderr[-2000:]


def test_other_optimizers_and_hooks_take_torchs_step():
    from fedtitan.training.common import direct_sgd, make_optimizer

    assert not direct_sgd(make_optimizer(_mlp(), "sgd", 0.1, momentum=0.9))
    assert not direct_sgd(make_optimizer(_mlp(), "sgd", 0.1, weight_decay=1e-4))
    assert not direct_sgd(make_optimizer(_mlp(), "adam", 0.1))
    opt = make_optimizer(_mlp(), "sgd", 0.1)
    calls = []
    handle = opt.register_step_post_hook(lambda *_: calls.append(1))
    assert not direct_sgd(opt)  # a hook must run: torch's step runs it
    handle.remove()
    assert direct_sgd(opt)


def test_a_models_plain_sgd_is_made_once_and_given_each_round_its_learning_rate():
    from fedtitan.training.common import make_optimizer

    model = _mlp()
    first = make_optimizer(model, "sgd", 0.1)
    again = make_optimizer(model, "sgd", 0.02)
    assert again is first and again.param_groups[0]["lr"] == 0.02 and not again.state
    assert make_optimizer(model, "sgd", 0.1, momentum=0.9) is not first  # momentum keeps state: a fresh one
    assert make_optimizer(_mlp(), "sgd", 0.1) is not first  # another model
    model[0] = torch.nn.Linear(6, 8)  # new parameters: a new optimiser over them
    fresh = make_optimizer(model, "sgd", 0.1)
    assert fresh is not first and fresh.param_groups[0]["params"][0] is model[0].weight
