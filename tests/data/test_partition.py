import numpy as np
import pytest

from fedtitan.data.partition import dirichlet, iid, natural, partition, shards, summary
from fedtitan.errors import ConfigError


def _covers(parts, n):
    allidx = np.concatenate(parts)
    return len(allidx) == n and len(np.unique(allidx)) == n


def test_iid_sizes_and_cover():
    y = np.repeat(np.arange(4), 25)
    parts = iid(y, 7, seed=1)
    assert _covers(parts, 100)
    assert sorted(len(p) for p in parts) == [14, 14, 14, 14, 14, 15, 15]


def test_dirichlet_deterministic_covers_and_skews():
    y = np.repeat(np.arange(10), 500)
    a = dirichlet(y, 20, alpha=0.1, seed=3)
    b = dirichlet(y, 20, alpha=0.1, seed=3)
    assert all(np.array_equal(p, q) for p, q in zip(a, b, strict=True))
    assert _covers(a, 5000)
    # small alpha -> most clients dominated by few classes; large alpha -> near uniform
    top_share = np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in a])
    c = dirichlet(y, 20, alpha=1000.0, seed=3)
    flat_share = np.mean([np.bincount(y[p], minlength=10).max() / len(p) for p in c])
    assert top_share > 0.5 > flat_share


def test_dirichlet_min_samples_and_errors():
    y = np.repeat(np.arange(10), 100)
    parts = dirichlet(y, 10, alpha=0.5, seed=0, min_samples=20)
    assert min(len(p) for p in parts) >= 20
    with pytest.raises(ConfigError, match="alpha must be > 0"):
        dirichlet(y, 10, alpha=0.0)
    with pytest.raises(ConfigError, match="exceeds"):
        dirichlet(y, 2000, alpha=1.0)


def test_shards_k_classes_per_client_balanced():
    y = np.repeat(np.arange(10), 100)
    parts = shards(y, 50, classes_per_client=5, seed=0)
    assert _covers(parts, 1000)
    for p in parts:
        assert len(np.unique(y[p])) == 5
    holders = np.zeros(10, dtype=int)
    for p in parts:
        holders[np.unique(y[p])] += 1
    assert holders.min() == holders.max() == 25  # 50 * 5 / 10
    with pytest.raises(ConfigError, match="classes_per_client"):
        shards(y, 5, classes_per_client=11)


def test_natural_one_client_per_group_and_merging():
    groups = np.array(["a", "b", "a", "c", "b", "c", "c"])
    y = np.zeros(7, dtype=int)
    parts = natural(groups)
    assert [sorted(groups[p].tolist()) for p in parts] == [["a", "a"], ["b", "b"], ["c", "c", "c"]]
    merged = natural(groups, 2, seed=0)
    assert _covers(merged, 7) and len(merged) == 2
    for p in merged:  # groups are never split
        for g in set(groups[p]):
            assert set(np.flatnonzero(groups == g)) <= set(p.tolist())
    with pytest.raises(ConfigError, match="1..3"):
        natural(groups, 4)
    with pytest.raises(ConfigError, match="group ids"):
        partition(y, "natural", 2)


def test_summary_counts():
    y = np.array([0, 0, 1, 2, 2, 2])
    df = summary([np.array([0, 1, 2]), np.array([3, 4, 5])], y, 3)
    assert df["n"].tolist() == [3, 3]
    assert df["classes"].tolist() == [2, 1]
    assert df.loc[1, "class_2"] == 3


def test_unknown_partition():
    with pytest.raises(ConfigError, match="choose one of"):
        partition(np.zeros(3, dtype=int), "bogus", 2)
