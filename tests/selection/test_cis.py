"""C-IS against hand computations, Monte Carlo unbiasedness, and the variance ordering."""

import numpy as np
import pytest

from fedtitan.selection.cis import allocate, cis_draw, class_importance, intra_class_probs, is_draw


def _norms_gram(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.linalg.norm(g, axis=1), g @ g.T


def test_hand_computed_importance_probabilities_and_allocation():
    # class 0: g = (3,0), (0,4) -> norms 3, 4; mean norm 3.5; mean g (1.5, 2), ||.||^2 = 6.25
    #          I(0) = 2 * sqrt(12.25 - 6.25) = 2 * sqrt(6)
    # class 1: g = (1,0), (1,0), (1,0) -> identical: I(1) = 3 * sqrt(1 - 1) = 0
    g = np.array([[3.0, 0], [0, 4], [1, 0], [1, 0], [1, 0]])
    labels = np.array([0, 0, 1, 1, 1])
    norms, gram = _norms_gram(g)
    classes, imp = class_importance(labels, norms, gram)
    assert list(classes) == [0, 1]
    assert imp[0] == pytest.approx(2 * np.sqrt(6))
    assert imp[1] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(intra_class_probs(labels, norms), [3 / 7, 4 / 7, 1 / 3, 1 / 3, 1 / 3])
    # B = 4: class 1 keeps its floor of one slot, class 0 takes the other three
    assert list(allocate(imp, np.array([2, 3]), 4)) == [3, 1]


def test_allocation_largest_remainder_and_fallbacks():
    # shares 10 * (5, 3, 2)/10 = 5, 3, 2 exactly
    assert list(allocate(np.array([5.0, 3, 2]), np.array([9, 9, 9]), 10)) == [5, 3, 2]
    # shares 7 * (1, 1, 1)/3 = 2.33 each: remainders tie -> lower class position first
    assert list(allocate(np.array([1.0, 1, 1]), np.array([5, 5, 5]), 7)) == [3, 2, 2]
    # every I is zero: follow class counts (plain stratified sampling)
    assert list(allocate(np.zeros(2), np.array([30, 10]), 8)) == [6, 2]
    # floor of one slot: tiny importance still gets one
    assert list(allocate(np.array([100.0, 1e-6]), np.array([5, 5]), 6)) == [5, 1]
    # fewer slots than classes: the largest importance wins, one each
    assert list(allocate(np.array([1.0, 3, 2]), np.array([1, 1, 1]), 2)) == [0, 1, 1]
    for b in range(1, 20):
        assert allocate(np.array([0.3, 2.0, 0.0, 5.5]), np.array([3, 4, 1, 9]), b).sum() == b


def test_cis_weights_follow_appendix_formula():
    g = np.array([[3.0, 0], [0, 4], [1, 0], [1, 0], [1, 0]])
    labels = np.array([0, 0, 1, 1, 1])
    norms, gram = _norms_gram(g)
    draw = cis_draw(labels, norms, gram, 4, np.random.default_rng(0))
    probs = intra_class_probs(labels, norms)
    for row, w in zip(draw.rows, draw.weights, strict=True):
        b = draw.sizes[int(labels[row])]
        assert w == pytest.approx(1 / (len(labels) * b * probs[row]))


def _batch_grads(sampler, g, n_trials, seed):
    rng = np.random.default_rng(seed)
    out = np.empty((n_trials, g.shape[1]))
    for t in range(n_trials):
        rows, w = sampler(rng)
        out[t] = (w[:, None] * g[rows]).sum(axis=0)
    return out


def _total_variance(samples):
    return float(((samples - samples.mean(axis=0)) ** 2).sum(axis=1).mean())


def test_monte_carlo_cis_is_unbiased():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(24, 5)) * rng.uniform(0.2, 3.0, size=(24, 1))
    labels = rng.integers(0, 3, size=24)
    norms, gram = _norms_gram(g)

    def cis(r):
        d = cis_draw(labels, norms, gram, 6, r)
        return d.rows, d.weights

    samples = _batch_grads(cis, g, 40_000, 1)
    se = samples.std(axis=0) / np.sqrt(len(samples))
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - g.mean(axis=0)), 5 * se + 1e-12)


def test_monte_carlo_is_is_unbiased():
    rng = np.random.default_rng(4)
    g = rng.normal(size=(30, 4)) * rng.uniform(0.1, 4.0, size=(30, 1))
    norms = np.linalg.norm(g, axis=1)
    samples = _batch_grads(lambda r: is_draw(norms, 5, r), g, 40_000, 2)
    se = samples.std(axis=0) / np.sqrt(len(samples))
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - g.mean(axis=0)), 5 * se)


def _uniform(n, b):
    return lambda r: (r.choice(n, size=b, replace=False), np.full(b, 1.0 / b))


def figure4_case(seed=0):
    """The paper's Figure 4 case: two classes of 20, equal gradient norms (all 1), class A
    with diverse directions (spread over the half circle facing away from B), class B with
    nearly identical ones."""
    rng = np.random.default_rng(seed)
    ang_a = rng.uniform(0.5 * np.pi, 1.5 * np.pi, 20)
    ang_b = rng.normal(0, 0.05, 20)
    g = np.concatenate([np.stack([np.cos(ang_a), np.sin(ang_a)], 1), np.stack([np.cos(ang_b), np.sin(ang_b)], 1)])
    return g, np.repeat([0, 1], 20)


def test_variance_order_on_figure4_case():
    g, labels = figure4_case()
    norms, gram = _norms_gram(g)
    n, b = len(g), 6
    draw = cis_draw(labels, norms, gram, b, np.random.default_rng(0))
    assert draw.sizes == {0: 5, 1: 1}  # 5 of 6 slots go to the class with diverse gradients

    def cis(r):
        d = cis_draw(labels, norms, gram, b, r)
        return d.rows, d.weights

    trials = 30_000
    v_cis = _total_variance(_batch_grads(cis, g, trials, 10))
    v_is = _total_variance(_batch_grads(lambda r: is_draw(norms, b, r), g, trials, 11))
    v_uni = _total_variance(_batch_grads(_uniform(n, b), g, trials, 12))
    assert v_cis < v_is and v_cis < v_uni
    assert v_uni / v_cis > 3.0  # DESIGN.md: about 4x on this kind of case
    # equal norms: IS is uniform sampling with replacement, uniform here is without
    # replacement, so IS = uniform * (n - 1) / (n - b) in expectation; allow 5% MC error
    assert v_is == pytest.approx(v_uni * (n - 1) / (n - b), rel=0.05)


def test_variance_order_with_unequal_norms():
    """Unequal norms separate IS from uniform: C-IS <= IS <= uniform."""
    rng = np.random.default_rng(5)
    base_a = rng.normal(size=(20, 3)) * rng.lognormal(0, 1.0, size=(20, 1))
    base_b = (np.array([1.0, 0.5, 0.0]) + 0.05 * rng.normal(size=(20, 3))) * rng.lognormal(0, 1.0, size=(20, 1))
    g = np.concatenate([base_a, base_b])
    labels = np.repeat([0, 1], 20)
    norms, gram = _norms_gram(g)
    b, trials = 6, 30_000

    def cis(r):
        d = cis_draw(labels, norms, gram, b, r)
        return d.rows, d.weights

    v_cis = _total_variance(_batch_grads(cis, g, trials, 20))
    v_is = _total_variance(_batch_grads(lambda r: is_draw(norms, b, r), g, trials, 21))
    v_uni = _total_variance(_batch_grads(_uniform(len(g), b), g, trials, 22))
    assert v_cis <= v_is <= v_uni


def test_theorem2_variance_formula_matches_monte_carlo():
    g, labels = figure4_case(1)
    norms, gram = _norms_gram(g)
    b = 6
    d = cis_draw(labels, norms, gram, b, np.random.default_rng(0))
    probs = intra_class_probs(labels, norms)
    exact = 0.0
    for c, by in d.sizes.items():
        rows = labels == c
        sy = rows.sum()
        beta = (norms[rows] ** 2 / (sy**2 * probs[rows])).sum()
        gamma = float((g[rows].mean(axis=0) ** 2).sum())
        exact += sy**2 / (len(g) ** 2 * by) * (beta - gamma)

    def cis(r):
        dd = cis_draw(labels, norms, gram, b, r)
        return dd.rows, dd.weights

    mc = _total_variance(_batch_grads(cis, g, 40_000, 7))
    assert mc == pytest.approx(exact, rel=0.05)


def test_weighting_off_gives_plain_mean():
    g, labels = figure4_case()
    norms, gram = _norms_gram(g)
    d = cis_draw(labels, norms, gram, 6, np.random.default_rng(0), weighting=False)
    np.testing.assert_allclose(d.weights, np.full(6, 1 / 6))


def test_exact_estimator_variances_match_monte_carlo():
    """The closed forms used on logged buffers (docs/results.md) against sampling itself."""
    from fedtitan.selection.cis import estimator_variances

    rng = np.random.default_rng(7)
    n, d, b = 30, 6, 10
    labels = rng.integers(0, 4, n)
    g = rng.normal(size=(n, d)) * rng.uniform(0.2, 3.0, size=(n, 1)) + labels[:, None] * 0.5
    norms = np.linalg.norm(g, axis=1)
    gram = g @ g.T
    exact = estimator_variances(labels, norms, gram, b)
    trials = 20000
    mc = {
        "cis": _total_variance(_batch_grads(lambda r: _cis_rows(labels, norms, gram, b, r), g, trials, 31)),
        "is": _total_variance(_batch_grads(lambda r: is_draw(norms, b, r), g, trials, 32)),
        "uniform": _total_variance(_batch_grads(lambda r: (r.choice(n, b), np.full(b, 1.0 / b)), g, trials, 33)),
        "uniform_no_replacement": _total_variance(_batch_grads(_uniform(n, b), g, trials, 34)),
    }
    for key, value in mc.items():
        assert abs(value / exact[key] - 1) < 0.06, (key, value, exact[key])
    assert exact["cis"] < exact["uniform"]  # gradient-norm-proportional draws help on this set


def _cis_rows(labels, norms, gram, b, rng):
    draw = cis_draw(labels, norms, gram, b, rng)
    return draw.rows, draw.weights
