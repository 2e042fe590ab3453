"""A large image folder is decoded once per machine, not once per client process; prints one JSON object.

    python -m simulations.benchmarks.folder_memory [--images 50000 --size 32 --processes 2]

Makes a folder of ``--images`` PNGs (``--size`` px, RGB, 10 classes; or reads ``--root``), then:

1. decodes it in this process with a progress bar (``cache_build_s``: the first load, PNG
   decoding and the two cache levels of :mod:`fedtitan.data.formats`; ``cache_hit_s``: a second
   load, as each client process does);
2. starts ``--processes`` processes at once, as a machine's client processes (Ray actors)
   would be; each loads the dataset the way a run does, reads every sample (so every page is
   in memory), waits for the others, then reports the proportional set size (Pss: a page
   shared by two processes counts half to each) its data added;
3. does the same with each process holding its own in-memory copy (``np.array`` of the
   arrays), the layout before the cache was memory-mapped.

``shared_ratio`` = the processes' added Pss together / one decoded copy (target <= 1.3, issue 41);
``copies_ratio`` is the same for private copies (about the process count).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_folder(root: Path, images: int, size: int, classes: int = 10) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class_{c:02d}").mkdir(parents=True, exist_ok=True)
    base = rng.integers(0, 256, (classes, size, size, 3), dtype=np.uint8)
    for i in range(images):
        c = i % classes
        noise = rng.integers(0, 32, (size, size, 3), dtype=np.uint8)
        Image.fromarray(base[c] // 2 + noise).save(root / f"class_{c:02d}" / f"{i:06d}.png", compress_level=1)
    return root


def _pss_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError("no Pss in /proc/self/smaps_rollup (Linux only)")


def _child(root: str, private: bool, barrier: Any, out: Any) -> None:
    import pandas  # noqa: F401  (what loading imports is code, not data: in the baseline)
    import PIL.Image  # noqa: F401

    from fedtitan.data import formats, load_dataset  # noqa: F401

    before = _pss_kb()
    ds = load_dataset("folder", path=root, seed=0)
    mapped = isinstance(ds.x_train, np.memmap)
    xs = [ds.x_train, ds.x_test]
    if private:
        xs = [np.array(x) for x in xs]
        del ds  # the mapping goes: each process holds only its own copy
    checksum = sum(int(x.sum(dtype=np.uint64)) for x in xs)  # every page read
    barrier.wait()
    added = _pss_kb() - before
    barrier.wait()  # nobody exits (and drops its share) before all have measured
    out.put({"added_kb": added, "checksum": checksum, "mapped": mapped})


def _measure(root: Path, processes: int, private: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_child, args=(str(root), private, barrier, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    got = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    return {"added_mb": sum(g["added_kb"] for g in got) / 1024, "mapped": all(g["mapped"] for g in got),
            "checksums_equal": len({g["checksum"] for g in got}) == 1}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=50_000)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--root", help="an existing image folder (default: make one in a temporary folder)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FEDTITAN_CACHE"] = str(Path(tmp) / "cache")  # a cold cache, gone afterwards
        t = time.perf_counter()
        root = Path(args.root) if args.root else make_folder(Path(tmp) / "images", args.images, args.size)
        made = time.perf_counter() - t

        from fedtitan.data import load_dataset

        t = time.perf_counter()
        ds = load_dataset("folder", path=root, seed=0, progress=True)
        build = time.perf_counter() - t
        t = time.perf_counter()
        load_dataset("folder", path=root, seed=0)
        hit = time.perf_counter() - t
        decoded_mb = (ds.x_train.nbytes + ds.x_test.nbytes) / 2**20
        shared = _measure(root, args.processes, private=False)
        copies = _measure(root, args.processes, private=True)
    result = {
        "images": len(ds.y_train) + len(ds.y_test), "shape": list(ds.input_shape), "processes": args.processes,
        "folder_made_s": round(made, 1), "cache_build_s": round(build, 2), "cache_hit_s": round(hit, 3),
        "decoded_mb": round(decoded_mb, 1),
        "shared_added_mb": round(shared["added_mb"], 1), "shared_ratio": round(shared["added_mb"] / decoded_mb, 3),
        "copies_added_mb": round(copies["added_mb"], 1), "copies_ratio": round(copies["added_mb"] / decoded_mb, 3),
        "memory_mapped": shared["mapped"], "same_data_in_every_process": shared["checksums_equal"],
        "target_shared_ratio": 1.3,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
