"""Bring your own data: an image folder, a table with subjects and windows, a LEAF set, each
made here; decoded once and cached; bad input is one line naming the file or column."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fedtitan.data import load_dataset
from fedtitan.data.formats import class_names
from fedtitan.errors import DataError
from fedtitan.paths import cache_dir


def image_folder(root: Path, classes=("cat", "dog", "eel"), per_class=12, size=10, mode="RGB",
                 split_dirs=False, nested=True) -> Path:
    """Images whose colour says the class; a few in nested folders (they count for their top-level class)."""
    rng = np.random.default_rng(0)
    for split in (("train", "test") if split_dirs else ("",)):
        for k, c in enumerate(classes):
            for i in range(per_class if split != "test" else 4):
                sub = root / split / c / ("nested" if nested and i % 5 == 4 else "")
                sub.mkdir(parents=True, exist_ok=True)
                base = np.full((size, size, 3), 40 + 80 * k, np.uint8) + rng.integers(0, 20, (size, size, 3),
                                                                                     dtype=np.uint8)
                Image.fromarray(base).convert(mode).save(sub / f"{i}.png")
    return root


def sensor_table(path: Path, subjects=4, rows=60, labels=("walk", "sit", "run")) -> Path:
    """Readings of 3 axes, per subject runs of 20 rows per activity (a label change ends a window)."""
    rng = np.random.default_rng(1)
    out = []
    for s in range(subjects):
        for r in range(rows):
            lab = labels[(r // 20) % len(labels)]
            k = labels.index(lab)
            out.append({"subject": f"s{s}", "acc_x": k + rng.normal(0, 0.1), "acc_y": rng.normal(),
                        "acc_z": -k + rng.normal(0, 0.1), "activity": lab})
    pd.DataFrame(out).to_csv(path, index=False)
    return path


def leaf_file(path: Path, users=5, per_user=8, dim=16) -> Path:
    rng = np.random.default_rng(2)
    doc = {"users": [f"u{i}" for i in range(users)], "num_samples": [per_user] * users, "user_data": {}}
    for i in range(users):
        y = rng.integers(0, 3, per_user)
        x = rng.normal(0, 1, (per_user, dim)) + y[:, None]
        doc["user_data"][f"u{i}"] = {"x": x.tolist(), "y": y.tolist()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


# --------------------------------------------------------------------------- folder


def test_an_image_folder_follows_imagefolder_rules(tmp_path):
    root = image_folder(tmp_path / "pets")
    ds = load_dataset("folder", path=root, seed=0)
    assert ds.classes == ("cat", "dog", "eel") and ds.num_classes == 3
    assert ds.input_shape == (3, 10, 10) and ds.x_train.dtype == np.uint8
    assert len(ds.y_train) + len(ds.y_test) == 36  # the nested images count for their top-level class
    assert np.bincount(ds.y_test).tolist() == [2, 2, 2]  # a stratified 20% hold-out (no groups)
    # colour encodes the class: the label read from the folder matches the pixels
    assert (ds.x_train.mean(axis=(1, 2, 3)) // 80).astype(int).tolist() == ds.y_train.tolist()
    split = load_dataset("folder", path=image_folder(tmp_path / "split", split_dirs=True), seed=0)
    assert len(split.y_train) == 36 and len(split.y_test) == 12  # train/ and test/ are the splits


def test_mixed_sizes_and_channels_need_a_setting(tmp_path):
    root = image_folder(tmp_path / "mixed")
    Image.new("RGB", (14, 12)).save(root / "dog" / "big.png")
    with pytest.raises(DataError) as exc:
        load_dataset("folder", path=root)
    assert "is 14x12 but" in str(exc.value) and "set data.image_size" in str(exc.value)
    ds = load_dataset("folder", path=root, read_options={"image_size": 8})
    assert ds.input_shape == (3, 8, 8)
    Image.new("L", (10, 10)).save(root / "eel" / "grey.png")
    (root / "dog" / "big.png").unlink()
    with pytest.raises(DataError, match="has 1 channel.*set data.image_mode = 'RGB' or 'L'"):
        load_dataset("folder", path=root)
    assert load_dataset("folder", path=root, read_options={"image_mode": "L"}).input_shape == (1, 10, 10)


@pytest.mark.parametrize("case", ["truncated", "not-an-image", "one-class", "empty-class"])
def test_bad_image_folders_are_one_line_errors_and_leave_no_cache(tmp_path, case):
    root = image_folder(tmp_path / "bad")
    if case == "truncated":
        data = (root / "cat" / "0.png").read_bytes()
        (root / "cat" / "0.png").write_bytes(data[: len(data) // 2])
        want = f"cannot read image {root / 'cat' / '0.png'}"
    elif case == "not-an-image":
        (root / "dog" / "notes.png").write_text("hello")
        want = f"cannot read image {root / 'dog' / 'notes.png'}"
    elif case == "one-class":
        root = image_folder(tmp_path / "one", classes=("cat",))
        want = "found 1 class (cat); a classifier needs at least two"
    else:
        (root / "fox").mkdir()
        want = f"image folder {root / 'fox'}: no images"
    before = set(cache_dir().glob("*")) if cache_dir().exists() else set()
    with pytest.raises(DataError) as exc:
        load_dataset("folder", path=root)
    assert want in str(exc.value) and "\n" not in str(exc.value)
    after = set(cache_dir().glob("*")) if cache_dir().exists() else set()
    assert after == before  # nothing half-written


def test_a_folder_is_decoded_once_and_read_again_when_a_file_changes(tmp_path, monkeypatch):
    from fedtitan.data import formats

    root = image_folder(tmp_path / "cached")
    first = load_dataset("folder", path=root)
    calls = []
    real = formats._read_image
    monkeypatch.setattr(formats, "_read_image", lambda *a: calls.append(a) or real(*a))
    again = load_dataset("folder", path=root)
    assert calls == [] and np.array_equal(first.x_train, again.x_train)  # from the cache
    img = root / "cat" / "1.png"
    Image.new("RGB", (10, 10), (255, 255, 255)).save(img)
    os.utime(img, ns=(1, 1))  # even with an old mtime: its size changed
    changed = load_dataset("folder", path=root)
    assert len(calls) == 36 and not np.array_equal(np.sort(first.x_train.ravel()), np.sort(
        np.concatenate([changed.x_train, changed.x_test]).ravel()))


# --------------------------------------------------------------------------- table


def test_a_table_with_subjects_and_windows(tmp_path):
    path = sensor_table(tmp_path / "sensors.csv")
    opts = {"label_column": "activity", "group_column": "subject", "window": 10, "window_step": 5}
    ds = load_dataset("table", path=path, seed=0, read_options=opts)
    assert ds.classes == ("run", "sit", "walk")  # text labels, sorted
    assert ds.input_shape == (3, 10)  # (features, window)
    # per subject: 3 runs of 20 rows each, windows of 10 every 5 rows -> 3 windows a run
    assert len(ds.y_train) + len(ds.y_test) == 4 * 3 * 3
    assert set(ds.groups_train).isdisjoint(ds.groups_test)  # auto hold-out: whole subjects
    # a window never mixes activities: acc_x is the activity index (+noise) over its 10 rows
    k = {"walk": 0, "sit": 1, "run": 2}
    want = np.array([k[ds.classes[c]] for c in ds.y_train])
    assert np.allclose(ds.x_train[:, 0, :].mean(axis=1), want, atol=0.2)
    flat = load_dataset("table", path=path, read_options={"label_column": "activity", "holdout": "stratified"})
    assert flat.input_shape == (3,) and flat.groups_train is None and len(flat.y_train) == 192


def test_numeric_text_labels_sort_as_numbers():
    assert class_names(["10", "2", "1"]) == ["1", "2", "10"]
    assert class_names(["b", "10", "a"]) == ["10", "a", "b"]


@pytest.mark.parametrize(("edit", "opts", "message"), [
    (lambda df: df, {"label_column": "activty"}, "no label column 'activty'; did you mean 'activity'?"),
    (lambda df: df.assign(acc_y=df.acc_y.where(df.index != 6)), {"label_column": "activity"},
     "1 row(s) cannot be read (first: data row 7, where column 'acc_y' is empty, NaN or not a number)"),
    (lambda df: df.assign(subject=df.subject.where(df.index != 3, "")),
     {"label_column": "activity", "group_column": "subject"}, "where the group column 'subject' is empty"),
    (lambda df: df.assign(activity="walk"), {"label_column": "activity"}, "found 1 class (walk)"),
    (lambda df: df, {"label_column": "activity", "window": 25}, "no run of consecutive rows with one label is "
                                                                "data.window = 25 rows long (the longest is 20)"),
])
def test_bad_tables_are_one_line_errors(tmp_path, edit, opts, message):
    path = sensor_table(tmp_path / "t.csv")
    edit(pd.read_csv(path)).to_csv(path, index=False)
    with pytest.raises(DataError) as exc:
        load_dataset("table", path=path, read_options=opts)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_unreadable_rows_can_be_dropped_and_are_counted(tmp_path, caplog):
    path = sensor_table(tmp_path / "t.csv")
    df = pd.read_csv(path)
    df["acc_x"] = df["acc_x"].astype(object)
    df.loc[[3, 9], "acc_x"] = ["n/a", "12,5"]  # pandas reads "n/a" as NaN; "12,5" stays text
    df.to_csv(path, index=False)
    with caplog.at_level("WARNING"):
        ds = load_dataset("table", path=path, read_options={"label_column": "activity", "bad_rows": "drop"})
    assert len(ds.y_train) + len(ds.y_test) == 240 - 2
    assert "left out 2 row(s) that cannot be read (first: data row 4, where column 'acc_x'" in caplog.text


def test_a_folder_with_train_and_test_tables(tmp_path):
    sensor_table(tmp_path / "train.csv", subjects=3)
    sensor_table(tmp_path / "test.csv", subjects=1)
    ds = load_dataset("table", path=tmp_path, read_options={"label_column": "activity", "group_column": "subject"})
    assert len(ds.y_train) == 180 and len(ds.y_test) == 60


# --------------------------------------------------------------------------- leaf


def test_a_leaf_set_keeps_its_users(tmp_path):
    path = leaf_file(tmp_path / "leaf" / "all_data.json")
    ds = load_dataset("leaf", path=path, seed=0, read_options={"sample_shape": [1, 4, 4]})
    assert ds.input_shape == (1, 4, 4) and ds.classes == ("0", "1", "2")
    assert set(ds.groups_train) | set(ds.groups_test) == {f"u{i}" for i in range(5)}
    assert set(ds.groups_train).isdisjoint(ds.groups_test)
    leaf_file(tmp_path / "split" / "train" / "a.json")
    leaf_file(tmp_path / "split" / "test" / "a.json", per_user=2)
    split = load_dataset("leaf", path=tmp_path / "split")
    assert len(split.y_train) == 40 and len(split.y_test) == 10
    with pytest.raises(DataError, match="hold 16 values; data.sample_shape \\[3, 4, 4\\] needs 48"):
        load_dataset("leaf", path=path, read_options={"sample_shape": [3, 4, 4]})
    (tmp_path / "broken.json").write_text('{"users": ["a"]')
    with pytest.raises(DataError, match="cannot parse LEAF file"):
        load_dataset("leaf", path=tmp_path / "broken.json")


# --------------------------------------------------------------------------- hugging face


def test_a_saved_hugging_face_dataset_with_images_and_class_labels(tmp_path):
    datasets = pytest.importorskip("datasets")
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 3, n)
        imgs = [Image.fromarray(np.full((6, 6, 3), 60 * k + 20, np.uint8)) for k in y]
        feats = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["zebra", "ant", "cow"]),
                                   "owner": datasets.Value("string")})
        return datasets.Dataset.from_dict({"img": imgs, "label": y.tolist(), "owner": [f"o{i % 4}" for i in range(n)]},
                                          features=feats)

    datasets.DatasetDict({"train": split(30), "test": split(9)}).save_to_disk(str(tmp_path / "saved"))
    ds = load_dataset("hf", path=tmp_path / "saved", read_options={"group_column": "owner"})
    assert ds.classes == ("zebra", "ant", "cow")  # a ClassLabel keeps its own order
    assert ds.input_shape == (3, 6, 6) and len(ds.y_train) == 30 and len(ds.y_test) == 9
    assert (ds.x_train[:, 0, 0, 0] == 60 * ds.y_train + 20).all()
    assert set(ds.groups_train) == {"o0", "o1", "o2", "o3"}


def test_hugging_face_reads_a_local_image_folder_and_a_csv(tmp_path):
    pytest.importorskip("datasets")
    # imagefolder takes a label from an image's immediate parent folder; nested folders would
    # give it labels 'nested' (or none): the trap data.dataset = "folder" does not have
    root = image_folder(tmp_path / "pets", nested=False)
    ds = load_dataset("hf", path=root)
    assert ds.classes == ("cat", "dog", "eel") and len(ds.y_train) + len(ds.y_test) == 36
    table = load_dataset("hf", path=sensor_table(tmp_path / "s.csv"),
                         read_options={"label_column": "activity", "group_column": "subject", "window": 10})
    assert table.input_shape == (3, 10) and table.classes == ("run", "sit", "walk")
    with pytest.raises(DataError, match="no label column 'labl'"):
        load_dataset("hf", path=tmp_path / "s.csv", read_options={"label_column": "labl"})


def test_a_parquet_table(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "s.parquet"
    pd.read_csv(sensor_table(tmp_path / "s.csv")).to_parquet(path)
    ds = load_dataset("table", path=path, read_options={"label_column": "activity"})
    assert ds.input_shape == (3,) and ds.num_classes == 3


def test_the_cache_is_memory_mapped(tmp_path):
    import warnings

    ds = load_dataset("folder", path=image_folder(tmp_path / "m"))
    assert isinstance(ds.x_train, np.memmap) and not ds.x_train.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when a tensor would share a read-only array
        whole = ds.tensor("test")
    assert whole.shape == (len(ds.y_test), 3, 10, 10)


@pytest.mark.parametrize(("sets", "message"), [
    (["data.window=10"], "data.window: 10 has no effect with data.dataset = 'digits'; it reads data.dataset = 'table'"),
    (["data.image_size=32", "data.dataset=table", "data.path=t.csv"], "data.image_size: 32 has no effect with "
                                                                      "data.dataset = 'table'"),
    (["data.quantity_sigma=2"], "data.quantity_sigma: 2.0 has no effect with data.partition = 'dirichlet'"),
])
def test_settings_for_another_format_are_flagged(sets, message, caplog, monkeypatch):
    from fedtitan import config
    from fedtitan.config import load_config

    monkeypatch.setattr(config, "_told", set())  # warn_once: as in a fresh process
    with caplog.at_level("WARNING"):
        load_config("quickstart", sets)
    assert message in caplog.text


@pytest.mark.parametrize(("sets", "message"), [
    (["data.partition=shard"], "unknown partition 'shard'; did you mean 'shards'?"),
    (["data.dataset=folder"], "data.path: data.dataset = 'folder' reads your data at data.path"),
])
def test_bad_data_settings_are_one_line_errors(sets, message):
    from fedtitan.config import load_config
    from fedtitan.errors import ConfigError
    from fedtitan.preflight import check_config

    with pytest.raises(ConfigError) as exc:
        check_config(load_config("quickstart", sets))
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_data_summary_shows_a_tables_classes_and_groups(tmp_path, capsys):
    from simulations.cli import main

    path = sensor_table(tmp_path / "s.csv")
    assert main(["data", "summary", "--dataset", "table", "--path", str(path), "--set", "data.label_column=activity",
                 "--set", "data.group_column=subject", "--set", "data.window=10", "--partition", "natural",
                 "--num-clients", "3", "--set", "data.min_samples=1"]) == 0
    out = capsys.readouterr().out
    assert "s: 18 training and 6 test samples of shape (3, 10) (float32)" in out
    assert "3 classes (training samples): run 6, sit 6, walk 6" in out and "3 training groups (1 test groups)" in out
