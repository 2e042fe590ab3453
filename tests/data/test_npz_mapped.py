"""An npz dataset's large arrays are memory-mapped from the file (the processes of a run share
one copy); compressed or small ones are read as before; a changed file is read again."""

import os

import numpy as np

from fedtitan.config import load_config
from fedtitan.data import load_npz
from fedtitan.data.loaders import MAP_MIN_BYTES


def _write(path, n, compressed=False, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 1, 8, 8), dtype=np.uint8)
    y = rng.integers(0, 10, n)
    (np.savez_compressed if compressed else np.savez)(path, x=x, y=y, x_test=x[:50], y_test=y[:50], num_classes=10)
    return x, y


def test_a_large_uncompressed_x_is_mapped_read_only_and_equal(tmp_path):
    n = MAP_MIN_BYTES // 64 + 10
    x, y = _write(tmp_path / "big.npz", n)
    ds = load_npz(tmp_path / "big.npz")
    assert isinstance(ds.x_train, np.memmap) and not ds.x_train.flags.writeable
    assert np.array_equal(ds.x_train, x) and np.array_equal(ds.y_train, y) and ds.y_train.dtype == np.int64
    assert not isinstance(ds.x_test, np.memmap)  # 3 KB: read
    assert ds.tensor("train", np.array([0, n - 1])).shape == (2, 1, 8, 8)


def test_compressed_or_small_arrays_are_read(tmp_path):
    n = MAP_MIN_BYTES // 64 + 10
    x, _ = _write(tmp_path / "packed.npz", n, compressed=True)
    ds = load_npz(tmp_path / "packed.npz")
    assert not isinstance(ds.x_train, np.memmap) and np.array_equal(ds.x_train, x)
    _write(tmp_path / "small.npz", 200)
    assert not isinstance(load_npz(tmp_path / "small.npz").x_train, np.memmap)


def test_a_process_reads_a_changed_npz_again(tmp_path):
    from fedtitan.training.setup import dataset_for, setup_for

    path = tmp_path / "data.npz"
    _write(path, 300, seed=1)
    cfg = load_config("quickstart", ["data.dataset=npz", f"data.path={path}", "data.num_clients=3",
                                     "data.partition=iid"])
    first, setup = dataset_for(cfg), setup_for(cfg)
    assert setup.dataset is first and dataset_for(cfg) is first
    os.replace(tmp_path / _write_elsewhere(tmp_path), path)  # a new file under the same name
    assert dataset_for(cfg) is not first and setup_for(cfg).dataset is not first
    assert not np.array_equal(dataset_for(cfg).x_train, first.x_train)


def _write_elsewhere(tmp_path):
    _write(tmp_path / "next.npz", 310, seed=2)
    return "next.npz"
