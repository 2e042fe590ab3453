"""The one dataset type every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from fedtitan.errors import DataError


class TensorSource(Protocol):
    """What streams and trainers read from a dataset: a :class:`Dataset` itself (CPU tensors)
    or :class:`fedtitan.compute.DeviceData` (the same, on an accelerator)."""

    @property
    def num_classes(self) -> int: ...

    @property
    def y_train(self) -> np.ndarray: ...

    @property
    def input_shape(self) -> tuple[int, ...]: ...

    def tensor(self, split: str, idx: np.ndarray | slice | None = None) -> torch.Tensor: ...

    def labels(self, split: str, idx: np.ndarray | slice | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class Dataset:
    """A classification dataset held in memory, in the layout the models take.

    ``x_*`` are channels-first arrays: ``(N, C, H, W)`` images, ``(N, C, L)`` sequences or
    ``(N, D)`` vectors, stored compactly (often ``uint8``). :meth:`tensor` turns a selection
    into a normalised float tensor: ``(x * scale - mean) / std`` with per-channel mean/std.
    ``groups_*`` hold natural client ids (writer, subject, speaker) when the data has them.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    classes: tuple[str, ...] = ()
    groups_train: np.ndarray | None = None
    groups_test: np.ndarray | None = None
    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_arrays(self)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.x_train.shape[1:])

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split == "train":
            return self.x_train, self.y_train
        if split == "test":
            return self.x_test, self.y_test
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")

    def tensor(self, split: str, idx: np.ndarray | slice | None = None) -> torch.Tensor:
        """Normalised float32 tensor of ``x[idx]`` for ``split`` ('train' or 'test')."""
        x, _ = self.split(split)
        sel = x if idx is None else x[idx]
        return normalise(sel, self.scale, self.mean, self.std)

    def labels(self, split: str, idx: np.ndarray | slice | None = None) -> torch.Tensor:
        _, y = self.split(split)
        sel = y if idx is None else y[idx]
        return torch.as_tensor(np.asarray(sel, dtype=np.int64))


def normalise(
    x: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """``(x * scale - mean) / std`` as float32 (per channel when ``mean`` has several entries).

    Done in numpy on a fresh float32 copy, in place: the same float32 operations as torch's
    (each scalar rounded to float32 first), bit for bit, at a quarter of the cost on a
    10-sample batch (a step's data) and no more on large ones."""
    a = x.astype(np.float32)  # a copy, writeable even where x is a read-only memory map
    if scale != 1.0:
        a *= np.float32(scale)
    if len(mean) > 1 and a.ndim >= 2:
        shape = (1, len(mean)) + (1,) * (a.ndim - 2)
        a -= np.asarray(mean, dtype=np.float32).reshape(shape)
        a /= np.asarray(std, dtype=np.float32).reshape(shape)
    else:
        a -= np.float32(mean[0])
        a /= np.float32(std[0])
    return torch.from_numpy(a)


def validate_arrays(ds: Dataset) -> None:
    """Check shapes, label range and finiteness; raise one clear :class:`DataError`."""
    name = ds.name
    for split, x, y in (("train", ds.x_train, ds.y_train), ("test", ds.x_test, ds.y_test)):
        if x.ndim < 2:
            raise DataError(f"{name}: x_{split} must have a sample axis and features, got shape {x.shape}")
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(
                f"{name}: y_{split} must be 1-D with one label per sample ({len(x)}), got shape {y.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{name}: labels must be integers 0..num_classes-1, got dtype {y.dtype}")
        if len(y) and y.min() < 0:
            raise DataError(f"{name}: y_{split} has negative labels (smallest {y.min()}); labels must be integers >= 0 "
                            "(class indices 0..K-1)")
        if len(y) and y.max() >= ds.num_classes:
            raise DataError(
                f"{name}: y_{split} has labels in [{y.min()}, {y.max()}] but num_classes is "
                f"{ds.num_classes}; labels must lie in 0..{ds.num_classes - 1}"
            )
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            bad = int((~np.isfinite(x.reshape(len(x), -1))).any(axis=1).sum())
            raise DataError(f"{name}: x_{split} has {bad} samples with NaN or inf features; clean them first")
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        raise DataError(
            f"{name}: train and test samples differ in shape: {ds.x_train.shape[1:]} vs {ds.x_test.shape[1:]}"
        )
    if len(ds.x_train) == 0:
        raise DataError(f"{name}: the training split is empty")
    if len(ds.x_test) == 0:
        raise DataError(f"{name}: the test split is empty; give test samples (or more samples to hold some out)")
    if ds.num_classes < 2 or len(np.unique(ds.y_train)) < 2:
        raise DataError(f"{name}: the training labels hold {len(np.unique(ds.y_train))} class(es); a classifier needs "
                        "at least two")
    for split, g, y in (("train", ds.groups_train, ds.y_train), ("test", ds.groups_test, ds.y_test)):
        if g is not None and len(g) != len(y):
            raise DataError(f"{name}: groups_{split} has {len(g)} entries for {len(y)} samples")
    if len(ds.mean) != len(ds.std):
        raise DataError(f"{name}: normalisation mean and std differ in length")


def describe(ds: Dataset, top: int = 12) -> str:
    """A few lines on what a dataset holds: samples per split, sample shape, classes with their
    training counts, groups (the natural clients)."""
    counts = np.bincount(ds.y_train, minlength=ds.num_classes)
    names = list(ds.classes) or [str(c) for c in range(ds.num_classes)]
    shown = ", ".join(f"{names[c]} {counts[c]}" for c in range(min(top, ds.num_classes)))
    more = f", ... ({ds.num_classes - top} more)" if ds.num_classes > top else ""
    lines = [f"{ds.name}: {len(ds.y_train)} training and {len(ds.y_test)} test samples of shape {ds.input_shape} "
             f"({ds.x_train.dtype})",
             f"{ds.num_classes} classes (training samples): {shown}{more}"]
    if ds.groups_train is not None:
        g, n = np.unique(ds.groups_train, return_counts=True)
        test = len(np.unique(ds.groups_test)) if ds.groups_test is not None else 0
        lines.append(f"{len(g)} training groups ({test} test groups), {n.min()}-{n.max()} samples each")
    return "\n".join(lines)
