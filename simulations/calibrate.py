"""Measure this machine's effective training FLOP/s (and power where readable) into a profile."""

from __future__ import annotations

import time

import psutil
import torch

from fedtitan.devices.catalog import DeviceProfile
from fedtitan.devices.cost import TRAIN_FACTOR
from fedtitan.devices.meters import MeasuredMeter
from fedtitan.models import build_model, count_forward_flops
from fedtitan.training.common import make_optimizer, weighted_step

SHAPES = {"mlp": (1, 28, 28), "cnn": (3, 32, 32), "mobilenet_v1": (3, 32, 32), "mobilenet_v2": (3, 32, 32),
          "resnet18": (3, 32, 32), "resnet34": (3, 32, 32), "resnet50": (3, 32, 32), "alexnet": (3, 32, 32),
          "squeezenet": (3, 32, 32), "har_cnn": (9, 128), "speech_cnn": (1, 98, 40)}


def calibrate(model_name: str = "cnn", batch_size: int = 32, seconds: float = 5.0,
              name: str = "this-machine") -> DeviceProfile:
    shape = SHAPES.get(model_name, (3, 32, 32))
    model = build_model(model_name, shape, 10)
    fwd = count_forward_flops(model, shape)
    opt = make_optimizer(model, "sgd", 0.01)
    x, y = torch.randn(batch_size, *shape), torch.randint(0, 10, (batch_size,))
    weighted_step(model, opt, x, y)  # warm up
    meter = MeasuredMeter()
    meter.start()
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        weighted_step(model, opt, x, y)
        steps += 1
    m = meter.stop()
    flops = TRAIN_FACTOR * fwd * batch_size * steps / m.time_s
    model.eval()
    with torch.no_grad():
        t1, n = time.perf_counter(), 0
        while time.perf_counter() - t1 < seconds / 2:
            model(x)
            n += 1
    fwd_flops = fwd * batch_size * n / (time.perf_counter() - t1)
    power = m.energy_j / m.time_s if m.energy_j is not None else None
    return DeviceProfile(
        name=name, description=f"measured by fedtitan devices calibrate ({model_name}, batch {batch_size})",
        train_flops=flops, select_flops=fwd_flops, train_w=power or 0.0, select_w=power or 0.0,
        idle_w=0.0, radio_w=0.0, memory_bytes=int(psutil.virtual_memory().total),
        uplink_bytes_per_s=100e6 / 8, downlink_bytes_per_s=100e6 / 8, select_unit="cpu",
        sources=(f"measured on {time.strftime('%Y-%m-%d')}: {steps} training steps in {m.time_s:.1f} s; "
                 f"energy source: {m.source}",),
        notes="power unavailable (no RAPL/INA3221/jtop readable): watts set to 0" if power is None else "",
    )
