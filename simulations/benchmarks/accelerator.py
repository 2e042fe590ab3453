"""Client compute on each available device; prints one JSON object.

    python -m simulations.benchmarks.accelerator [--repeats 10] [--data-dir ../shared/data]

1. One Titan client round of the FL setting on CIFAR-10 shapes (MobileNetV1, 3 steps of
   B = 10 chosen from v = 100 new samples, buffer 30), per available device (CPU, each CUDA
   device, MPS): median wall time, the round's model FLOPs (training 3 x forward x B per
   step, the coarse filter's first block over what it scored, the fine stage's forward over
   the buffer), achieved FLOP/s and, where the device's peak is known, the fraction of it.
2. A ``titan-fl-cifar10`` round of 10 clients (the preset: 50 devices, 20% sampled) run by
   ``client_round`` in one process, on the CPU and, when one is visible, on the GPU: the
   client work of a round without Flower/Ray (whose overhead is benchmarked separately).
   Real CIFAR-10 when ``--data-dir`` (or ``$FEDTITAN_SHARED_DATA``) has it, else random
   images of the same shape (timing does not depend on the pixels).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedtitan.compute import DeviceData, describe, resolve_device, visible_devices
from fedtitan.data import load_dataset
from fedtitan.data.dataset import Dataset
from fedtitan.data.stream import DataStream
from fedtitan.models import build_model, count_forward_flops
from fedtitan.selection import build_selector
from fedtitan.training import StreamingConfig, train_streaming

# FP32 (non-tensor-core) peak FLOP/s by device name, from vendor data sheets; the ratio is
# reported only for these. Small-batch training reaches a few per cent of them at best.
PEAK_FP32 = {
    "H100 SXM": 67e12, "H100 PCIe": 51e12, "H100 NVL": 60e12, "H200": 67e12, "A100": 19.5e12, "L40S": 91.6e12,
    "L4": 30.3e12, "A10": 31.2e12, "T4": 8.1e12, "V100": 15.7e12, "RTX 4090": 82.6e12, "RTX 3090": 35.6e12,
    "Orin": 5.3e12,  # Jetson AGX Orin 64GB GPU (Orin Nano 8GB: 1.3e12 at 625 MHz)
}


def peak_of(name: str) -> float | None:
    for key, value in sorted(PEAK_FP32.items(), key=lambda kv: -len(kv[0])):
        if key.lower() in name.lower():
            return value
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _synthetic_cifar(n_train: int = 50_000, n_test: int = 10_000) -> Dataset:
    rng = np.random.default_rng(0)
    return Dataset(
        name="cifar10-shaped", x_train=rng.integers(0, 256, (n_train, 3, 32, 32), dtype=np.uint8),
        y_train=np.repeat(np.arange(10), n_train // 10), x_test=rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8),
        y_test=np.repeat(np.arange(10), n_test // 10), num_classes=10, scale=1 / 255,
        mean=(0.491, 0.482, 0.447), std=(0.247, 0.243, 0.262))


def client_round_bench(ds: Dataset, device: torch.device, repeats: int, steps: int = 3, v: int = 100, batch: int = 10,
                       buffer: int = 30) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model("mobilenet_v1", ds.input_shape, ds.num_classes)
    fwd = count_forward_flops(model, ds.input_shape)
    block = count_forward_flops(model, ds.input_shape, n_blocks=1)
    model.to(device)
    data = DeviceData.on(ds, device)
    stream = DataStream(data, np.arange(len(ds.y_train)), v=v, seed=0, client=0)
    selector = build_selector("titan", buffer_size=buffer)
    cfg = StreamingConfig(steps=steps, batch_size=batch, velocity=v, lr=0.1)
    rng = np.random.default_rng(0)
    times, scored = [], []
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        recs = train_streaming(model, stream, selector, cfg, rng)
        _sync(device)
        if i:  # the first round warms up kernels and caches
            times.append(time.perf_counter() - t0)
            scored.append(sum(r.info.get("coarse_forwards", v) for r in recs))
    wall = statistics.median(times)
    flops = steps * 3 * fwd * batch + float(np.mean(scored)) * block + steps * buffer * fwd
    info = describe(device)
    peak = peak_of(info.get("name", "")) if device.type == "cuda" else None
    return {"device": str(device), "name": info.get("name"), "round_wall_s": round(wall, 4),
            "round_wall_s_all": [round(t, 4) for t in times], "model_forward_flops": fwd, "round_flops": flops,
            "achieved_flops_per_s": flops / wall, "peak_fp32_flops_per_s": peak,
            "fraction_of_peak": (flops / wall / peak) if peak else None,
            "torch_threads": torch.get_num_threads() if device.type == "cpu" else None}


def fl_round_bench(device_spec: str, data_dir: str | None, clients: int = 10) -> dict[str, Any]:
    """``clients`` client rounds of the titan-fl-cifar10 preset, in one process, on one device."""
    from fedtitan.config import load_config
    from fedtitan.training.client import client_round
    from fedtitan.training.setup import setup_for

    overrides = [f"compute.device={device_spec}"]
    tmp = None
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory()
        ds = _synthetic_cifar()
        path = Path(tmp.name) / "cifar-shaped.npz"
        np.savez(path, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
        overrides += ["data.dataset=npz", f"data.path={path}"]
    else:
        overrides.append(f"data.data_dir={data_dir}")
    cfg = load_config("titan-fl-cifar10", overrides)
    setup = setup_for(cfg)
    g = {k: v.detach().cpu().clone() for k, v in setup.model.state_dict().items()}
    pids = list(range(clients))
    client_round(cfg, pids[0], g, {}, 1)  # warm-up: kernels, caches
    device = setup.device
    _sync(device)
    t0 = time.perf_counter()
    for pid in pids:
        client_round(cfg, pid, {k: v.clone() for k, v in g.items()}, {}, 2)
    _sync(device)
    wall = time.perf_counter() - t0
    if tmp is not None:
        tmp.cleanup()
    return {"device": str(device), "clients": clients, "round_wall_s": round(wall, 3),
            "per_client_s": round(wall / clients, 4), "data": "cifar10" if data_dir else "random, CIFAR-10 shaped"}


def _shared_data(arg: str | None) -> str | None:
    for cand in (arg, os.environ.get("FEDTITAN_SHARED_DATA"), str(Path(__file__).resolve().parents[3] / "shared" / "data")):
        if cand and (Path(cand) / "cifar10").exists():
            return cand
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--skip-fl", action="store_true", help="only the per-client-round part")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's; use 1 on a loaded machine: OpenMP threads thrash)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_dir = _shared_data(args.data_dir)
    ds = load_dataset("cifar10", data_dir=data_dir) if data_dir else _synthetic_cifar()
    devices = visible_devices()
    out: dict[str, Any] = {"setting": "MobileNetV1, CIFAR-10 shapes, Titan, 3 steps of B=10 from v=100, buffer 30",
                           "visible_devices": devices, "host_cpu_threads": torch.get_num_threads(),
                           "data": "cifar10" if data_dir else "random, CIFAR-10 shaped",
                           "client_round": [client_round_bench(ds, resolve_device(d), args.repeats) for d in devices]}
    if not args.skip_fl:
        fl: dict[str, Any] = {"cpu": fl_round_bench("cpu", data_dir, args.clients)}
        gpu = "cuda" if torch.cuda.is_available() else ("mps" if "mps" in devices else None)
        fl["gpu"] = fl_round_bench(gpu, data_dir, args.clients) if gpu else None
        if fl["gpu"]:
            fl["gpu_speedup"] = round(fl["cpu"]["round_wall_s"] / fl["gpu"]["round_wall_s"], 2)
        out["titan_fl_round"] = fl
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
