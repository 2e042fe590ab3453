"""Generators keyed on a few integers (seed, client, round, a tag), made cheaply.

``np.random.default_rng([seed, client, epoch, tag])`` coerces each entry of the list to
32-bit words in Python, under an ``np.errstate`` each: about 20 us of a 35 us call, paid for
every pass of every client's stream and every client round. An array of ``uint32`` is the
same entropy (each key below 2**32 is one word), taken without that loop: the generator is
identical, draw for draw (tests/test_seeding.py).
"""

from __future__ import annotations

import numpy as np

_WORD = 2**32


def keyed_seeds(*key: int) -> np.random.SeedSequence:
    """``np.random.SeedSequence(list(key))``."""
    if all(0 <= k < _WORD for k in key):
        return np.random.SeedSequence(np.array(key, dtype=np.uint32))
    return np.random.SeedSequence([int(k) for k in key])


def keyed_rng(*key: int) -> np.random.Generator:
    """``np.random.default_rng(list(key))``, the same generator."""
    return np.random.Generator(np.random.PCG64(keyed_seeds(*key)))
