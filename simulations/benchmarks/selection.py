"""Selection cost on one thread; prints one JSON object.

    python -m simulations.benchmarks.selection [--repeats 20]

Per model (small CNN and MobileNetV1, 32x32 inputs), per streamed sample: the model's own
first-block forward over the v = 100 new samples in one batch (``model_forward``, what a
plain implementation pays), the first-block forward as the coarse filter runs it (batch norm
folded, pieces of 32, pooled: ``first_block_forward``, the floor of the coarse filter) and the
coarse filter itself (that forward over the 100 new and 30 kept samples + estimators + greedy
buffer); then the fine stage per round (C-IS over a 30-sample buffer, its forward included)
and the C-IS arithmetic alone. Targets (issue 3): coarse <= 2x its forward floor and
<= 0.2 ms/sample on MobileNetV1; cis_math_ms <= 1 ms.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from fedtitan.compute import resolve_device
from fedtitan.data.stream import Chunk
from fedtitan.models import build_model
from fedtitan.selection.cis import cis_draw
from fedtitan.selection.coarse import CoarseFilter, coarse_features
from fedtitan.selection.lastlayer import head_stats


def _best_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def bench(model_name: str, repeats: int, v: int = 100, buffer: int = 30, batch: int = 10,
          device: torch.device | None = None) -> dict[str, float | str]:
    device = device or torch.device("cpu")
    torch.manual_seed(0)
    model = build_model(model_name, (3, 32, 32), 10).eval().to(device)
    rng = np.random.default_rng(0)
    chunks = [Chunk(torch.randn(v, 3, 32, 32, device=device), torch.as_tensor(rng.integers(0, 10, v), device=device),
                    np.arange(i * v, (i + 1) * v)) for i in range(repeats + 2)]
    it = iter(range(10**9))

    def model_forward() -> None:
        with torch.no_grad():
            model.features(chunks[0].x, 1)

    flt = CoarseFilter(buffer, 1, 4)

    def forward_floor() -> None:
        coarse_features(model, chunks[0].x, flt.n_blocks, flt.pool)

    def coarse() -> None:
        flt.observe(chunks[next(it) % len(chunks)], model)

    model_ms = _best_ms(model_forward, repeats)
    floor_ms = _best_ms(forward_floor, repeats)
    coarse_ms = _best_ms(coarse, repeats)
    buf = flt.as_chunk()

    def fine() -> None:
        s = head_stats(model, buf.x, buf.y)
        cis_draw(buf.y.cpu().numpy(), s.grad_norms, s.gram(), batch, rng)

    stats = head_stats(model, buf.x, buf.y)
    norms, gram, labels = stats.grad_norms, stats.gram(), buf.y.cpu().numpy()
    return {
        "model": model_name, "device": str(device),
        "model_forward_ms_per_sample": model_ms / v,
        "first_block_forward_ms_per_sample": floor_ms / v,
        "coarse_ms_per_sample": coarse_ms / v,
        "coarse_over_floor": coarse_ms / floor_ms,
        "fine_ms_per_round": _best_ms(fine, repeats),
        "cis_math_ms": _best_ms(lambda: cis_draw(labels, norms, gram, batch, rng), repeats),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N, mps (as compute.device)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    device = resolve_device(args.device)
    out = {"threads": torch.get_num_threads(), "v": 100, "buffer": 30, "batch": 10,
           "results": [bench(m, args.repeats, device=device) for m in ("cnn", "mobilenet_v1")]}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
