import numpy as np
import pytest

from fedtitan.errors import ConfigError
from fedtitan.selection.pruning import class_quotas, kept_count, normalise_scores, prune, top_m


def test_top_m_hand_example_with_ties():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9, 0.5])
    # highest: 0.9 at 1 and 4; then three 0.5s at 0, 2, 5 -> ties go to lower index
    assert list(top_m(scores, 3)) == [0, 1, 4]
    assert list(top_m(scores, 4)) == [0, 1, 2, 4]
    assert list(prune("warmup-loss", 6, 0.5, scores=scores)) == [0, 1, 4]  # floor(0.5 * 6) = 3


def test_rho_one_keeps_everything_and_floor_rule():
    assert list(prune("warmup-loss", 5, 1.0, scores=np.zeros(5))) == [0, 1, 2, 3, 4]
    assert list(prune("full", 5, 0.3)) == [0, 1, 2, 3, 4]
    assert kept_count(10, 0.25) == 2  # floor(2.5)
    assert kept_count(10, 0.3) == 3  # floor(3.0000000000000004) and floor(2.9999999999999996) -> 3
    assert kept_count(3, 0.1) == 1  # rho > 0 keeps at least one sample


@pytest.mark.parametrize("rho", [0.0, -0.1, 1.01, float("nan"), float("inf")])
def test_bad_rho_errors(rho):
    with pytest.raises(ConfigError, match=r"rho must be in \(0, 1\]"):
        prune("random", 10, rho)


def test_random_pruning_is_seeded_and_sized():
    a = prune("random", 100, 0.2, rng=np.random.default_rng(1))
    b = prune("random", 100, 0.2, rng=np.random.default_rng(1))
    assert len(a) == 20 and len(set(a)) == 20 and np.array_equal(a, b)


def test_normalise_scores_unseen_rules():
    loss_sum = np.array([2.0, 0.0, 3.0, 0.0])
    seen = np.array([2, 0, 1, 0])
    np.testing.assert_allclose(normalise_scores(loss_sum, seen, "mean"), [1.0, 2.0, 3.0, 2.0])
    assert normalise_scores(loss_sum, seen, "keep")[1] == np.inf
    assert normalise_scores(loss_sum, seen, "drop")[3] == -np.inf
    with pytest.raises(ConfigError):
        normalise_scores(loss_sum, seen, "bogus")


def test_class_quotas_largest_remainder_by_hand_and_bounds():
    # exact shares 2.5, 1.5, 1.0 -> floors 2, 1, 1; the last place goes to the tie of remainders
    # 0.5 / 0.5 with the larger class
    assert list(class_quotas(np.array([5, 3, 2]), 5)) == [3, 1, 1]
    assert list(class_quotas(np.array([4, 4, 2]), 10)) == [4, 4, 2]
    assert list(class_quotas(np.array([9, 1]), 1)) == [1, 0]
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(1, 50, size=rng.integers(1, 10))
        m = int(rng.integers(0, counts.sum() + 1))
        q = class_quotas(counts, m)
        assert q.sum() == m and (q <= counts).all() and (q >= 0).all()
        assert np.all(np.abs(q - counts * m / counts.sum()) < 1)  # proportional, to the nearest integer
    with pytest.raises(ValueError, match="cannot keep 11 of 10"):
        class_quotas(np.array([5, 5]), 11)


def test_stratified_warmup_loss_keeps_the_top_losses_within_each_class():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    scores = np.array([0.1, 0.9, 0.5, 0.3, 0.2, 0.8, 0.7, 0.1, 5.0, 6.0])
    # m = 5 over counts (4, 4, 2): quotas (2, 2, 1); per class the highest losses
    assert list(prune("warmup-loss-stratified", 10, 0.5, scores=scores, labels=labels)) == [1, 2, 5, 6, 9]
    # plain warm-up loss takes both class-2 samples: the label mix shifts
    assert list(prune("warmup-loss", 10, 0.5, scores=scores)) == [1, 5, 6, 8, 9]
    with pytest.raises(ValueError, match="one score and one label per sample"):
        prune("warmup-loss-stratified", 10, 0.5, scores=scores)
