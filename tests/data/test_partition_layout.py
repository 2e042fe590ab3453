"""The flat partition layout (one index array and offsets) against the list of per-client
arrays it replaced: the same indices for every client, every partitioner, any population."""

import numpy as np
import pandas as pd
import pytest

from fedtitan.config import load_config
from fedtitan.data.partition import Partition, dirichlet, iid, natural, quantity, shards, summary
from fedtitan.errors import ConfigError


def _same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == np.int64 and np.array_equal(g, w)


# ----------------------------------------------------------------------------- the definitions
# as the partitioners were written before the flat layout: a list of sorted arrays, one per client


def _iid_as_written(labels, k, seed):
    perm = np.random.default_rng(seed).permutation(len(labels))
    return [np.sort(p) for p in np.array_split(perm, k)]


def _group_as_written(values, client_of, k):
    return [np.sort(values[client_of == c]) for c in range(k)]


def test_partition_reads_as_the_list_it_stands_for():
    arrays = [np.array([3, 7]), np.array([], dtype=np.int64), np.array([0, 1, 2]), np.array([9])]
    p = Partition.of(arrays)
    assert len(p) == 4 and p.sizes().tolist() == [2, 0, 3, 1] and p.empty().tolist() == [1]
    _same(list(p), arrays)
    _same([p[k] for k in range(4)], arrays)
    assert np.array_equal(p[-1], [9]) and [a.tolist() for a in p[1:3]] == [[], [0, 1, 2]]
    assert Partition.of(p) is p and "4 clients" in repr(p)
    with pytest.raises(IndexError, match="outside the partition of 4 clients"):
        p[4]
    with pytest.raises(ValueError, match="offsets"):
        Partition(np.arange(3), np.array([0, 2]))


@pytest.mark.parametrize("n, k, seed", [(100, 7, 1), (1000, 1000, 3), (5000, 333, 0), (20, 1, 5)])
def test_iid_and_quantity_equal_their_per_client_definitions(n, k, seed):
    y = np.random.default_rng(seed).integers(0, 10, n)
    _same(iid(y, k, seed), _iid_as_written(y, k, seed))
    rng = np.random.default_rng(seed)  # quantity: the same draws, cut by its sizes
    weights = rng.lognormal(0.0, 1.0, k)
    spare = n - k
    cuts = np.rint(np.cumsum(weights / weights.sum()) * spare).astype(np.int64)
    cuts[-1] = spare
    sizes = np.diff(np.concatenate([[0], cuts])) + 1
    perm = rng.permutation(n)
    _same(quantity(y, k, 1.0, seed, min_samples=1), [np.sort(p) for p in np.split(perm, np.cumsum(sizes)[:-1])])


def test_grouping_partitioners_equal_their_per_client_definitions():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 10, 3000)
    groups = rng.integers(0, 40, 3000).astype(str)
    nat = natural(groups, 15, seed=2)
    uniq, inv = np.unique(groups, return_inverse=True)
    order = np.random.default_rng(2).permutation(len(uniq))
    client_of_group = np.empty(len(uniq), dtype=np.int64)
    client_of_group[order] = np.arange(len(uniq)) % 15
    _same(nat, _group_as_written(np.arange(3000), client_of_group[inv], 15))
    for p in (dirichlet(y, 50, alpha=0.3, seed=1), shards(y, 60, classes_per_client=3, seed=1)):
        assert sorted(np.concatenate(list(p)).tolist()) == list(range(3000))
        assert all(np.all(np.diff(part) > 0) for part in p)  # each client's indices sorted, distinct


def test_summary_counts_a_flat_partition_chunk_by_chunk_as_the_lists_did():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 500)
    sizes = rng.integers(0, 9, 80)
    sizes[[0, 17, 79]] = 0  # empty clients at the edges and inside
    p = Partition.from_sizes(rng.integers(0, 500, int(sizes.sum())), sizes)
    hist = np.zeros((80, 5), dtype=np.int64)
    for c, part in enumerate(p):
        np.add.at(hist, (c, y[part]), 1)
    want = pd.DataFrame(hist, columns=[f"class_{c}" for c in range(5)])
    want.insert(0, "n", hist.sum(axis=1))
    want.insert(1, "classes", (hist > 0).sum(axis=1))
    want.index.name = "partition_id"
    for chunk in (1, 7, 64, 1 << 20):
        pd.testing.assert_frame_equal(summary(p, y, 5, chunk=chunk), want)
    pd.testing.assert_frame_equal(summary(list(p), y, 5), want)
    with pytest.raises(IndexError, match="labels must lie in 0..3"):
        summary(p, y, 4)


def test_the_empty_check_names_the_same_empty_clients(monkeypatch):
    """partition_for's check, vectorised: how many clients a partitioner left without samples
    and the first of them, as the per-client loop named them."""
    import fedtitan.training.setup as setup

    parts = [np.array([0]), np.array([], dtype=np.int64), np.array([1, 2]), np.array([], dtype=np.int64)]
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    monkeypatch.setattr(setup, "partition", lambda *a, **kw: parts)
    monkeypatch.setattr(setup, "_PARTITIONS", {})  # nothing kept from another test
    cfg = load_config("quickstart", ["data.num_clients=4", "data.dataset=digits"])
    with pytest.raises(ConfigError, match=rf"left {len(empty)} client\(s\) without samples \(first: {empty[0]}\)"):
        setup.partition_for(cfg, setup.dataset_for(cfg))


def test_partition_for_is_made_once_per_dataset_and_settings():
    import fedtitan.training.setup as setup

    cfg = load_config("quickstart", ["data.num_clients=7", "data.dataset=digits", "data.partition=iid"])
    ds = setup.dataset_for(cfg)
    first = setup.partition_for(cfg, ds)
    assert setup.partition_for(cfg, ds) is first
    other = load_config("quickstart", ["data.num_clients=8", "data.dataset=digits", "data.partition=iid"])
    assert len(setup.partition_for(other, ds)) == 8
    _same(first, _iid_as_written(ds.y_train, 7, cfg.run.seed))
    test = setup.client_test_indices(cfg, len(ds.y_test))
    _same(test, [np.sort(p) for p in np.array_split(
        np.random.default_rng([cfg.run.seed, 0x7E57]).permutation(len(ds.y_test)), 7)])


def test_grouping_by_one_sort_equals_grouping_client_by_client():
    """_group (dirichlet, natural and shards end in it) against its definition, with empty
    clients, and with keys too wide for one 64-bit sort (the lexsort then)."""
    from fedtitan.data.partition import _group

    rng = np.random.default_rng(6)
    for n, k in ((1, 1), (50, 80), (4000, 37)):
        values = rng.permutation(n * 3)[:n]
        client_of = rng.integers(0, k, n)
        _same(_group(values, client_of.copy(), k), _group_as_written(values, client_of, k))
    big = np.array([2**62, 5, 2**61, 7], dtype=np.int64)
    _same(_group(big, np.array([1, 1, 0, 0]), 2), [np.array([7, 2**61]), np.array([5, 2**62])])


def test_a_kept_partition_goes_with_its_dataset(monkeypatch):
    import gc

    import fedtitan.training.setup as setup
    from fedtitan.data import load_dataset

    monkeypatch.setattr(setup, "_PARTITIONS", {})
    cfg = load_config("quickstart", ["data.num_clients=5", "data.dataset=digits", "data.partition=iid"])
    old, new = load_dataset("digits"), load_dataset("digits")
    first = setup.partition_for(cfg, old)
    assert setup.partition_for(cfg, new) is not first and len(setup._PARTITIONS) == 1  # the newer one
    del old
    gc.collect()
    assert len(setup._PARTITIONS) == 1  # an older dataset's end leaves the newer one's partition
    del new
    gc.collect()
    assert setup._PARTITIONS == {}
