"""Many of numpy's keyed random streams stepped at once, equal to them bit for bit.

A living fleet gives each client its own generator, ``np.random.default_rng([seed, client,
tag])``, so a client's path never depends on which others were asked with it. Asking numpy
for 1,000,000 such generators costs about 30 microseconds each to seed and a Python call per
draw. :class:`Streams` holds the same generators as arrays (each PCG64's 128-bit state and
increment as two uint64 halves) and draws from all of them with a few dozen numpy operations
per draw: the seeding (numpy's ``SeedSequence``), PCG64's step and output, ``random()`` and
the fast path of ``standard_normal()`` (numpy's 256-layer ziggurat, about 99% of the draws).
A normal draw off the fast path is handed to numpy itself, one generator at a time, from
that generator's state, so every value and every state equals numpy's.

The ziggurat's layer tables are read from numpy at first use (a draw made to take a given
64-bit value tells the layer's width and, by bisection, its fast-path bound), and a short
self-check against numpy decides whether the arrays are used at all: where it fails (a numpy
that draws differently), :func:`vectorised` is false and callers draw one generator at a time.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

log = logging.getLogger("fedtitan")

MASK32 = 0xFFFFFFFF
MASK64 = (1 << 64) - 1
# numpy's SeedSequence (pool of 4 words) and PCG64 (the 128-bit LCG's multiplier)
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R = 0xCA01F9DD, 0x4973F715
_POOL = 4
PCG_MULT = 0x2360ED051FC65DA44385DF649FCCF645
_M_HI, _M_LO = PCG_MULT >> 64, PCG_MULT & MASK64
_M_LO_HALVES = (_M_LO & MASK32, _M_LO >> 32)
_U64 = np.uint64


def _words(n: int) -> list[int]:
    """SeedSequence's 32-bit words of one non-negative integer (0 is one word)."""
    if n < 0:
        raise ValueError("stream keys must be non-negative integers")
    out = [n & MASK32] if n == 0 else []
    while n > 0:
        out.append(n & MASK32)
        n >>= 32
    return out


def seed_states(key_before: tuple[int, ...], ids: np.ndarray, key_after: tuple[int, ...]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PCG64 (state high, state low, increment high, increment low) of
    ``np.random.default_rng([*key_before, id, *key_after])`` for every ``id`` in ``ids``
    (integers in 0..2**32 - 1), as uint64 arrays."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) > MASK32):
        raise ValueError("stream ids must lie in 0..2**32 - 1")
    n = len(ids)
    entropy = ([np.full(n, w, dtype=np.uint32) for k in key_before for w in _words(int(k))]
               + [ids.astype(np.uint32)]
               + [np.full(n, w, dtype=np.uint32) for k in key_after for w in _words(int(k))])
    const = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal const
        value = value ^ np.uint32(const)
        const = (const * _MULT_A) & MASK32
        value = value * np.uint32(const)
        return value ^ (value >> np.uint32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        r: np.ndarray = np.subtract(x * np.uint32(_MIX_L), y * np.uint32(_MIX_R), dtype=np.uint32)
        return r ^ (r >> np.uint32(16))

    zero = np.zeros(n, dtype=np.uint32)
    pool = [hashmix(entropy[i] if i < len(entropy) else zero) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(entropy)):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(entropy[src]))
    const = _INIT_B
    out = []
    for i in range(8):  # generate_state(4, uint64): eight 32-bit words, read little-endian in pairs
        v = pool[i % _POOL] ^ np.uint32(const)
        const = (const * _MULT_B) & MASK32
        v = v * np.uint32(const)
        out.append((v ^ (v >> np.uint32(16))).astype(_U64))
    words = [out[2 * j] | (out[2 * j + 1] << _U64(32)) for j in range(4)]
    # PCG64's seeding: inc = (seq << 1) | 1; state = 0; step; state += initial state; step
    inc_hi = (words[2] << _U64(1)) | (words[3] >> _U64(63))
    inc_lo = (words[3] << _U64(1)) | _U64(1)
    s_hi, s_lo = inc_hi.copy(), inc_lo.copy()  # one step from state 0
    s_lo = s_lo + words[1]
    s_hi = s_hi + words[0] + (s_lo < words[1]).astype(_U64)
    s_hi, s_lo = _step(s_hi, s_lo, inc_hi, inc_lo)
    return s_hi, s_lo, inc_hi, inc_lo


def _mulhi(a: np.ndarray, b_halves: tuple[int, int]) -> np.ndarray:
    """The high 64 bits of ``a * b`` (uint64 arrays, ``b`` a constant given as 32-bit halves)."""
    b0, b1 = _U64(b_halves[0]), _U64(b_halves[1])
    a0, a1 = a & _U64(MASK32), a >> _U64(32)
    p0, p1, p2, p3 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p0 >> _U64(32)) + (p1 & _U64(MASK32)) + (p2 & _U64(MASK32))
    return p3 + (p1 >> _U64(32)) + (p2 >> _U64(32)) + (mid >> _U64(32))


def _step(s_hi: np.ndarray, s_lo: np.ndarray, i_hi: np.ndarray, i_lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One step of PCG64's LCG: ``state * multiplier + inc`` modulo 2**128."""
    hi = _mulhi(s_lo, _M_LO_HALVES) + s_lo * _U64(_M_HI) + s_hi * _U64(_M_LO)
    lo = s_lo * _U64(_M_LO) + i_lo
    hi += i_hi + (lo < i_lo).astype(_U64)
    return hi, lo


def _output(s_hi: np.ndarray, s_lo: np.ndarray) -> np.ndarray:
    """PCG64's output of a state (XSL-RR): ``rotr64(hi ^ lo, hi >> 58)``."""
    x = s_hi ^ s_lo
    r = s_hi >> _U64(58)
    return (x >> r) | (x << ((_U64(64) - r) & _U64(63)))


def _numpy_state(s_hi: int, s_lo: int, i_hi: int, i_lo: int) -> dict[str, Any]:
    return {"bit_generator": "PCG64", "state": {"state": (s_hi << 64) | s_lo, "inc": (i_hi << 64) | i_lo},
            "has_uint32": 0, "uinteger": 0}


class Streams:
    """PCG64 generators as arrays: draw from all at once (:meth:`random`, :meth:`standard_normal`)."""

    def __init__(self, s_hi: np.ndarray, s_lo: np.ndarray, i_hi: np.ndarray, i_lo: np.ndarray) -> None:
        self.s_hi, self.s_lo, self.i_hi, self.i_lo = s_hi, s_lo, i_hi, i_lo
        self._bits: Any = np.random.PCG64()
        self._rng = np.random.Generator(self._bits)

    def _next(self) -> np.ndarray:
        self.s_hi, self.s_lo = _step(self.s_hi, self.s_lo, self.i_hi, self.i_lo)
        return _output(self.s_hi, self.s_lo)

    def random(self) -> np.ndarray:
        """Each generator's ``random()``: ``(next_uint64 >> 11) * 2**-53``."""
        return (self._next() >> _U64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)

    def standard_normal(self) -> np.ndarray:
        """Each generator's ``standard_normal()`` (one value)."""
        wi, ki = _ziggurat()
        before = self.s_hi, self.s_lo
        r = self._next()
        idx = (r & _U64(0xFF)).astype(np.intp)
        r = r >> _U64(8)
        rabs = (r >> _U64(1)) & _U64(0x000FFFFFFFFFFFFF)
        x = rabs.astype(np.float64) * wi[idx]
        x = np.where((r & _U64(1)).astype(bool), -x, x)
        slow = np.flatnonzero(rabs >= ki[idx])  # off the fast path (about 1.5%): numpy's own draw
        if len(slow):
            bits, normal = self._bits, self._rng.standard_normal
            got, hi, lo = np.empty(len(slow)), np.empty(len(slow), dtype=_U64), np.empty(len(slow), dtype=_U64)
            keys = zip(before[0][slow].tolist(), before[1][slow].tolist(), self.i_hi[slow].tolist(),
                       self.i_lo[slow].tolist(), strict=True)
            for k, (s_hi, s_lo, i_hi, i_lo) in enumerate(keys):
                bits.state = _numpy_state(s_hi, s_lo, i_hi, i_lo)
                got[k] = normal()
                state = bits.state["state"]["state"]
                hi[k], lo[k] = state >> 64, state & MASK64
            x[slow], self.s_hi[slow], self.s_lo[slow] = got, hi, lo
        return x


def _probe(bits: Any, rng: np.random.Generator, u: int) -> tuple[float, bool]:
    """numpy's ``standard_normal()`` when the generator's next 64-bit output is ``u``, and
    whether that one output was all it drew (the fast path)."""
    inc = 1
    after = u  # a state whose high half is 0 outputs its low half unrotated
    before = ((after - inc) * pow(PCG_MULT, -1, 1 << 128)) % (1 << 128)
    bits.state = {"bit_generator": "PCG64", "state": {"state": before, "inc": inc}, "has_uint32": 0, "uinteger": 0}
    x = float(rng.standard_normal())
    return x, bits.state["state"]["state"] == after


@functools.cache
def _ziggurat() -> tuple[np.ndarray, np.ndarray]:
    """numpy's ziggurat tables for doubles, read from numpy: ``wi`` (each layer's width per unit
    of the 52-bit magnitude) and ``ki`` (the fast path takes a magnitude below it)."""
    bits: Any = np.random.PCG64()
    rng = np.random.Generator(bits)
    wi, ki = np.zeros(256), np.zeros(256, dtype=np.uint64)
    top = 1 << 52
    for idx in range(256):
        x, fast = _probe(bits, rng, idx | (1 << 9))  # magnitude 1: the value is the width itself
        if not fast:
            continue  # never the fast path (ki stays 0)
        wi[idx] = x
        if _probe(bits, rng, idx | ((top - 1) << 9))[1]:
            ki[idx] = top
            continue
        lo, hi = 1, top - 1  # fast at lo, not at hi
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if _probe(bits, rng, idx | (mid << 9))[1]:
                lo = mid
            else:
                hi = mid
        ki[idx] = hi
    return wi, ki


@functools.cache
def vectorised() -> bool:
    """Whether :class:`Streams` and :func:`seed_states` draw what numpy draws on this machine
    (checked once a process on 64 generators: seeding, 96 uniforms and 288 normals each)."""
    try:
        ids = np.arange(0, 64 * 7919, 7919, dtype=np.int64)
        streams = Streams(*seed_states((12345,), ids, (0x5A1C,)))
        got = [np.column_stack([streams.random(), *(streams.standard_normal() for _ in range(3))])
               for _ in range(96)]
        for j, p in enumerate(ids.tolist()):
            rng = np.random.default_rng([12345, p, 0x5A1C])
            want = [[rng.random(), *rng.standard_normal(3)] for _ in range(96)]
            if not np.array_equal(np.array(want), np.array([g[j] for g in got])):
                raise AssertionError(f"generator {p} drew differently")
            st = rng.bit_generator.state["state"]
            if (st["state"], st["inc"]) != ((int(streams.s_hi[j]) << 64) | int(streams.s_lo[j]),
                                            (int(streams.i_hi[j]) << 64) | int(streams.i_lo[j])):
                raise AssertionError(f"generator {p} ended in another state")
    except (AssertionError, ValueError, KeyError, TypeError) as exc:
        log.warning("numpy's generators cannot be stepped as arrays here (%s); living fleets draw one client "
                    "at a time", exc)
        return False
    return True


__all__ = ["Streams", "seed_states", "vectorised"]
