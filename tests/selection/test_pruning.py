import numpy as np
import pytest

from fedtitan.errors import ConfigError
from fedtitan.selection.pruning import kept_count, normalise_scores, prune, top_m


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
