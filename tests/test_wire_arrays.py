"""Weights on the wire: fedtitan's npy codec writes exactly Flower's bytes and reads them back."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord

from clients.arrays import decode_array, decode_arrays, encode_arrays
from fedtitan.wire import npy_array, npy_bytes


@pytest.mark.parametrize("a", [np.arange(12, dtype=np.float32).reshape(3, 4), np.arange(5, dtype=np.int64),
                               np.ones((), np.float32), np.zeros((0, 3), np.float64),
                               np.arange(12.0).reshape(4, 3).T, np.arange(6, dtype=np.uint8)],
                         ids=["2d", "int64", "0d", "empty", "transposed", "uint8"])
def test_npy_bytes_are_what_np_save_writes(a):
    buf = io.BytesIO()
    np.save(buf, a if a.flags.c_contiguous else np.ascontiguousarray(a), allow_pickle=False)
    assert npy_bytes(a) == buf.getvalue()
    back = npy_array(buf.getvalue(), str(a.dtype), a.shape)
    assert back is not None and back.dtype == a.dtype and np.array_equal(back, a) and back.flags.writeable


def test_what_the_fast_path_does_not_know_goes_to_np_load():
    f = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    buf = io.BytesIO()
    np.save(buf, f)
    assert npy_array(buf.getvalue(), "float64", (3, 4)) is None  # Fortran order
    assert npy_array(buf.getvalue(), "float32", (3, 4)) is None  # another dtype than the header's
    rec = ArrayRecord({"w": torch.from_numpy(np.ascontiguousarray(f))})
    assert np.array_equal(decode_array(rec["w"]), f)


def test_a_state_dict_round_trips_byte_for_byte_as_flowers_own():
    sd = {"a.weight": torch.randn(4, 3), "a.bias": torch.randn(4), "bn.num_batches_tracked": torch.tensor(7)}
    ours, theirs = encode_arrays(sd), ArrayRecord(sd)
    assert list(ours) == list(theirs)
    for k in sd:
        assert ours[k].data == theirs[k].data and ours[k].dtype == theirs[k].dtype
        assert tuple(ours[k].shape) == tuple(theirs[k].shape)
    back = decode_arrays(theirs)
    assert all(np.array_equal(back[k], sd[k].numpy()) for k in sd)
