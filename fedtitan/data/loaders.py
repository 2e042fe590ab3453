"""Dataset loaders: official formats, the offline packs, user npz files, and a cache.

Every loader returns a :class:`~fedtitan.data.dataset.Dataset`. ``load_dataset(name)`` is
the one entry point; a missing dataset raises one :class:`DataError` line saying where it
looked and how to get the data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import struct
import tarfile
import zipfile
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedtitan.data.dataset import Dataset
from fedtitan.data.formats import FORMATS, load_format
from fedtitan.data.splits import holdout_groups, stratified_holdout
from fedtitan.errors import DataError, FedtitanError, did_you_mean
from fedtitan.fileio import atomic_writer
from fedtitan.paths import cache_dir, data_dirs

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
HAR_CHANNELS = (
    "total_acc_x", "total_acc_y", "total_acc_z",
    "body_acc_x", "body_acc_y", "body_acc_z",
    "gyro_x", "gyro_y", "gyro_z",
)  # fmt: skip
_HAR_OFFICIAL = {
    "total_acc": "total_acc", "body_acc": "body_acc", "gyro": "body_gyro",
}  # fmt: skip
HAR_ACTIVITIES = ("walking", "upstairs", "downstairs", "sitting", "standing", "laying")


# --------------------------------------------------------------------------- helpers


def _find(name: str, candidates: list[str], data_dir: str | os.PathLike[str] | None) -> Path | None:
    """First existing ``<dir>/<candidate>`` over the search folders."""
    for d in data_dirs(data_dir):
        for c in candidates:
            p = d / c
            if p.exists():
                return p
    return None


def _missing(name: str, candidates: list[str], data_dir: str | os.PathLike[str] | None, how: str) -> DataError:
    how = f"get it with `fedtitan data download {name}` (--to DIR), or {how}"
    looked = ", ".join(str(d / candidates[0]) for d in data_dirs(data_dir))
    return DataError(f"dataset '{name}' not found (looked for {looked}); {how}")


# an npz array at least this large is memory-mapped where it can be (see _load_npz)
MAP_MIN_BYTES = 16 * 2**20


def _load_npz(path: Path, mapped: Collection[str] = ()) -> dict[str, np.ndarray]:
    """The arrays of an npz file. Those named in ``mapped`` of at least :data:`MAP_MIN_BYTES`
    are memory-mapped, read-only, from the file itself where it stores them uncompressed
    (``np.savez``): the processes of one machine then share one copy in the page cache."""
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for k in z.files:
                m = _mapped_member(path, z.zip, f"{k}.npy") if k in mapped else None
                out[k] = m if m is not None else z[k]
            return out
    except Exception as exc:  # zipfile/OSError/ValueError: all mean an unreadable file
        raise DataError(f"cannot read {path}: {type(exc).__name__}: {exc}; the file may be corrupt") from None


def _mapped_member(path: Path, zf: zipfile.ZipFile, name: str) -> np.ndarray | None:
    """The ``.npy`` member ``name`` of the npz at ``path``, memory-mapped read-only where it is
    stored uncompressed with a plain header and holds :data:`MAP_MIN_BYTES` or more; else
    ``None`` (the caller reads it)."""
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1 or info.file_size < MAP_MIN_BYTES:
        return None
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        local = fh.read(30)  # the member's local header: its name and extra field come next
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        fh.seek(start)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            return None
        offset = fh.tell()
    size = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if dtype.hasobject or size == 0 or offset + size > start + info.file_size:
        return None
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran else "C", offset=offset)


def _cached(key: str, source: Path, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Decode once, keep the arrays as an uncompressed npz in the cache dir.

    The cache key includes the source's path, size and mtime, so a changed source is
    decoded again. Writes are atomic (temp file + rename).
    """
    st = source.stat()
    tag = hashlib.sha1(f"{source.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    path = cache_dir() / f"{key}-{tag}.npz"
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception:
            path.unlink(missing_ok=True)
    arrays = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path) as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]
    except (OSError, FedtitanError):
        pass  # a read-only or full cache only costs speed
    return arrays


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray, mode: str) -> np.ndarray:
    from PIL import Image

    out = []
    for i in range(len(offsets) - 1):
        img = Image.open(io.BytesIO(blob[offsets[i] : offsets[i + 1]].tobytes())).convert(mode)
        out.append(np.asarray(img, dtype=np.uint8))
    return np.stack(out)


# --------------------------------------------------------------------------- cifar10


def load_cifar10(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """CIFAR-10 from the official python tarball/folder, or the offline JPEG pack."""
    official = _find("cifar10", ["cifar-10-batches-py", "cifar10/cifar-10-batches-py",
                                 "cifar-10-python.tar.gz", "cifar10/cifar-10-python.tar.gz"], data_dir)
    pack = _find("cifar10", ["cifar10/cifar10-jpeg.npz", "cifar10-jpeg.npz"], data_dir)
    if official is not None:
        arrays = _cached("cifar10-official", official, lambda: _read_cifar_official(official))
    elif pack is not None:
        def build() -> dict[str, np.ndarray]:
            raw = _load_npz(pack)
            return {
                "x_train": _decode_jpegs(raw["train_jpeg"], raw["train_offsets"], "RGB"),
                "y_train": raw["train_labels"],
                "x_test": _decode_jpegs(raw["test_jpeg"], raw["test_offsets"], "RGB"),
                "y_test": raw["test_labels"],
            }
        arrays = _cached("cifar10-jpeg", pack, build)
    else:
        raise _missing("cifar10", ["cifar-10-batches-py"], data_dir,
                       f"put the official python version (cifar-10-python.tar.gz from {CIFAR10_URL}) "
                       "or cifar10/cifar10-jpeg.npz there")
    return Dataset(
        name="cifar10",
        x_train=arrays["x_train"].transpose(0, 3, 1, 2),
        y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"].transpose(0, 3, 1, 2),
        y_test=arrays["y_test"].astype(np.int64),
        num_classes=10,
        classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
        scale=1 / 255,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )


def _read_cifar_official(path: Path) -> dict[str, np.ndarray]:
    def batches() -> dict[str, bytes]:
        if path.is_dir():
            return {p.name: p.read_bytes() for p in path.iterdir() if "_batch" in p.name}
        with tarfile.open(path) as tar:
            out = {}
            for m in tar.getmembers():
                base = Path(m.name).name
                if "_batch" in base and m.isfile():
                    fh = tar.extractfile(m)
                    assert fh is not None
                    out[base] = fh.read()
            return out

    files = batches()
    names = [f"data_batch_{i}" for i in range(1, 6)]
    if any(n not in files for n in [*names, "test_batch"]):
        raise DataError(f"{path} is not a complete CIFAR-10 python release (need data_batch_1..5, test_batch)")

    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        # The official release is pickled numpy data; it is loaded only from the user's
        # own file, never from an untrusted location.
        d = pickle.loads(files[name], encoding="bytes")  # noqa: S301
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(d[b"labels"], dtype=np.int64)

    xs, ys = zip(*(read(n) for n in names), strict=True)
    xt, yt = read("test_batch")
    return {"x_train": np.concatenate(xs), "y_train": np.concatenate(ys), "x_test": xt, "y_test": yt}


# --------------------------------------------------------------------------- femnist


def load_femnist(data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """FEMNIST: LEAF's JSON layout (``femnist/data/{train,test}/*.json``) or the offline pack.

    Pixels are stored as uint8 with 0 = background (LEAF's floats, 1.0 = white background,
    are converted as ``round((1 - v) * 255)``). Writers are the natural groups.
    """
    leaf = _find("femnist", ["femnist/data/train", "leaf/femnist/data/train", "femnist/train"], data_dir)
    pack = _find("femnist", ["femnist/femnist.npz", "femnist.npz"], data_dir)
    if leaf is not None:
        test_dir = leaf.parent / "test"
        arrays = {**_read_leaf(leaf, "train"), **_read_leaf(test_dir, "test")}
    elif pack is not None:
        arrays = _load_npz(pack)
    else:
        raise _missing("femnist", ["femnist/femnist.npz"], data_dir,
                       "run LEAF's femnist preprocess.sh and put data/train and data/test under femnist/data, "
                       "or place femnist/femnist.npz")
    return Dataset(
        name="femnist",
        x_train=arrays["train_x"][:, None],
        y_train=arrays["train_y"].astype(np.int64),
        x_test=arrays["test_x"][:, None],
        y_test=arrays["test_y"].astype(np.int64),
        num_classes=62,
        groups_train=arrays["train_writer"].astype(str),
        groups_test=arrays["test_writer"].astype(str),
        scale=1 / 255,
        mean=(0.0367,),
        std=(0.1506,),
    )


def _read_leaf(folder: Path, split: str) -> dict[str, np.ndarray]:
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"no LEAF json files in {folder}")
    xs, ys, ws = [], [], []
    for f in files:
        try:
            doc = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot parse LEAF file {f}: {exc}") from None
        for user in doc["users"]:
            ud = doc["user_data"][user]
            x = np.asarray(ud["x"], dtype=np.float32).reshape(-1, 28, 28)
            xs.append(np.rint((1.0 - x) * 255).clip(0, 255).astype(np.uint8))
            ys.append(np.asarray(ud["y"], dtype=np.int64))
            ws.append(np.full(len(x), user))
    return {f"{split}_x": np.concatenate(xs), f"{split}_y": np.concatenate(ys),
            f"{split}_writer": np.concatenate(ws)}


# --------------------------------------------------------------------------- uci-har


def load_uci_har(
    data_dir: str | os.PathLike[str] | None = None, test_fraction: float = 0.25, seed: int = 0
) -> Dataset:
    """UCI HAR raw inertial windows, (N, 9, 128) channels-first; subjects are groups.

    Reads the official ``UCI HAR Dataset`` folder (train + test) or the offline pack (train
    subjects only). Without a test split, ``test_fraction`` of the subjects are held out.
    """
    official = _find("uci-har", ["UCI HAR Dataset", "uci-har/UCI HAR Dataset"], data_dir)
    pack = _find("uci-har", ["uci-har/uci-har-raw.npz", "uci-har-raw.npz"], data_dir)
    if official is not None:
        tr, te = _read_har_official(official, "train"), _read_har_official(official, "test")
        x_tr, y_tr, g_tr = tr
        x_te, y_te, g_te = te
    elif pack is not None:
        raw = _load_npz(pack)
        order = [list(raw["channels"]).index(c) for c in HAR_CHANNELS]
        x = raw["x"][:, :, order]
        held = holdout_groups(raw["subject"], test_fraction, seed)
        x_tr, y_tr, g_tr = x[~held], raw["y"][~held], raw["subject"][~held]
        x_te, y_te, g_te = x[held], raw["y"][held], raw["subject"][held]
    else:
        raise _missing("uci-har", ["UCI HAR Dataset"], data_dir,
                       "unzip the official 'UCI HAR Dataset' folder there, or place uci-har/uci-har-raw.npz")
    x_tr = np.ascontiguousarray(x_tr.transpose(0, 2, 1), dtype=np.float32)
    x_te = np.ascontiguousarray(x_te.transpose(0, 2, 1), dtype=np.float32)
    mean = tuple(float(v) for v in x_tr.mean(axis=(0, 2)))
    std = tuple(float(v) + 1e-6 for v in x_tr.std(axis=(0, 2)))
    return Dataset(
        name="uci-har", x_train=x_tr, y_train=y_tr.astype(np.int64), x_test=x_te,
        y_test=y_te.astype(np.int64), num_classes=6, classes=HAR_ACTIVITIES,
        groups_train=g_tr.astype(np.int64), groups_test=g_te.astype(np.int64), mean=mean, std=std,
    )


def _read_har_official(root: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    sig = root / split / "Inertial Signals"
    chans = []
    for c in HAR_CHANNELS:
        kind, axis = c.rsplit("_", 1)
        f = sig / f"{_HAR_OFFICIAL[kind]}_{axis}_{split}.txt"
        if not f.exists():
            raise DataError(f"UCI HAR file missing: {f}")
        chans.append(np.loadtxt(f, dtype=np.float32))
    x = np.stack(chans, axis=-1)  # (N, 128, 9)
    y = np.loadtxt(root / split / f"y_{split}.txt", dtype=np.int64) - 1
    s = np.loadtxt(root / split / f"subject_{split}.txt", dtype=np.int64)
    return x, y, s


# --------------------------------------------------------------------------- speech commands


def load_speech_commands(
    data_dir: str | os.PathLike[str] | None = None, test_fraction: float = 0.2, seed: int = 0
) -> Dataset:
    """Speech Commands v2 as 98x40 log-mel images (offline pack); speakers are groups.

    Speakers are held out whole for the test split (``test_fraction`` of them).
    """
    pack = _find("speech-commands", ["speech-commands/speech-commands-spectrogram-jpeg.npz",
                                     "speech-commands-spectrogram-jpeg.npz"], data_dir)
    converted = _find("speech-commands", ["speech-commands/speech-commands-spectrogram.npz"], data_dir)
    if pack is None and converted is None:
        raise _missing("speech-commands", ["speech-commands/speech-commands-spectrogram.npz"], data_dir,
                       "place the spectrogram pack there (see docs/datasets.md)")
    if converted is not None:  # what `fedtitan data download` writes: uint8 log-mel images
        raw = _load_npz(converted)
        arrays = {"x": raw["x"], "y": raw["labels"], "speaker": raw["speaker"], "classes": raw["classes"]}
    else:
        assert pack is not None

        def build() -> dict[str, np.ndarray]:
            raw = _load_npz(pack)
            return {"x": _decode_jpegs(raw["jpeg"], raw["offsets"], "L"), "y": raw["labels"],
                    "speaker": raw["speaker"], "classes": raw["classes"]}

        arrays = _cached("speech-commands", pack, build)
    held = holdout_groups(arrays["speaker"], test_fraction, seed)
    x = arrays["x"][:, None]
    return Dataset(
        name="speech-commands", x_train=x[~held], y_train=arrays["y"][~held].astype(np.int64),
        x_test=x[held], y_test=arrays["y"][held].astype(np.int64), num_classes=len(arrays["classes"]),
        classes=tuple(str(c) for c in arrays["classes"]),
        groups_train=arrays["speaker"][~held].astype(str), groups_test=arrays["speaker"][held].astype(str),
        scale=1 / 255, mean=(0.5,), std=(0.25,),
    )


# --------------------------------------------------------------------------- mnist


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DataError(f"{path} is not an idx file")
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {arr.size}")
    return arr.reshape(dims)


def load_mnist(data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> Dataset:
    """MNIST from the official idx files, or the offline test-only pack (seeded 80/20 split)."""
    def idx(stem: str) -> Path | None:
        return _find("mnist", [f"mnist/{stem}", f"mnist/{stem}.gz", stem, f"{stem}.gz"], data_dir)

    files = {k: idx(k) for k in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
    pack = _find("mnist", ["mnist/mnist-test.npz", "mnist-test.npz"], data_dir)
    if all(files.values()):
        p = {k: v for k, v in files.items() if v is not None}
        x_tr, y_tr = _read_idx(p["train-images-idx3-ubyte"]), _read_idx(p["train-labels-idx1-ubyte"])
        x_te, y_te = _read_idx(p["t10k-images-idx3-ubyte"]), _read_idx(p["t10k-labels-idx1-ubyte"])
    elif pack is not None:
        raw = _load_npz(pack)
        tr, te = stratified_holdout(raw["y"], 0.2, seed)
        x_tr, y_tr, x_te, y_te = raw["x"][tr], raw["y"][tr], raw["x"][te], raw["y"][te]
    else:
        raise _missing("mnist", ["mnist/train-images-idx3-ubyte.gz"], data_dir,
                       "put the four official idx files (optionally .gz) under mnist/")
    return Dataset(
        name="mnist", x_train=x_tr[:, None], y_train=y_tr.astype(np.int64), x_test=x_te[:, None],
        y_test=y_te.astype(np.int64), num_classes=10, scale=1 / 255, mean=(0.1307,), std=(0.3081,),
    )


# --------------------------------------------------------------------------- digits (embedded)


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits (1,797 images): needs no download, no data_dir."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images * (255.0 / 16.0)).round().astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    tr, te = stratified_holdout(y, 0.2, seed)
    return Dataset(
        name="digits", x_train=x[tr], y_train=y[tr], x_test=x[te], y_test=y[te], num_classes=10,
        scale=1 / 255, mean=(0.3,), std=(0.38,),
    )


# --------------------------------------------------------------------------- user npz


def _labels(y: np.ndarray, p: Path, key: str) -> np.ndarray:
    """Integer class labels (floats holding whole numbers are accepted)."""
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64, copy=False)
    if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(np.mod(y, 1) == 0):
        return y.astype(np.int64)
    raise DataError(f"{p}: '{key}' must hold integer class labels >= 0, got dtype {y.dtype}"
                    + (" with fractional or non-finite values" if np.issubdtype(y.dtype, np.floating) else ""))


def load_npz(path: str | os.PathLike[str], seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """A user's own data: ``x``, ``y``, optional ``groups``, optional ``x_test``/``y_test``.

    ``x`` is channels-first ``(N, C, H, W)``, ``(N, C, L)`` or ``(N, D)``; labels are
    integers ``0..K-1``, or text (classes sorted: as numbers when all are numbers, else as text). Without a test split, a seeded stratified hold-out of
    ``test_fraction`` is used. Optional: ``num_classes``, ``mean``, ``std``, ``scale``.

    ``x`` and ``x_test`` of 16 MiB or more, stored uncompressed (``np.savez``, not
    ``np.savez_compressed``), are memory-mapped read-only from the file, so the processes of a
    run share one copy: do not rewrite such a file in place while a run reads it (write a new
    file and rename it over the old one).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"npz dataset file not found: {p}")
    raw = _load_npz(p, mapped=("x", "x_test"))
    for key in ("x", "y"):
        if key not in raw:
            raise DataError(f"{p} has no '{key}' array (found {sorted(raw)}); an npz dataset needs 'x' and 'y'")
    names: list[str] = []
    if "y" in raw and raw["y"].dtype.kind in "US":  # text labels: classes sorted as the formats sort them
        from fedtitan.data.formats import class_names

        seen = [raw["y"], raw["y_test"]] if "y_test" in raw else [raw["y"]]
        names = class_names(np.concatenate([np.asarray(v).astype(str) for v in seen]))
        index = {n: i for i, n in enumerate(names)}
        for key in ("y", "y_test"):
            if key in raw:
                raw[key] = np.array([index[str(v)] for v in raw[key]], dtype=np.int64)
    x, y = raw["x"], _labels(raw["y"], p, "y")
    if x.ndim == 0 or len(x) == 0 or len(y) == 0:
        raise DataError(f"{p}: 'x' and 'y' hold no samples (shapes {x.shape} and {y.shape})")
    if len(y) != len(x):
        raise DataError(f"{p}: 'x' has {len(x)} samples but 'y' has {len(y)}")
    groups = raw.get("groups")
    if ("x_test" in raw) != ("y_test" in raw):
        raise DataError(f"{p} has {'x_test' if 'x_test' in raw else 'y_test'} but not "
                        f"{'y_test' if 'x_test' in raw else 'x_test'}; give both, or neither (a test split is then held out)")
    if "x_test" in raw:
        x_tr, y_tr, x_te, y_te = x, y, raw["x_test"], _labels(raw["y_test"], p, "y_test")
        g_tr, g_te = groups, raw.get("groups_test")
    else:
        tr, te = stratified_holdout(y, test_fraction, seed)
        if len(te) == 0 or len(tr) == 0:
            raise DataError(f"{p}: holding out {test_fraction:.0%} of {len(y)} samples for testing left an empty "
                            "split (too few samples per class); add x_test/y_test to the file, or more samples")
        x_tr, y_tr, x_te, y_te = x[tr], y[tr], x[te], y[te]
        g_tr = groups[tr] if groups is not None else None
        g_te = groups[te] if groups is not None else None
    top = int(max(y_tr.max(), y_te.max()))
    if "num_classes" not in raw and top >= 1000 and top >= 10 * (distinct := len(np.unique(np.concatenate([y_tr, y_te])))):
        raise DataError(f"{p}: labels reach {top} but only {distinct} distinct values occur; labels must be class "
                        "indices 0..K-1 (remap them: np.unique(y, return_inverse=True)[1])")
    num_classes = int(raw["num_classes"]) if "num_classes" in raw else len(names) or top + 1
    mean = tuple(np.atleast_1d(raw["mean"]).tolist()) if "mean" in raw else (0.0,)
    std = tuple(np.atleast_1d(raw["std"]).tolist()) if "std" in raw else (1.0,)
    scale = float(raw["scale"]) if "scale" in raw else (1 / 255 if x.dtype == np.uint8 else 1.0)
    return Dataset(
        name=p.stem, x_train=x_tr, y_train=y_tr.astype(np.int64, copy=False), x_test=x_te, y_test=y_te,
        num_classes=num_classes, classes=tuple(names), groups_train=g_tr, groups_test=g_te, scale=scale, mean=mean, std=std,
    )


# --------------------------------------------------------------------------- registry

LOADERS: dict[str, Callable[..., Dataset]] = {
    "cifar10": load_cifar10,
    "femnist": load_femnist,
    "uci-har": load_uci_har,
    "speech-commands": load_speech_commands,
    "mnist": load_mnist,
    "digits": lambda data_dir=None, **kw: load_digits(**kw),
}


def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, path: str | os.PathLike[str] | None = None,
    seed: int = 0, read_options: Mapping[str, Any] | None = None, progress: bool = False,
) -> Dataset:
    """Load a dataset by short name (``cifar10``, ``femnist``, ``uci-har``, ``speech-commands``,
    ``mnist``, ``digits``), ``npz`` with ``path`` to the user's file, or a ``folder``,
    ``table`` or ``leaf`` at ``path`` read with ``read_options`` (:mod:`fedtitan.data.formats`)."""
    if name in FORMATS:
        return load_format(name, path, seed, read_options or {}, progress=progress)
    if name == "npz":
        if path is None:
            raise DataError("dataset 'npz' needs data.path pointing at an .npz file with 'x' and 'y'")
        return load_npz(path, seed=seed)
    if name not in LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join([*LOADERS, 'npz', *FORMATS])}"
                        f"{did_you_mean(name, [*LOADERS, 'npz', *FORMATS])}")
    if name in ("uci-har", "speech-commands", "mnist"):
        return LOADERS[name](data_dir, seed=seed)
    if name == "digits":
        return load_digits(seed=seed)
    return LOADERS[name](data_dir)
