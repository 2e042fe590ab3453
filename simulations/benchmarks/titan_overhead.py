"""Figure 6 of the Titan paper per model: Titan's overheads over random selection (RS).

    python -m simulations.benchmarks.titan_overhead [--models alexnet,mobilenet_v1,squeezenet,resnet50] [--steps 8]

Prints one JSON object, one entry per model (CIFAR-10 shapes, v = 100, B = 10, buffer 30):

* ``extra_memory_mb_measured``: the growth of peak resident memory over ``--steps`` Titan steps
  minus that over the same number of RS steps, each in a fresh process on this machine after
  the same set-up (data, model; the peak is reset before the steps). One thread; selection and
  training share one process, so there is no second model copy;
* ``extra_memory_mb_model``: what the pipelined implementation of the paper adds, from the
  model: a copy of the weights for the selecting process, the candidate pool ((v + K) inputs)
  and the fine stage's forward over the K candidates (all activations kept: an upper bound);
* ``select_ms_per_sample_here`` and ``select_ms_per_sample_nano``: Titan's selection time per
  streamed sample, measured here (median step / v) and on the Jetson Nano profile's selecting
  unit from the cost model (paper: 4-13 ms);
* ``power_w_titan`` / ``power_w_rs`` and ``energy_per_step_ratio``: average power and energy
  per step on the Nano profile from the cost model (Titan's selection runs on the GPU unit
  beside training; RS's GPU idles).

Paper (Figure 6): 105 / 37 / 25 / 114 MB extra for AlexNet, MobileNet, SqueezeNet, ResNet50.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from typing import Any

PAPER_EXTRA_MB = {"alexnet": 105, "mobilenet_v1": 37, "squeezenet": 25, "resnet50": 114}


def _status_mb(key: str) -> float:
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _reset_peak() -> float:
    """Reset the process's peak resident size (Linux) and return the current one in MB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux: the peak then includes the set-up, the same for both methods
        pass
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    return _status_mb("VmHWM")


def _child(model_name: str, method: str, steps: int) -> None:
    """Run ``steps`` selection + training steps and print peak RSS (MB) and median selection ms."""
    import numpy as np
    import torch

    from fedtitan.compute import DeviceData
    from fedtitan.data import DataStream
    from fedtitan.data.dataset import Dataset
    from fedtitan.models import build_model
    from fedtitan.selection import build_selector
    from fedtitan.training import StreamingConfig, train_streaming

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    n = 2000
    ds = Dataset("synthetic", rng.standard_normal((n, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, n),
                 rng.standard_normal((10, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, 10), 10)
    torch.manual_seed(0)
    model = build_model(model_name, ds.input_shape, 10)
    stream = DataStream(DeviceData.on(ds, torch.device("cpu")), np.arange(n), v=100, seed=0, client=0)
    options: dict[str, Any] = {"buffer_size": 30} if method == "titan" else {}
    selector = build_selector(method, **options)
    base_mb = _reset_peak()  # the data, model and imports are common to both methods: not counted
    recs = train_streaming(model, stream, selector, StreamingConfig(steps=steps, batch_size=10, velocity=100,
                                                                    lr=0.01, pipeline=False), rng)
    print(json.dumps({"peak_mb": _peak_mb() - base_mb, "select_ms": float(np.median([r.select_ms for r in recs[1:]])),
                      "train_ms": float(np.median([r.train_ms for r in recs[1:]]))}))


def _measure(model: str, method: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "simulations.benchmarks.titan_overhead", "--child", model, method,
                          str(steps)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def model_figures(model_name: str) -> dict:
    from fedtitan.devices import get_profile
    from fedtitan.devices.budgets import activation_bytes_per_sample
    from fedtitan.devices.cost import coarse_cost, fine_cost
    from fedtitan.models import build_model, count_forward_flops, param_bytes
    from simulations.papers.single_device import device_step

    shape, v, b, k = (3, 32, 32), 100, 10, 30
    net = build_model(model_name, shape, 10)
    fwd, block = count_forward_flops(net, shape), count_forward_flops(net, shape, n_blocks=1)
    sample = 4 * math.prod(shape)
    extra = param_bytes(net) + (v + k) * sample + k * activation_bytes_per_sample(net, shape)
    nano = get_profile("jetson-nano-10w")
    kw: dict[str, Any] = dict(forward_flops=fwd, block_flops=block, batch=b, velocity=v, buffer=k, dim=math.prod(shape),
              coarse_forwards=v + k - b)
    t_titan, e_titan = device_step("titan", nano, **kw)
    t_rs, e_rs = device_step("rs", nano, **kw)
    select_s = coarse_cost(nano, block, v + k - b).time_s + fine_cost(nano, fwd, k).time_s
    return {"params_m": sum(p.numel() for p in net.parameters()) / 1e6, "extra_memory_mb_model": extra / 2**20,
            "select_ms_per_sample_nano": 1e3 * select_s / v, "step_s_titan_nano": t_titan, "step_s_rs_nano": t_rs,
            "power_w_titan": e_titan / t_titan, "power_w_rs": e_rs / t_rs, "energy_per_step_ratio": e_titan / e_rs}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="alexnet,mobilenet_v1,squeezenet,resnet50")
    ap.add_argument("--steps", type=int, default=8, help="selection + training steps measured per method")
    args = ap.parse_args()
    result: dict = {"steps": args.steps, "threads": 1, "models": {}}
    t0 = time.perf_counter()
    for m in args.models.split(","):
        fig = model_figures(m)
        rs, titan = _measure(m, "rs", args.steps), _measure(m, "titan", args.steps)
        fig.update(extra_memory_mb_measured=titan["peak_mb"] - rs["peak_mb"], steps_peak_mb_rs=rs["peak_mb"],
                   steps_peak_mb_titan=titan["peak_mb"], select_ms_per_sample_here=titan["select_ms"] / 100,
                   train_ms_per_step_here=rs["train_ms"], paper_extra_memory_mb=PAPER_EXTRA_MB.get(m))
        result["models"][m] = {k: round(v, 4) if isinstance(v, float) else v for k, v in fig.items()}
        print(f"{m}: done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
