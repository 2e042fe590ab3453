import gzip
import struct

import numpy as np
import pytest

from fedtitan.data import load_dataset, load_npz
from fedtitan.errors import DataError


def test_digits_embedded():
    ds = load_dataset("digits")
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    assert len(ds.x_train) + len(ds.x_test) == 1797
    t = ds.tensor("train", np.arange(5))
    assert t.shape == (5, 1, 8, 8) and t.dtype.is_floating_point


def test_npz_with_and_without_test_split(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 6)).astype(np.float32)
    y = np.repeat(np.arange(4), 25)
    np.savez(tmp_path / "mine.npz", x=x, y=y, groups=np.arange(100) % 5)
    ds = load_npz(tmp_path / "mine.npz")
    assert len(ds.x_train) == 80 and len(ds.x_test) == 20
    assert np.bincount(ds.y_test).tolist() == [5, 5, 5, 5]  # stratified
    assert ds.groups_train is not None and len(ds.groups_train) == 80
    np.savez(tmp_path / "split.npz", x=x, y=y, x_test=x[:10], y_test=y[:10])
    ds2 = load_dataset("npz", path=tmp_path / "split.npz")
    assert len(ds2.x_train) == 100 and len(ds2.x_test) == 10


def test_npz_with_text_labels(tmp_path):
    p = tmp_path / "text.npz"
    x = np.random.default_rng(0).random((60, 4)).astype(np.float32)
    np.savez(p, x=x, y=np.array(["10", "2", "1"] * 20), x_test=x[:6], y_test=np.array(["2", "10"] * 3))
    ds = load_dataset("npz", path=p)
    assert ds.classes == ("1", "2", "10") and ds.num_classes == 3  # numbers sort as numbers
    assert ds.y_train[:3].tolist() == [2, 1, 0] and ds.y_test[:2].tolist() == [1, 2]


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "noy.npz", x=np.zeros((4, 2)))
    with pytest.raises(DataError, match="has no 'y' array"):
        load_npz(tmp_path / "noy.npz")
    np.savez(tmp_path / "nan.npz", x=np.array([[0.0], [np.nan], [1.0], [2.0], [3.0]]), y=np.array([0, 1, 0, 1, 0]),
             x_test=np.zeros((1, 1)), y_test=np.array([0]))
    with pytest.raises(DataError, match="NaN or inf"):
        load_npz(tmp_path / "nan.npz")
    np.savez(tmp_path / "range.npz", x=np.zeros((3, 1)), y=np.array([0, 1, 5]), x_test=np.zeros((1, 1)),
             y_test=np.array([0]), num_classes=3)
    with pytest.raises(DataError, match="labels must lie in 0..2"):
        load_npz(tmp_path / "range.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="corrupt"):
        load_npz(tmp_path / "bad.npz")
    with pytest.raises(DataError, match="not found"):
        load_npz(tmp_path / "absent.npz")


def test_missing_dataset_message(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDTITAN_DATA", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="dataset 'cifar10' not found .*fedtitan data download cifar10"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(DataError, match="unknown dataset"):
        load_dataset("imagenet")


def _idx(path, arr):
    header = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_mnist_idx_files(tmp_path):
    d = tmp_path / "mnist"
    d.mkdir()
    rng = np.random.default_rng(0)
    _idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (12, 28, 28)))
    _idx(d / "train-labels-idx1-ubyte.gz", np.arange(12) % 10)
    _idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (5, 28, 28)))
    _idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(5))
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.y_test.tolist() == [0, 1, 2, 3, 4]


def test_cifar_official_folder(tmp_path):
    import pickle

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = {b"data": rng.integers(0, 255, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (d / name).write_bytes(pickle.dumps(data))
    ds = load_dataset("cifar10", data_dir=tmp_path)
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)


def test_leaf_femnist_json(tmp_path):
    import json

    for split in ("train", "test"):
        folder = tmp_path / "femnist" / "data" / split
        folder.mkdir(parents=True)
        doc = {"users": ["w1", "w2"], "user_data": {
            "w1": {"x": [[1.0] * 784, [0.0] * 784], "y": [3, 61]},
            "w2": {"x": [[0.5] * 784], "y": [7]}}}
        (folder / "part.json").write_text(json.dumps(doc))
    ds = load_dataset("femnist", data_dir=tmp_path)
    assert ds.x_train.shape == (3, 1, 28, 28)
    assert ds.x_train[0].max() == 0 and ds.x_train[1].min() == 255  # 1.0 = background -> 0
    assert ds.groups_train is not None and ds.groups_train.tolist() == ["w1", "w1", "w2"]


def test_uci_har_official_layout(tmp_path):
    root = tmp_path / "UCI HAR Dataset"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 3)):
        sig = root / split / "Inertial Signals"
        sig.mkdir(parents=True)
        for kind in ("total_acc", "body_acc", "body_gyro"):
            for axis in "xyz":
                np.savetxt(sig / f"{kind}_{axis}_{split}.txt", rng.normal(size=(n, 128)))
        np.savetxt(root / split / f"y_{split}.txt", (np.arange(n) % 6) + 1, fmt="%d")
        np.savetxt(root / split / f"subject_{split}.txt", np.arange(n) // 2 + 1, fmt="%d")
    ds = load_dataset("uci-har", data_dir=tmp_path)
    assert ds.x_train.shape == (6, 9, 128) and ds.y_train.max() == 5
    assert ds.groups_train is not None


@pytest.mark.slow
def test_shared_packs_load(shared_data):
    for name, shape, classes in [("femnist", (1, 28, 28), 62), ("uci-har", (9, 128), 6),
                                 ("mnist", (1, 28, 28), 10), ("cifar10", (3, 32, 32), 10),
                                 ("speech-commands", (1, 98, 40), 12)]:
        ds = load_dataset(name, data_dir=shared_data)
        assert ds.input_shape == shape and ds.num_classes == classes, name
    cifar = load_dataset("cifar10", data_dir=shared_data)
    assert len(cifar.x_train) == 50_000 and len(cifar.x_test) == 10_000
    means = cifar.x_train[::10].reshape(5000, 3, -1).mean(axis=(0, 2)) / 255  # the pack is sorted by class
    np.testing.assert_allclose(means, [0.491, 0.482, 0.447], atol=0.02)
    har = load_dataset("uci-har", data_dir=shared_data)
    assert har.groups_train is not None and har.groups_test is not None
    assert not set(har.groups_train.tolist()) & set(har.groups_test.tolist())  # subjects held out whole
