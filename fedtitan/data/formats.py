"""A researcher's own data: an image folder, a table (CSV or parquet), a LEAF JSON set, a
Hugging Face dataset.

Each is read without a network, decoded once into a :class:`Dataset` and cached as an npz
keyed on the sorted list of its files with their sizes and mtimes (and the reading
options), so a changed, added or removed file reads the data again; the cache is written
atomically, so a failure leaves nothing half-written. Bad input is one :class:`DataError`
line naming the file or column and what would be right.

* ``folder``: torchvision's ImageFolder rules: a class is a top-level folder (sorted by
  name), its images are found at any depth under it; ``train/`` and ``test/`` folders, when
  both exist, are the splits. Images are converted to ``image_mode`` (``RGB`` or ``L``) and
  resized to ``image_size`` x ``image_size`` (bilinear) when it is set.
* ``table``: rows of a CSV or parquet file; ``label_column`` gives classes (sorted: as
  numbers when every label is a number, so ``"2"`` before ``"10"``, else as text),
  ``feature_columns`` the features (default: every numeric column but the label and the
  group), ``group_column`` the natural clients (per user or subject). With ``window``,
  consecutive rows of one group and one label become one sample ``(features, window)``,
  a window every ``window_step`` rows. A folder holding ``train.csv`` and ``test.csv`` (or
  ``.parquet``) gives the splits.
* ``leaf``: LEAF's JSON (``users``, ``user_data: {user: {x, y}}``), one file or a folder of
  them, ``train/`` and ``test/`` when present; the users are the groups; ``sample_shape``
  reshapes each flat ``x``.

* ``hf`` (the ``fedtitan[hf]`` extra): a Hugging Face ``datasets`` dataset saved with
  ``save_to_disk``, or a local image folder or table file read through ``datasets``; an
  ``Image`` column gives images (as ``folder``), else the columns are read as ``table``;
  a ``ClassLabel`` label keeps its names and order; ``train`` and ``test`` splits are used.

Without a test split in the data, one is held out with the run's seed: ``stratified`` (per
class) or ``group`` (whole groups, so no test user is a training client); ``auto`` takes
``group`` when the data has groups.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedtitan.data.dataset import Dataset
from fedtitan.data.splits import holdout_groups, stratified_holdout
from fedtitan.errors import DataError, did_you_mean
from fedtitan.paths import cache_dir

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
TABLE_EXTENSIONS = (".csv", ".tsv", ".parquet", ".pq")
FORMATS = ("folder", "table", "leaf", "hf")


@dataclass(frozen=True)
class ReadOptions:
    """How a folder, table or LEAF set is read (``data.*`` settings of the same names)."""

    image_size: int | None = None
    image_mode: str | None = None
    label_column: str = "label"
    feature_columns: tuple[str, ...] | None = None
    group_column: str | None = None
    window: int | None = None
    window_step: int | None = None
    sample_shape: tuple[int, ...] | None = None
    bad_rows: str = "error"
    holdout: str = "auto"
    test_fraction: float = 0.2

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any]) -> ReadOptions:
        kw = {k: v for k, v in m.items() if k in cls.__dataclass_fields__}
        for key in ("feature_columns", "sample_shape"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def decoding(self) -> dict[str, Any]:
        """What the decoded arrays depend on (the hold-out is applied after the cache)."""
        d = dict(self.__dict__)
        for k in ("holdout", "test_fraction"):
            d.pop(k)
        return d


# --------------------------------------------------------------------------- cache


def _files_tag(files: Iterable[Path], root: Path, extra: Mapping[str, Any]) -> str:
    h = hashlib.sha1(str(root.resolve()).encode())
    for f in sorted(files):
        st = f.stat()
        h.update(f"|{f.relative_to(root) if f != root else f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Source:
    """What a format reads (``files`` under ``base``) and how it decodes them."""

    kind: str
    base: Path
    files: list[Path]
    build: Callable[[], dict[str, np.ndarray]]


MAPPED = ("x", "test_x")  # the big arrays, memory-mapped from the cache


def _read_dir(d: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a complete cache folder (``x`` and ``test_x`` memory-mapped), or ``None``."""
    if not (d / "complete").exists():
        return None
    try:
        return {f.stem: np.load(f, mmap_mode="r" if f.stem in MAPPED else None, allow_pickle=False)
                for f in sorted(d.glob("*.npy"))}
    except Exception:
        return None


def _write_dir(d: Path, arrays: Mapping[str, np.ndarray]) -> bool:
    """Write ``arrays`` as ``.npy`` files into a fresh folder renamed into place at the end, so a
    failure or a second process writing the same data leaves no half-written folder."""
    import shutil
    import tempfile

    try:
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{d.name}-", dir=d.parent))
    except OSError:
        return False
    try:
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", np.asarray(v), allow_pickle=False)
        (tmp / "complete").touch()
        try:
            os.replace(tmp, d)
        except OSError:  # another process got there first: its copy is the same
            shutil.rmtree(tmp, ignore_errors=True)
        return True
    except (OSError, ValueError):
        shutil.rmtree(tmp, ignore_errors=True)
        return False


def cached_arrays(source: Source, opts: ReadOptions, seed: int) -> dict[str, np.ndarray]:
    """The train/test arrays of ``source``, decoded once and split once per seed.

    Two cache levels under :func:`~fedtitan.paths.cache_dir`, each a folder of ``.npy`` files
    written whole or not at all: the decoded data (keyed on the files' names, sizes and mtimes
    and the reading settings), and its train/test split (keyed on that and on the hold-out
    settings and seed). The split's ``x`` and ``test_x`` are memory-mapped, so the client
    processes of one machine share one copy in the page cache instead of each holding its own."""
    tag = _files_tag(source.files, source.base, opts.decoding())
    split_tag = hashlib.sha1(f"{tag}|{opts.holdout}|{opts.test_fraction}|{seed}".encode()).hexdigest()[:12]
    split_dir = cache_dir() / f"{source.kind}-{tag}-split-{split_tag}"
    got = _read_dir(split_dir)
    if got is not None:
        return got
    decoded_dir = cache_dir() / f"{source.kind}-{tag}"
    arrays = _read_dir(decoded_dir)
    if arrays is None:
        arrays = source.build()
        _write_dir(decoded_dir, arrays)
    where = f"{source.kind} {source.base if source.kind != 'table' else source.files[0]}"
    split = split_holdout(arrays, opts, seed, where)
    split["mean"], split["std"] = channel_stats(split["x"])
    if _write_dir(split_dir, split):
        return _read_dir(split_dir) or split
    return split


# --------------------------------------------------------------------------- labels and splits


def class_names(values: Iterable[Any]) -> list[str]:
    """Distinct labels as text, sorted as numbers when all are numbers ("2" before "10"),
    else as text."""
    uniq = sorted({str(v) for v in values})
    try:
        nums = [float(u) for u in uniq]
    except ValueError:
        return uniq
    return [u for _, u in sorted(zip(nums, uniq, strict=True))]


def _encode(values: np.ndarray, names: list[str]) -> np.ndarray:
    index = {n: i for i, n in enumerate(names)}
    return np.array([index[str(v)] for v in values], dtype=np.int64)


def _label_text(values: np.ndarray) -> np.ndarray:
    """Labels as text, whole-number floats without ``.0`` (a CSV column of 1.0, 2.0 reads 1, 2)."""
    if np.issubdtype(values.dtype, np.floating) and np.all(np.mod(values, 1) == 0):
        values = values.astype(np.int64)
    return values.astype(str)


def split_holdout(arrays: dict[str, np.ndarray], opts: ReadOptions, seed: int, where: str) -> dict[str, np.ndarray]:
    """Train/test arrays: the data's own test split, else a seeded hold-out (stratified or by group)."""
    if "test_x" in arrays:
        return arrays
    x, y, g = arrays["x"], arrays["y"], arrays.get("groups")
    how = opts.holdout
    if how == "auto":
        how = "group" if g is not None else "stratified"
    if how == "group":
        if g is None:
            raise DataError(f"{where}: data.holdout = 'group' needs groups (data.group_column for a table, the users "
                            f"of a LEAF set); this data has none: use 'stratified'")
        if len(np.unique(g)) < 2:
            raise DataError(f"{where}: holding out whole groups needs at least 2 groups, found {len(np.unique(g))}; "
                            f"set data.holdout = 'stratified'")
        test = holdout_groups(g, opts.test_fraction, seed)
        tr, te = np.flatnonzero(~test), np.flatnonzero(test)
    else:
        tr, te = stratified_holdout(y, opts.test_fraction, seed)
    if len(te) == 0 or len(tr) == 0:
        raise DataError(f"{where}: holding out {opts.test_fraction:.0%} of {len(y)} samples left an empty split; "
                        f"give more samples or a test split of its own")
    out = {"x": x[tr], "y": y[tr], "test_x": x[te], "test_y": y[te], "classes": arrays["classes"]}
    if g is not None:
        out["groups"], out["test_groups"] = g[tr], g[te]
    return out


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of ``x`` (axis 1; images scaled by 1/255),
    a chunk at a time so a large array is never copied whole to float64."""
    scale = 1 / 255 if x.dtype == np.uint8 else 1.0
    axes = (0, *range(2, x.ndim))
    total = np.zeros(x.shape[1] if x.ndim > 1 else 1)
    squares = np.zeros_like(total)
    for a in range(0, len(x), chunk):
        part = np.asarray(x[a:a + chunk], dtype=np.float64) * scale
        total += part.sum(axis=axes)
        squares += (part**2).sum(axis=axes)
    count = len(x) * int(np.prod(x.shape[2:]))
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean, np.where(std > 1e-8, std, 1.0)


def to_dataset(name: str, arrays: dict[str, np.ndarray]) -> Dataset:
    """A :class:`Dataset` from decoded, split arrays, normalised with the training split's
    per-channel mean and std (images: uint8 scaled by 1/255)."""
    x = arrays["x"]
    mean, std = (arrays["mean"], arrays["std"]) if "mean" in arrays else channel_stats(x)
    classes = tuple(str(c) for c in arrays["classes"])
    return Dataset(
        name=name, x_train=x, y_train=arrays["y"], x_test=arrays["test_x"], y_test=arrays["test_y"],
        num_classes=len(classes), classes=classes, groups_train=arrays.get("groups"),
        groups_test=arrays.get("test_groups"), scale=1 / 255 if x.dtype == np.uint8 else 1.0,
        mean=tuple(float(m) for m in np.atleast_1d(mean)), std=tuple(float(v) for v in np.atleast_1d(std)),
    )


def _need_two_classes(names: list[str], where: str) -> None:
    if len(names) < 2:
        raise DataError(f"{where}: found {len(names)} class ({', '.join(names) or 'none'}); a classifier needs at "
                        f"least two")


# --------------------------------------------------------------------------- folder


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _folder_split(root: Path) -> dict[str, Path]:
    train, test = root / "train", root / "test"
    if train.is_dir() and test.is_dir():
        return {"train": train, "test": test}
    return {"train": root}


def folder_layout(root: Path) -> tuple[dict[str, Path], list[str], dict[str, list[tuple[Path, str]]]]:
    """(splits, class names, split -> [(file, class)]) under ``root``, by ImageFolder's rules."""
    if not root.is_dir():
        raise DataError(f"data.path: {root} is not a folder; data.dataset = 'folder' reads a folder of class folders")
    splits = _folder_split(root)
    classes = sorted(d.name for d in splits["train"].iterdir() if d.is_dir() and not d.name.startswith("."))
    _need_two_classes(classes, f"image folder {splits['train']}")
    files: dict[str, list[tuple[Path, str]]] = {}
    for split, folder in splits.items():
        files[split] = []
        for c in classes if split == "train" else sorted(d.name for d in folder.iterdir() if d.is_dir()):
            if c not in classes:
                raise DataError(f"image folder {folder / c}: class {c!r} has no training folder "
                                f"({splits['train'] / c}); the test classes must be training classes")
            found = _image_files(folder / c)
            if not found and split == "train":
                raise DataError(f"image folder {folder / c}: no images (looked for {', '.join(IMAGE_EXTENSIONS)}); "
                                f"add some or remove the class folder")
            files[split] += [(f, c) for f in found]
    return splits, classes, files


def _read_image(path: Path, mode: str | None, size: int | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as f:
            f.load()
            return _pil_array(f, mode, size)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; remove or replace the file") from None


def decode_folder(root: Path, opts: ReadOptions, progress: bool = False) -> Source:
    splits, classes, files = folder_layout(root)
    every = [f for fs in files.values() for f, _ in fs]

    def build() -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"classes": np.array(classes)}
        first: dict[str, Any] = {}
        for split, items in files.items():
            if not items:
                continue
            images = []
            for f, _c in _progress(items, f"decoding {split} images", progress):
                a = _read_image(f, opts.image_mode, opts.image_size)
                channels = 1 if a.ndim == 2 else a.shape[2]
                if not first:
                    first.update(shape=a.shape, file=f, channels=channels)
                if channels != first["channels"]:
                    raise DataError(f"image folder {root}: {f} has {channels} channel(s) but {first['file']} has "
                                    f"{first['channels']}; set data.image_mode = 'RGB' or 'L' to convert them all")
                if a.shape != first["shape"]:
                    raise DataError(f"image folder {root}: {f} is {a.shape[1]}x{a.shape[0]} but {first['file']} is "
                                    f"{first['shape'][1]}x{first['shape'][0]}; set data.image_size to resize them all")
                images.append(a if a.ndim == 3 else a[:, :, None])
            x = np.stack(images).transpose(0, 3, 1, 2)
            y = _encode(np.array([c for _, c in items]), classes)
            key = "" if split == "train" else "test_"
            out[f"{key}x"], out[f"{key}y"] = x, y
        return out

    return Source("folder", root, every, build)


def _progress(items: list[Any], what: str, show: bool) -> Iterable[Any]:
    """A progress bar over a long decode, on a terminal (a Ray worker's output is not one)."""
    import sys

    if not show or len(items) < 500 or not sys.stderr.isatty():
        return items
    from rich.progress import track

    return track(items, description=what, transient=True)


# --------------------------------------------------------------------------- table


def _read_table(path: Path) -> Any:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            try:
                import pyarrow  # noqa: F401
            except ImportError:
                raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or save the table "
                                f"as CSV") from None
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", skipinitialspace=True)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot read table {path}: {type(exc).__name__}: {exc}") from None


def _table_files(root: Path) -> dict[str, Path]:
    if root.is_file():
        if root.suffix.lower() not in TABLE_EXTENSIONS:
            raise DataError(f"data.path: {root} is not a table; data.dataset = 'table' reads "
                            f"{', '.join(TABLE_EXTENSIONS)} files")
        return {"train": root}
    if root.is_dir():
        for ext in TABLE_EXTENSIONS:
            if (root / f"train{ext}").is_file() and (root / f"test{ext}").is_file():
                return {"train": root / f"train{ext}", "test": root / f"test{ext}"}
        raise DataError(f"data.path: folder {root} holds no train.csv and test.csv (or .parquet); name one table file "
                        f"or give the folder both")
    raise DataError(f"data.path: table {root} not found")


def _table_arrays(df: Any, path: Path, opts: ReadOptions, classes: list[str] | None) -> tuple[dict[str, np.ndarray],
                                                                                               list[str]]:
    import pandas as pd

    cols = [str(c) for c in df.columns]
    df.columns = cols
    where = f"table {path}"
    if opts.label_column not in cols:
        raise DataError(f"{where}: no label column {opts.label_column!r}{did_you_mean(opts.label_column, cols)} "
                        f"Columns: {', '.join(cols)}; set data.label_column")
    if opts.group_column is not None and opts.group_column not in cols:
        raise DataError(f"{where}: no group column {opts.group_column!r}{did_you_mean(opts.group_column, cols)} "
                        f"Columns: {', '.join(cols)}; set data.group_column")
    skip = {opts.label_column, opts.group_column}
    if opts.feature_columns is not None:
        for c in opts.feature_columns:
            if c not in cols:
                raise DataError(f"{where}: no feature column {c!r}{did_you_mean(c, cols)} Columns: {', '.join(cols)}")
        features = list(opts.feature_columns)
    else:
        features = [c for c in cols if c not in skip and _mostly_numeric(df[c])]
        if not features:
            raise DataError(f"{where}: no numeric column besides the label and group; name the features in "
                            f"data.feature_columns (columns: {', '.join(cols)})")
    values = df[features].apply(pd.to_numeric, errors="coerce")
    bad = values.isna() | ~np.isfinite(values.to_numpy(dtype=np.float64, na_value=np.nan))
    labels = df[opts.label_column]
    bad_label = labels.isna() | (labels.astype(str).str.strip() == "")
    bad_rows = bad.any(axis=1) | bad_label
    groups = None
    if opts.group_column is not None:
        g = df[opts.group_column]
        bad_group = g.isna() | (g.astype(str).str.strip() == "")
        bad_rows |= bad_group
    if bad_rows.any():
        n = int(bad_rows.sum())
        first = int(np.flatnonzero(bad_rows.to_numpy())[0])
        col = next((c for c in features if bad[c].iloc[first]), None)
        what = (f"column {col!r} is empty, NaN or not a number" if col is not None else
                f"the label column {opts.label_column!r} is empty" if bad_label.iloc[first] else
                f"the group column {opts.group_column!r} is empty")
        if opts.bad_rows != "drop":
            raise DataError(f"{where}: {n} row(s) cannot be read (first: data row {first + 1}, where {what}); fix them, "
                            f"or set data.bad_rows = 'drop' to leave them out (counted)")
        from fedtitan.config import warn_once

        warn_once(f"{where}: left out {n} row(s) that cannot be read (first: data row {first + 1}, where {what})")
        keep = ~bad_rows.to_numpy()
        values, labels = values[keep], labels[keep]
        if opts.group_column is not None:
            df = df[keep]
    if opts.group_column is not None:
        groups = df[opts.group_column].astype(str).str.strip().to_numpy()
    text = _label_text(labels.to_numpy())
    names = class_names(text) if classes is None else classes
    unknown = sorted(set(text) - set(names))
    if unknown:
        raise DataError(f"{where}: labels {', '.join(unknown[:5])} do not occur in the training table; the test "
                        f"labels must be training labels")
    y = _encode(text, names)
    x = values.to_numpy(dtype=np.float32)
    if opts.window is not None:
        x, y, groups = _windows(x, y, groups, opts.window, opts.window_step or opts.window, where)
    out = {"x": x, "y": y}
    if groups is not None:
        out["groups"] = groups
    return out, names


def _mostly_numeric(col: Any) -> bool:
    """A numeric column, or a text one whose cells mostly read as numbers (its few bad cells
    are then reported, not the whole column silently left out)."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(col):
        return True
    filled = col[col.notna()]
    return len(filled) > 0 and pd.to_numeric(filled, errors="coerce").notna().mean() > 0.5


def _windows(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, window: int, step: int,
             where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Samples ``(features, window)`` from runs of consecutive rows with one group and one label."""
    key = y if groups is None else np.array([f"{g}\x00{v}" for g, v in zip(groups, y, strict=True)])
    change = np.flatnonzero(key[1:] != key[:-1]) + 1
    starts, ends = np.concatenate([[0], change]), np.concatenate([change, [len(y)]])
    xs, ys, gs = [], [], []
    for s, e in zip(starts, ends, strict=True):
        for a in range(s, e - window + 1, step):
            xs.append(x[a:a + window].T)
            ys.append(y[a])
            if groups is not None:
                gs.append(groups[a])
    if not xs:
        longest = int((ends - starts).max())
        raise DataError(f"{where}: no run of consecutive rows with one {'group and ' if groups is not None else ''}"
                        f"label is data.window = {window} rows long (the longest is {longest}); lower data.window")
    return np.stack(xs), np.array(ys, dtype=np.int64), (np.array(gs) if groups is not None else None)


def decode_table(root: Path, opts: ReadOptions) -> Source:
    files = _table_files(root)
    base = root if root.is_dir() else root.parent

    def build() -> dict[str, np.ndarray]:
        train, names = _table_arrays(_read_table(files["train"]), files["train"], opts, None)
        _need_two_classes(names, f"table {files['train']} (label column {opts.label_column!r})")
        out = {**train, "classes": np.array(names)}
        if "test" in files:
            test, _ = _table_arrays(_read_table(files["test"]), files["test"], opts, names)
            out.update({f"test_{k}": v for k, v in test.items()})
        return out

    return Source("table", base, list(files.values()), build)


# --------------------------------------------------------------------------- leaf


def _leaf_files(root: Path) -> dict[str, list[Path]]:
    if root.is_file():
        return {"train": [root]}
    if not root.is_dir():
        raise DataError(f"data.path: LEAF data {root} not found")
    if (root / "train").is_dir() and (root / "test").is_dir():
        out = {s: sorted((root / s).glob("*.json")) for s in ("train", "test")}
    else:
        out = {"train": sorted(root.glob("*.json"))}
    for split, fs in out.items():
        if not fs:
            raise DataError(f"LEAF data {root}: no .json files for {split}; give a LEAF json file or a folder of them")
    return out


def _read_leaf_users(files: list[Path], opts: ReadOptions) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xs, ys, us = [], [], []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot parse LEAF file {f}: {exc}") from None
        if not isinstance(doc, dict) or "users" not in doc or "user_data" not in doc:
            raise DataError(f"LEAF file {f}: no 'users' and 'user_data' keys (found {sorted(doc)[:6] if isinstance(doc, dict) else type(doc).__name__}); "
                            f"a LEAF file is {{'users': [...], 'user_data': {{user: {{'x': [...], 'y': [...]}}}}}}")
        for user in doc["users"]:
            ud = doc["user_data"].get(user)
            if ud is None:
                raise DataError(f"LEAF file {f}: user {user!r} is listed but has no user_data")
            try:
                x = np.asarray(ud["x"], dtype=np.float32)
            except (KeyError, ValueError) as exc:
                raise DataError(f"LEAF file {f}: user {user!r}'s x is not a list of equal-length numeric samples "
                                f"({exc})") from None
            y = np.asarray(ud.get("y", []))
            if len(x) != len(y):
                raise DataError(f"LEAF file {f}: user {user!r} has {len(x)} samples but {len(y)} labels")
            if len(x) == 0:
                continue
            if opts.sample_shape is not None:
                want = int(np.prod(opts.sample_shape))
                if int(np.prod(x.shape[1:])) != want:
                    raise DataError(f"LEAF file {f}: user {user!r}'s samples hold {int(np.prod(x.shape[1:]))} values; "
                                    f"data.sample_shape {list(opts.sample_shape)} needs {want}")
                x = x.reshape(len(x), *opts.sample_shape)
            xs.append(x)
            ys.append(y)
            us.append(np.full(len(x), str(user)))
    if not xs:
        raise DataError(f"LEAF data {files[0].parent}: no user has samples")
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise DataError(f"LEAF data {files[0].parent}: samples differ in shape ({', '.join(map(str, sorted(shapes)))}); "
                        f"set data.sample_shape")
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(us)


def decode_leaf(root: Path, opts: ReadOptions) -> Source:
    files = _leaf_files(root)
    base = root if root.is_dir() else root.parent

    def build() -> dict[str, np.ndarray]:
        x, y, users = _read_leaf_users(files["train"], opts)
        names = class_names(_label_text(y))
        _need_two_classes(names, f"LEAF data {root}")
        out = {"x": x, "y": _encode(_label_text(y), names), "groups": users, "classes": np.array(names)}
        if "test" in files:
            tx, ty, tu = _read_leaf_users(files["test"], opts)
            unknown = sorted(set(_label_text(ty)) - set(names))
            if unknown:
                raise DataError(f"LEAF data {root}: test labels {', '.join(unknown[:5])} do not occur in train")
            out.update(test_x=tx, test_y=_encode(_label_text(ty), names), test_groups=tu)
        return out

    return Source("leaf", base, [f for fs in files.values() for f in fs], build)


# --------------------------------------------------------------------------- hugging face


def _hf_open(root: Path) -> Any:
    """A ``datasets`` Dataset or DatasetDict from a ``save_to_disk`` folder, a local image folder
    (``imagefolder``) or a table file (``csv``, ``parquet``, ``json``), without a network."""
    try:
        import datasets
    except ImportError:
        raise DataError("data.dataset = 'hf' needs Hugging Face datasets: pip install 'fedtitan[hf]'") from None
    try:
        if root.is_dir() and ((root / "dataset_dict.json").exists() or (root / "state.json").exists()):
            return datasets.load_from_disk(str(root))
        if root.is_dir():
            return datasets.load_dataset("imagefolder", data_dir=str(root))
        kind = {".csv": "csv", ".tsv": "csv", ".parquet": "parquet", ".pq": "parquet", ".json": "json",
                ".jsonl": "json"}.get(root.suffix.lower())
        if kind is None:
            raise DataError(f"data.path: {root} is not a saved dataset, a folder or a csv/parquet/json file "
                            f"(data.dataset = 'hf')")
        extra = {"delimiter": "\t"} if root.suffix.lower() == ".tsv" else {}
        return datasets.load_dataset(kind, data_files=str(root), **extra)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"Hugging Face datasets cannot read {root}: {type(exc).__name__}: {exc}") from None


def _hf_split(ds: Any, path: Path, opts: ReadOptions, classes: list[str] | None) -> tuple[dict[str, np.ndarray],
                                                                                         list[str]]:
    import datasets

    features = ds.features
    image_cols = [k for k, f in features.items() if isinstance(f, datasets.Image)]
    label = opts.label_column
    if label not in features:
        raise DataError(f"Hugging Face dataset {path}: no label column {label!r}{did_you_mean(label, list(features))} "
                        f"Columns: {', '.join(features)}; set data.label_column")
    if not image_cols:  # a table: the same reading as data.dataset = "table"
        return _table_arrays(ds.to_pandas(), path, opts, classes)
    feat = features[label]
    raw = np.asarray(ds[label])
    if isinstance(feat, datasets.ClassLabel):
        names = list(feat.names) if classes is None else classes
        y = raw.astype(np.int64)
    else:
        text = _label_text(raw)
        names = class_names(text) if classes is None else classes
        unknown = sorted(set(text) - set(names))
        if unknown:
            raise DataError(f"Hugging Face dataset {path}: test labels {', '.join(unknown[:5])} do not occur in train")
        y = _encode(text, names)
    images, first = [], None
    for i, img in enumerate(ds.cast_column(image_cols[0], datasets.Image(decode=True))[image_cols[0]]):
        a = _pil_array(img, opts.image_mode, opts.image_size)
        if first is None:
            first = a.shape
        if a.shape != first:
            raise DataError(f"Hugging Face dataset {path}: image {i} is {a.shape[1]}x{a.shape[0]} "
                            f"({a.shape[2] if a.ndim == 3 else 1} channel(s)) but image 0 is {first[1]}x{first[0]} "
                            f"({first[2] if len(first) == 3 else 1}); set data.image_size and data.image_mode")
        images.append(a if a.ndim == 3 else a[:, :, None])
    out = {"x": np.stack(images).transpose(0, 3, 1, 2), "y": y}
    if opts.group_column is not None:
        if opts.group_column not in features:
            raise DataError(f"Hugging Face dataset {path}: no group column {opts.group_column!r}; set data.group_column")
        out["groups"] = np.asarray(ds[opts.group_column]).astype(str)
    return out, names


def _pil_array(img: Any, mode: str | None, size: int | None) -> np.ndarray:
    from PIL import Image

    if mode is not None:
        img = img.convert(mode)
    elif img.mode not in ("L", "RGB"):
        img = img.convert("RGB" if img.mode in ("RGBA", "P", "CMYK", "YCbCr", "LA") else "L")
    if size is not None and img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def decode_hf(root: Path, opts: ReadOptions) -> Source:
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
    base = root if root.is_dir() else root.parent

    def build() -> dict[str, np.ndarray]:
        import datasets

        opened = _hf_open(root)
        splits = dict(opened) if isinstance(opened, datasets.DatasetDict) else {"train": opened}
        if "train" not in splits:
            raise DataError(f"Hugging Face dataset {root}: no 'train' split (splits: {', '.join(splits)})")
        train, names = _hf_split(splits["train"], root, opts, None)
        _need_two_classes(names, f"Hugging Face dataset {root}")
        out = {**train, "classes": np.array(names)}
        if "test" in splits:
            test, _ = _hf_split(splits["test"], root, opts, names)
            out.update({f"test_{k}": v for k, v in test.items()})
        return out

    return Source("hf", base, files, build)


# --------------------------------------------------------------------------- entry point


def load_format(kind: str, path: str | os.PathLike[str] | None, seed: int, options: Mapping[str, Any],
                progress: bool = False) -> Dataset:
    """Read ``path`` as a ``folder``, ``table`` or ``leaf`` dataset (see the module doc)."""
    if path is None:
        raise DataError(f"data.dataset = {kind!r} needs data.path (the {'folder' if kind == 'folder' else 'file or folder'} "
                        f"to read)")
    root = Path(path).expanduser()
    if not root.exists():
        raise DataError(f"data.path: {root} not found (data.dataset = {kind!r})")
    opts = ReadOptions.from_mapping(options)
    if kind == "folder":
        source = decode_folder(root, opts, progress)
    elif kind == "table":
        source = decode_table(root, opts)
    elif kind == "leaf":
        source = decode_leaf(root, opts)
    elif kind == "hf":
        source = decode_hf(root, opts)
    else:
        raise DataError(f"unknown data format {kind!r}; choose one of {', '.join(FORMATS)}")
    return to_dataset(root.stem or kind, cached_arrays(source, opts, seed))


__all__ = ["FORMATS", "ReadOptions", "class_names", "load_format"]
