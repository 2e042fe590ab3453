"""numpy's keyed generators stepped as arrays (fedtitan.devices.streams): the same seeds, the
same draws and the same states as numpy's, bit for bit, including the normal draws that
leave the ziggurat's fast path."""

import numpy as np
import pytest

from fedtitan.devices.streams import Streams, seed_states, vectorised


def _state(arrays, j):
    s_hi, s_lo, i_hi, i_lo = arrays
    return (int(s_hi[j]) << 64) | int(s_lo[j]), (int(i_hi[j]) << 64) | int(i_lo[j])


@pytest.mark.parametrize("seed", [0, 1, 12345, 2**32 - 1, 2**32, 2**64 + 77])
def test_seeding_equals_numpys_default_rng(seed):
    ids = np.array([0, 1, 2, 255, 65536, 999_999, 2**32 - 1])
    for after in ((0x5A1C,), (), (7, 0xA7)):
        got = seed_states((seed,), ids, after)
        for j, p in enumerate(ids.tolist()):
            want = np.random.default_rng([seed, p, *after]).bit_generator.state["state"]
            assert _state(got, j) == (want["state"], want["inc"]), (seed, p, after)
    with pytest.raises(ValueError, match="0..2\\*\\*32 - 1"):
        seed_states((1,), np.array([2**32]), ())


def test_uniform_and_normal_draws_equal_numpys_and_so_do_the_states_after():
    """4,000 normals a generator: about 60 leave the fast path (numpy draws those itself)."""
    ids = np.arange(0, 50 * 101, 101)
    streams = Streams(*seed_states((3,), ids, (0x5A1C,)))
    u = np.column_stack([streams.random() for _ in range(200)])
    z = np.column_stack([streams.standard_normal() for _ in range(4000)])
    for j, p in enumerate(ids.tolist()):
        rng = np.random.default_rng([3, p, 0x5A1C])
        assert np.array_equal(u[j], rng.random(200))
        assert np.array_equal(z[j], rng.standard_normal(4000))
        st = rng.bit_generator.state["state"]
        assert _state((streams.s_hi, streams.s_lo, streams.i_hi, streams.i_lo), j) == (st["state"], st["inc"])


def test_the_arrays_are_used_on_this_machine():
    assert vectorised()  # else living fleets walk one client at a time (correct, but slow at 10^6)
