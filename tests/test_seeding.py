"""Keyed generators and the numpy normalisation equal what they replace, draw for draw and bit for bit."""

import numpy as np
import pytest
import torch

from fedtitan.data.dataset import normalise
from fedtitan.seeding import keyed_rng, keyed_seeds


@pytest.mark.parametrize("key", [(0, 3, 5, 0x5EED), (2**32 - 1, 999_999, 0, 1), (7,), (2**40, 1, 2), (0, 0, 0)])
def test_keyed_rng_is_default_rng_of_the_list(key):
    a, b = np.random.default_rng(list(key)), keyed_rng(*key)
    assert (a.permutation(50) == b.permutation(50)).all()
    assert (a.random(7) == b.random(7)).all() and (a.integers(0, 9, 5) == b.integers(0, 9, 5)).all()
    assert (np.random.SeedSequence(list(key)).generate_state(4) == keyed_seeds(*key).generate_state(4)).all()


def test_keyed_rng_refuses_what_seed_sequence_refuses():
    with pytest.raises(ValueError):
        keyed_rng(-1, 2)


def _torch_normalise(x, scale, mean, std):
    """What fedtitan did before: the same operations in torch."""
    t = torch.as_tensor(np.array(x)).to(torch.float32)
    if scale != 1.0:
        t = t * scale
    if len(mean) > 1 and t.ndim >= 2:
        shape = (1, len(mean)) + (1,) * (t.ndim - 2)
        m, s = torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)
        return (t - m.view(shape)) / s.view(shape)
    return (t - mean[0]) / std[0]


def test_normalise_equals_torch_bit_for_bit():
    rng = np.random.default_rng(0)
    cases = [(rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8), 1 / 255, (0.4914, 0.4822, 0.4465),
              (0.247, 0.243, 0.261)),
             (rng.integers(0, 256, (64, 1, 28, 28), dtype=np.uint8), 1 / 255, (0.1307,), (0.3081,)),
             (rng.normal(size=(64, 9, 128)).astype(np.float32), 1.0, tuple(rng.normal(size=9)),
              tuple(rng.uniform(0.5, 2, size=9))),
             (rng.normal(size=(64, 40)), 0.37, (0.123,), (0.77,))]
    for x, scale, mean, std in cases:
        x.setflags(write=False)  # as a memory-mapped cache hands it over
        got = normalise(x, scale, mean, std)
        assert got.dtype == torch.float32 and torch.equal(got, _torch_normalise(x, scale, mean, std))
        got += 1  # a copy of its own
