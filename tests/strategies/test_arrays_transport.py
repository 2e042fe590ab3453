"""Which way the model weights travel (simulation.arrays), decided without Ray."""

import numpy as np
import pytest

from strategies.messages import OBJECT_STORE_FROM_BYTES, wants_object_store


class InMemoryGrid:  # named as Flower's simulation grid
    pass


class GrpcGrid:  # real SuperNodes
    pass


SMALL = {"w": np.zeros(1000, dtype=np.float32)}
BIG = {"w": np.zeros(OBJECT_STORE_FROM_BYTES // 4, dtype=np.float32), "n": np.array(3)}


@pytest.mark.parametrize(("mode", "weights", "grid", "want"), [
    ("auto", BIG, InMemoryGrid(), True),
    ("auto", SMALL, InMemoryGrid(), False),  # the store's fixed cost matches what it saves
    ("object-store", SMALL, InMemoryGrid(), True),
    ("messages", BIG, InMemoryGrid(), False),
    ("object-store", BIG, GrpcGrid(), False),  # boards always get the weights in the messages
    ("auto", BIG, GrpcGrid(), False),
])
def test_the_object_store_only_in_a_simulation_and_by_size(mode, weights, grid, want):
    assert wants_object_store(mode, weights, grid) is want


def test_an_unknown_mode_is_one_line():
    from fedtitan.config import load_config
    from fedtitan.errors import ConfigError

    with pytest.raises(ConfigError, match="simulation.arrays"):
        load_config("quickstart", ["simulation.arrays=plasma"])
