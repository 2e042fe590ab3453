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


# --------------------------------------------------------------------------- self-balancing, quantity, flwr


def test_balanced_split_by_hand():
    from fedtitan.data.partition import _balanced_split

    props = np.array([[0.8, 0.2], [0.5, 0.5], [0.5, 0.5]])
    counts = np.array([10, 10, 10])  # average 15 a client
    # class 0: 8 / 2; class 1: client 0 holds 8 <= 15, both share: 5 / 5 -> 13 / 7;
    # class 2: neither above 15: 5 / 5 -> 18 / 12
    assert _balanced_split(props, counts, 15.0).tolist() == [[8, 2], [5, 5], [5, 5]]
    # client 0 above the average takes no share of the next class
    assert _balanced_split(np.array([[0.9, 0.1], [0.5, 0.5]]), np.array([20, 10]), 10.0).tolist() == [[18, 2], [0, 10]]


def test_quantity_skew_keeps_labels_iid_and_sizes_lognormal():
    from fedtitan.data.partition import quantity

    y = np.repeat(np.arange(10), 500)
    parts = quantity(y, 50, sigma=1.0, seed=3, min_samples=5)
    sizes = np.array([len(p) for p in parts])
    assert sizes.sum() == 5000 and sizes.min() >= 5 and len(np.unique(np.concatenate(parts))) == 5000
    assert sizes.std() / sizes.mean() > 0.6  # lognormal(0, 1): coefficient of variation about 1.3
    big = parts[int(sizes.argmax())]
    assert np.bincount(y[big], minlength=10).min() > 0  # a large client sees every class
    assert [p.tolist() for p in quantity(y, 50, 1.0, seed=3, min_samples=5)] == [p.tolist() for p in parts]
    even = quantity(y, 50, sigma=0.0, seed=3)
    assert {len(p) for p in even} == {100}


@pytest.mark.parametrize("balancing", [False, True])
@pytest.mark.parametrize("seed", [0, 7])
def test_dirichlet_agrees_with_flwr_datasets_on_class_counts(seed, balancing):
    pytest.importorskip("flwr_datasets")
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, 3000)
    ours = dirichlet(y, 20, alpha=0.5, seed=seed, min_samples=10, self_balancing=balancing)
    theirs = DirichletPartitioner(num_partitions=20, partition_by="label", alpha=0.5, seed=seed,
                                  min_partition_size=10, self_balancing=balancing)
    theirs.dataset = datasets.Dataset.from_dict({"label": y.tolist()})
    for k in range(20):
        want = np.bincount(theirs.load_partition(k)["label"], minlength=10)
        assert np.bincount(y[ours[k]], minlength=10).tolist() == want.tolist()
    via = partition(y, "flwr:DirichletPartitioner", 20, seed=seed,
                    options={"alpha": 0.5, "min_partition_size": 10, "self_balancing": balancing})
    assert [len(p) for p in via] == [len(p) for p in ours]


def test_flwr_partitioners_by_name():
    pytest.importorskip("flwr_datasets")
    y = np.repeat(np.arange(4), 50)
    parts = partition(y, "flwr:IidPartitioner", 8, seed=0)
    assert len(parts) == 8 and sorted(np.concatenate(parts).tolist()) == list(range(200))
    groups = np.repeat([f"w{i}" for i in range(5)], 40)
    nat = partition(y, "flwr:NaturalIdPartitioner", 5, seed=0, groups=groups, options={"partition_by": "group"})
    assert sorted(len(p) for p in nat) == [40] * 5 and all(len(set(groups[p])) == 1 for p in nat)
    inner = partition(y, "flwr:InnerDirichletPartitioner", 4, seed=0,
                      options={"partition_sizes": [20, 40, 60, 80], "alpha": 0.5})
    assert [len(p) for p in inner] == [20, 40, 60, 80]  # its sizes, its label skew
    with pytest.raises(ConfigError, match="no partitioner 'DirichletPartitoner'; did you mean 'DirichletPartitioner'"):
        partition(y, "flwr:DirichletPartitoner", 4)
