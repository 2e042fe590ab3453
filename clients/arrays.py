"""Model weights in Flower's ArrayRecord, both ways, without Flower's per-call header work.

Flower's Array holds each array as the bytes ``np.save`` writes; these helpers make and read
exactly those bytes (:func:`fedtitan.wire.npy_bytes`, :func:`fedtitan.wire.npy_array`) with the
header formatted and checked once per dtype and shape, falling back to Flower's own
``numpy()`` for anything they do not recognise.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedtitan.wire import npy_array, npy_bytes


def decode_array(a: Array) -> np.ndarray:
    """A Flower Array as NumPy: :func:`fedtitan.wire.npy_array` (the header read once per
    dtype and shape), or Flower's own ``numpy()`` for anything else."""
    if a.stype == "numpy.ndarray":
        got = npy_array(a.data, a.dtype, a.shape)
        if got is not None:
            return got
    return a.numpy()


def decode_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: decode_array(v) for k, v in record.items()}


def encode_arrays(state: dict[str, Any]) -> ArrayRecord:
    """Tensors or arrays as an ArrayRecord, byte for byte what ``ArrayRecord(state)`` makes."""
    out = ArrayRecord()  # filled item by item: ArrayRecord(dict) checks the dict, then copies it into a second record
    for k, v in state.items():
        a = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        out[k] = Array(dtype=str(a.dtype), shape=tuple(a.shape), stype="numpy.ndarray", data=npy_bytes(a))
    return out


__all__ = ["decode_array", "decode_arrays", "encode_arrays"]
