"""glibc's malloc settings for fedtitan's processes (:func:`one_arena`, :func:`keep_heap`).

Kept apart from :mod:`fedtitan.compute`, and free of torch, so that the command line and the
simulation driver set them before importing torch (and start Ray before it: see
``simulations.run.RayStart``).
"""

from __future__ import annotations

import os

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
HEAP_KEEP_BYTES = 1 << 30
MALLOC_ENV = "FEDTITAN_MALLOC"
_heap_kept: bool | None = None
_one_arena: bool | None = None


def _mallopt(*settings: tuple[int, int]) -> bool:
    """glibc's ``mallopt`` for each (parameter, value) in turn; False at the first refused, or
    where the C library is not glibc (musl, macOS) or ``FEDTITAN_MALLOC=default``."""
    if os.environ.get(MALLOC_ENV, "keep") == "default":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return all(libc.mallopt(param, value) for param, value in settings)
    except (OSError, AttributeError):  # not glibc
        return False


def one_arena() -> bool:
    """Let the threads this process starts from now on allocate from its main heap (once per
    process; call it before starting them, with :func:`keep_heap`).

    glibc gives each new thread an arena of its own, up to 8 per core. Such an arena grows in
    heaps of at most 64 MiB, so any larger block (a MobileNetV1 activation over a batch of
    512 CIFAR images is 67-134 MiB) is ``mmap``-ed and unmapped on every allocation, whatever
    :func:`keep_heap` set. Flower runs the ServerApp in a thread: the server's central
    evaluation of 2,000 images took 2.8 s there against 1.5 s on the main thread, with 1.7
    million page faults instead of none. With one arena the thread's blocks come from the
    main heap, which keeps them. Threads that allocated before the call keep their own arena.
    The cost is one lock for every thread's allocations; the simulation driver's threads
    allocate little besides the server's. Returns whether it was set."""
    global _one_arena
    if _one_arena is None:
        _one_arena = _mallopt((_M_ARENA_MAX, 1))
    return _one_arena


def keep_heap() -> bool:
    """Let glibc's malloc keep freed memory in this process's heap (once per process).

    By default glibc serves each allocation over a dynamic threshold (128 KiB at start) with
    its own ``mmap`` and returns it on ``free``, and trims the heap's top when 128 KiB are free.
    A training step allocates and frees activations of megabytes every time, so a fresh process
    (a Ray actor, a SuperNode) takes every page of them as a new page fault, about 400,000 in 15
    MobileNetV1 client rounds, and its torch kernels run 6-10% slower than in a process whose
    threshold has grown. Fixing both thresholds at 1 GiB (32 MiB where an older glibc caps it)
    keeps the pages: the faults fall about 4x and the rounds run at the warm speed from the
    first step. The price is that memory freed
    after the peak stays with the process (its RSS stays at its peak), which a training worker
    reaches every step anyway. ``FEDTITAN_MALLOC=default`` leaves glibc as it is; other C
    libraries (musl, macOS) are left alone. Returns whether the thresholds were set."""
    global _heap_kept
    if _heap_kept is None:
        # older glibc caps the mmap threshold at 32 MiB (HEAP_MAX_SIZE / 2)
        mmap_set = _mallopt((_M_MMAP_THRESHOLD, HEAP_KEEP_BYTES)) or _mallopt((_M_MMAP_THRESHOLD, 32 << 20))
        _heap_kept = mmap_set and _mallopt((_M_TRIM_THRESHOLD, HEAP_KEEP_BYTES))
    return _heap_kept
