import numpy as np
import torch

from fedtitan.data.stream import Chunk
from fedtitan.models import build_model
from fedtitan.selection.coarse import CoarseFilter


def _chunk(rng, n, classes, start=0, d=8):
    y = rng.integers(0, classes, size=n)
    x = torch.as_tensor(rng.normal(size=(n, d)) + y[:, None] * 0.5, dtype=torch.float32)
    return Chunk(x=x, y=torch.as_tensor(y), ids=np.arange(start, start + n))


def test_literal_paper_score_is_constant_within_a_class():
    """The trap: Rep + Div with the class distribution as reference is one number per class."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=(50, 6))
    mu = f.mean(axis=0)
    e_sq = (f**2).sum(axis=1).mean()
    rep = -((f - mu) ** 2).sum(axis=1)
    div = (f**2).sum(axis=1) + e_sq - 2 * f @ mu
    np.testing.assert_allclose(rep + div, np.full(50, e_sq - mu @ mu))


def test_score_varies_within_class_and_buffer_respects_budget():
    rng = np.random.default_rng(1)
    model = build_model("mlp", (8,), 4, hidden=(16,))
    flt = CoarseFilter(budget=12, n_blocks=1)
    for step in range(5):
        flt.observe(_chunk(rng, 40, 4, start=40 * step), model)
        assert len(flt) == 12
        assert len(set(flt.ids.tolist())) == 12
    scores = flt.last_scores
    assert np.std(scores) > 0


def test_score_within_class_differs():
    rng = np.random.default_rng(2)
    model = build_model("mlp", (8,), 3, hidden=(16,))
    flt = CoarseFilter(budget=10)
    flt.observe(_chunk(rng, 30, 3), model)
    chunk = _chunk(rng, 30, 3, start=100)
    flt.observe(chunk, model)
    scores, ys = flt.last_scores, flt.last_pool_y
    assert len(scores) == len(ys) == 40
    for c in np.unique(ys):
        assert np.ptp(scores[ys == c]) > 1e-9


def test_buffer_keeps_every_observed_class():
    rng = np.random.default_rng(3)
    model = build_model("mlp", (8,), 6, hidden=(16,))
    flt = CoarseFilter(budget=8)
    seen: set[int] = set()
    for step in range(6):
        # skewed stream: class 5 appears once at step 2 only
        y = rng.choice([0, 1, 2, 3, 4], size=30, p=[0.6, 0.1, 0.1, 0.1, 0.1])
        if step == 2:
            y[0] = 5
        x = torch.as_tensor(rng.normal(size=(30, 8)), dtype=torch.float32)
        flt.observe(Chunk(x=x, y=torch.as_tensor(y), ids=np.arange(30 * step, 30 * step + 30)), model)
        seen |= set(y.tolist())
        assert set(flt.y.tolist()) == seen
    # consuming samples never corrupts the buffer's arrays
    flt.remove(flt.ids[:3])
    assert len(flt) == 5 and flt.x is not None and len(flt.x) == 5 and len(flt.f) == 5


def test_running_estimators_equal_batch_statistics():
    rng = np.random.default_rng(4)
    model = build_model("mlp", (8,), 3, hidden=(16,))
    flt = CoarseFilter(budget=5)
    chunks = [_chunk(rng, 20, 3, start=20 * i) for i in range(3)]
    for c in chunks:
        flt.observe(c, model)
    from fedtitan.selection.coarse import coarse_features

    all_x = torch.cat([c.x for c in chunks])
    all_y = torch.cat([c.y for c in chunks]).numpy()
    f = coarse_features(model, all_x, 1, 4)
    for c in range(3):
        np.testing.assert_allclose(flt.centroid(c), f[all_y == c].mean(axis=0), rtol=1e-10)
        assert flt.count[c] == (all_y == c).sum()


def test_buffer_class_mix_follows_the_stream():
    """C-IS weights are unbiased relative to the buffer, so the buffer's class proportions
    must track the stream's (here 70/20/10 over a 20-slot buffer)."""
    rng = np.random.default_rng(6)
    model = build_model("mlp", (8,), 3, hidden=(16,))
    flt = CoarseFilter(budget=20, stratify=True)
    for step in range(8):
        y = rng.choice(3, size=100, p=[0.7, 0.2, 0.1])
        x = torch.as_tensor(rng.normal(size=(100, 8)) * (1 + y[:, None]), dtype=torch.float32)
        flt.observe(Chunk(x=x, y=torch.as_tensor(y), ids=np.arange(100 * step, 100 * step + 100)), model)
    counts = np.bincount(flt.y, minlength=3)
    assert counts.sum() == 20
    assert abs(counts[0] - 14) <= 1 and abs(counts[1] - 4) <= 1 and abs(counts[2] - 2) <= 1
    # without stratification the greedy rule follows spread, not frequency (class 2 is widest)
    flt2 = CoarseFilter(budget=20, stratify=False)
    rng = np.random.default_rng(6)
    for step in range(8):
        y = rng.choice(3, size=100, p=[0.7, 0.2, 0.1])
        x = torch.as_tensor(rng.normal(size=(100, 8)) * (1 + y[:, None]), dtype=torch.float32)
        flt2.observe(Chunk(x=x, y=torch.as_tensor(y), ids=np.arange(100 * step, 100 * step + 100)), model)
    assert np.bincount(flt2.y, minlength=3)[0] < counts[0]


def test_folded_batchnorm_features_equal_model_features():
    from fedtitan.selection.coarse import coarse_features

    torch.manual_seed(0)
    for name, shape in (("mobilenet_v1", (3, 32, 32)), ("resnet18", (3, 32, 32)), ("har_cnn", (9, 128))):
        model = build_model(name, shape, 10)
        model.train()
        x = torch.randn(70, *shape)  # more than one COARSE_CHUNK
        model(torch.randn(16, *shape))  # move BN running statistics away from their init
        for n_blocks in (1, 2):
            model.eval()
            with torch.no_grad():
                ref = model.features(x, n_blocks)
            model.train()
            got = coarse_features(model, x, n_blocks, pool=0)
            np.testing.assert_allclose(got, ref.flatten(1).double().numpy(), rtol=1e-4, atol=1e-5)
            if len(shape) == 3:
                pooled = coarse_features(model, x, n_blocks, pool=4)
                ref4 = torch.nn.functional.adaptive_avg_pool2d(ref, 4).flatten(1).double().numpy()
                np.testing.assert_allclose(pooled, ref4, rtol=1e-4, atol=1e-5)
            assert model.training  # the caller's mode is restored
