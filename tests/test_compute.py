"""Accelerators: device resolution, device-resident data, models/batches/selector state on the
resolved device, determinism, Ray GPU shares. Every check runs on the CPU; the ``gpu``-marked
twins run the same checks on CUDA where one is visible."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from fedtitan.compute import (
    DeviceData,
    resolve_device,
    set_deterministic,
    unit_device,
    visible_devices,
)
from fedtitan.config import load_config
from fedtitan.data import load_dataset
from fedtitan.data.stream import DataStream
from fedtitan.errors import ConfigError
from fedtitan.models.zoo import GlobalAvgPool
from fedtitan.selection import build_selector
from fedtitan.training import StreamingConfig, train_streaming
from fedtitan.training.client import client_round
from fedtitan.training.setup import setup_for, train_units

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]
BASE = ["data.num_clients=3", "model.name=cnn", "model.width=8", "selection.local_steps=3"]


def test_resolution_and_one_line_errors_for_missing_devices():
    assert visible_devices()[0] == "cpu"
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available():
        for spec in ("cuda", "cuda:1"):
            with pytest.raises(ConfigError) as exc:
                resolve_device(spec)
            msg = str(exc.value)
            assert "no CUDA device is visible (visible: cpu" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="not one of auto, cpu, cuda, cuda:N, mps"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="compute.device: must be one of auto, cpu, cuda, cuda:N, mps"):
        load_config("quickstart", ["compute.device=gpu"])
    assert load_config("quickstart", ["compute.device=CUDA:0"]).compute.device == "cuda:0"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_says_which_devices_are_visible(capsys):
    from simulations.cli import main

    assert main(["run", "--quiet", "--set", "compute.device=cuda", "--set", "run.rounds=1"]) == 2
    err = capsys.readouterr().err
    assert "compute.device='cuda' but no CUDA device is visible (visible: cpu" in err and "Traceback" not in err


def test_profile_units_map_to_this_processs_devices():
    cpu = torch.device("cpu")
    assert unit_device("gpu", cpu) == cpu and unit_device("cpu", cpu) == cpu
    cuda = torch.device("cuda", 0)
    assert unit_device("gpu", cuda) == cuda and unit_device("cpu", cuda) == cpu
    cfg = load_config("quickstart", [*BASE, "run.pipeline=true"])
    from fedtitan.devices import CATALOG

    nano = CATALOG["jetson-nano-10w"]  # trains on the CPU, selects on the GPU
    train, select = train_units(cfg, nano, "measured")
    assert train == cpu and select == unit_device("gpu", setup_for(cfg).device)
    assert train_units(cfg, nano, "simulated") == (setup_for(cfg).device, setup_for(cfg).device)


def test_global_pool_on_cpu_is_torchs_adaptive_pool_bit_for_bit():
    x = torch.randn(4, 8, 5, 7)
    assert torch.equal(GlobalAvgPool(2)(x), nn.AdaptiveAvgPool2d(1)(x))
    s = torch.randn(4, 8, 9)
    assert torch.equal(GlobalAvgPool(1)(s), nn.AdaptiveAvgPool1d(1)(s))


@pytest.mark.parametrize("device", DEVICES)
def test_device_data_matches_the_cpu_normalisation(device):
    ds = load_dataset("digits")
    data = DeviceData.on(ds, torch.device(device))
    ids = np.array([5, 0, 17, 3])
    x, y = data.tensor("train", ids), data.labels("train", ids)
    assert x.device.type == device and y.device.type == device
    ref = ds.tensor("train", ids)
    if device == "cpu":
        assert torch.equal(x, ref)  # the CPU path is the dataset's own, unchanged
    else:
        torch.testing.assert_close(x.cpu(), ref)
    assert torch.equal(y.cpu(), ds.labels("train", ids))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("pipeline", [False, True])
def test_model_batches_and_selector_state_live_on_the_device(device, pipeline):
    cfg = load_config("quickstart", [*BASE, f"compute.device={device}", f"run.pipeline={str(pipeline).lower()}"])
    setup = setup_for(cfg)
    dev = torch.device(device)
    assert setup.device.type == dev.type
    g = {k: v.detach().cpu().clone() for k, v in setup.model.state_dict().items()}
    out = client_round(cfg, 1, g, {}, 1)
    assert all(p.device.type == dev.type for p in setup.model.parameters())
    assert all(v.device.type == "cpu" for v in out.state_dict.values())  # weights cross the boundary as CPU arrays
    buffer = out.state["selector"]["x"]
    assert buffer.device.type == dev.type and len(buffer) > 0  # Titan's candidates stay on the device
    assert out.metrics["train_on_gpu"] == float(dev.type == "cuda")
    assert out.metrics["steps"] == 3 and np.isfinite(out.metrics["train_loss"])
    if pipeline:  # the step's wall time overlaps training and selection
        assert 0 < out.metrics["steps_wall_ms"] <= out.metrics["train_wall_ms"] + out.metrics["select_wall_ms"] \
            + out.metrics["sync_wall_ms"] + 50


@pytest.mark.gpu
def test_titan_pipeline_across_units_trains_on_cpu_and_selects_on_cuda():
    ds = load_dataset("digits")
    torch.manual_seed(0)
    from fedtitan.models import build_model

    model = build_model("cnn", ds.input_shape, 10, width=8)
    stream = DataStream(DeviceData.on(ds, torch.device("cpu")), np.arange(len(ds.y_train)), v=40, seed=0, client=0)
    recs = train_streaming(model, stream, build_selector("titan", buffer_size=20),
                           StreamingConfig(steps=4, batch_size=8, velocity=40, lr=0.05, pipeline=True),
                           np.random.default_rng(0), select_device=torch.device("cuda"))
    assert len(recs) == 4 and all(p.device.type == "cpu" for p in model.parameters())
    assert all(r.sync_ms > 0 for r in recs[:-1])


@pytest.mark.parametrize("device", DEVICES)
def test_deterministic_mode_repeats_a_round_exactly(device):
    cfg = load_config("quickstart", [*BASE, f"compute.device={device}", "run.deterministic=true"])
    try:
        assert set_deterministic(True) == "deterministic"
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")
        g = {k: v.detach().cpu().clone() for k, v in setup_for(cfg).model.state_dict().items()}
        a = client_round(cfg, 0, {k: v.clone() for k, v in g.items()}, {}, 1).state_dict
        b = client_round(cfg, 0, {k: v.clone() for k, v in g.items()}, {}, 1).state_dict
        assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
    assert set_deterministic(False) == "default"


def test_ray_gpu_share_per_client_process():
    from simulations.run import client_resources

    cfg = load_config("quickstart", ["simulation.num_gpus=0.25", "simulation.num_cpus=1"])
    # four per GPU; a client process that dies is restarted
    assert client_resources(cfg, attach=False) == {"num_cpus": 1.0, "num_gpus": 0.25, "max_restarts": -1}
    cpu_only = load_config("quickstart", ["compute.device=cpu"])
    assert client_resources(cpu_only, attach=False)["num_gpus"] == 0.0
    if torch.cuda.is_available():  # left at 0 on a CUDA machine: an equal share per process
        share = client_resources(load_config("quickstart", []), attach=False)["num_gpus"]
        assert 0 < share <= 1


def _malloc_probe(code: str, *args: str, malloc: str) -> list[str]:
    """What ``code`` prints, run in a fresh Python process (malloc settings are per process)
    with ``FEDTITAN_MALLOC=malloc``, split into words; skips the test where the C library is
    not glibc."""
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FEDTITAN_MALLOC": malloc}, check=True).stdout.split()


def test_keep_heap_keeps_freed_memory_in_the_process():
    """A fresh process (as a Ray actor is) fixes malloc's thresholds unless told not to, once.
    The effect: 48 MiB freed and allocated again (over glibc's 32 MiB ceiling for its own
    adjustment) come back without new page faults. Checked in subprocesses: the setting is
    per process."""
    code = ("import resource, numpy as np\n"
            "from fedtitan.compute import keep_heap\n"
            "kept = [keep_heap(), keep_heap()]\n"
            "np.ones(6 << 20)\n"  # 48 MiB of float64, touched
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "for _ in range(10):\n"
            "    np.ones(6 << 20)\n"
            "print(*kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n")
    faults = {}
    for setting, kept in (("keep", "True"), ("default", "False")):
        out = _malloc_probe(code, malloc=setting)
        assert out[:2] == [kept, kept]
        faults[setting] = int(out[2])
    # glibc maps each 48 MiB afresh: new pages every time (12,288 of 4 KiB; fewer where
    # transparent huge pages serve some of them); kept, they are the heap's own
    assert faults["keep"] < 50 and faults["default"] >= 100 + faults["keep"]


def test_one_arena_lets_a_thread_keep_its_freed_memory_too():
    """A thread's arena grows in heaps of at most 64 MiB, so glibc maps any larger block afresh
    whatever keep_heap set (Flower's ServerApp thread evaluated 1.8x slower so). After
    one_arena, a thread started later allocates from the main heap and keeps 96 MiB blocks
    as the main thread does. Subprocesses: the setting is per process."""
    code = ("import resource, sys, threading, numpy as np\n"
            "from fedtitan.compute import keep_heap, one_arena\n"
            "flags = [one_arena(), one_arena()] if sys.argv[1] == 'one' else [False, False]\n"
            "keep_heap()\n"
            "out = []\n"
            "def work():\n"
            "    np.ones(12 << 20)\n"  # 96 MiB of float64, touched
            "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
            "    for _ in range(10):\n"
            "        np.ones(12 << 20)\n"
            "    out.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)\n"
            "t = threading.Thread(target=work)\n"
            "t.start()\n"
            "t.join()\n"
            "print(*flags, out[0])\n")
    faults = {}
    for arenas, flag in (("one", "True"), ("many", "False")):
        out = _malloc_probe(code, arenas, malloc="keep")
        assert out[:2] == [flag, flag]
        faults[arenas] = int(out[2])
    # a thread's own arena maps each 96 MiB afresh (24,576 pages of 4 KiB, fewer with huge pages)
    assert faults["one"] < 50 and faults["many"] >= 100 + faults["one"]


def test_torch_threads_sets_the_count_inside_and_puts_it_back():
    from fedtitan.compute import torch_threads

    before = torch.get_num_threads()
    with torch_threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(before + 2):
        raise RuntimeError("a failing client")
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before


def test_a_simulated_client_trains_on_its_ray_share_of_threads_on_either_engine(monkeypatch):
    """num_cpus threads for a simulated client (one named partition, or a bundle of them), with or
    without run.deterministic; a real SuperNode keeps its own; a bundle sets them once."""
    from types import SimpleNamespace

    from flwr.app import ConfigRecord, Context, RecordDict

    import clients.client_app as client_app
    from clients.client_app import PARTITION_KEY, _threads
    from fedtitan.wire import BUNDLE_KEY, CONFIG_RECORD, RUN_CONFIG_KEY

    simulated, supernode = ConfigRecord({PARTITION_KEY: 3}), ConfigRecord({})
    cfg = load_config("quickstart", ["run.deterministic=true", "simulation.num_cpus=2.5"])
    assert _threads(cfg, simulated) == 2 and _threads(cfg, supernode) is None
    assert _threads(cfg, ConfigRecord({BUNDLE_KEY: [3, 4]})) == 2
    assert _threads(load_config("quickstart", ["run.deterministic=true", "simulation.num_cpus=0.5"]), simulated) == 1
    assert _threads(load_config("quickstart"), simulated) == 1  # without the flag too

    seen: list[int] = []
    monkeypatch.setattr(client_app, "_train_one", lambda m, c: seen.append(torch.get_num_threads()) or RecordDict())
    rec = ConfigRecord({RUN_CONFIG_KEY: load_config("quickstart", ["simulation.num_cpus=1"]).to_json(), BUNDLE_KEY: [1, 2]})
    msg = SimpleNamespace(content=RecordDict({CONFIG_RECORD: rec}))  # a Message needs a run
    monkeypatch.setattr(client_app, "Message", lambda content, reply_to: content)  # no run to reply in
    calls: list[int | None] = []
    real = client_app.torch_threads
    monkeypatch.setattr(client_app, "torch_threads", lambda n: calls.append(n) or real(n))
    before = torch.get_num_threads()
    client_app._train(msg, Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={}))
    assert seen == [1, 1] and calls == [1] and torch.get_num_threads() == before


def test_seed_torch_leaves_the_cpu_generator_as_manual_seed_does(monkeypatch):
    """The per-client seeding skips torch.manual_seed's lazy accelerator seeding on a CPU-only
    torch (a formatted stack trace per backend per call); the CPU stream it starts is the same."""
    from fedtitan.compute import seed_torch

    torch.manual_seed(1234)
    expected = torch.rand(5)
    seed_torch(1234)
    assert torch.equal(torch.rand(5), expected)
    if not torch.cuda.is_available():
        def slow(seed):
            raise AssertionError("torch.manual_seed called on a CPU-only torch")

        monkeypatch.setattr(torch, "manual_seed", slow)
        seed_torch(99)


def test_weights_load_and_leave_by_plain_copies_as_torch_does():
    """load_weights / to_cpu_state copy straight into the parameters and buffers: the same
    values as load_state_dict / state_dict (BatchNorm's counter included), torch's own error
    for a wrong state, and torch's own path for a module with state-dict hooks."""
    from fedtitan.compute import load_weights, state_entries, to_cpu_state

    def net() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Flatten(),
                                   torch.nn.Linear(8, 3))

    torch.manual_seed(0)
    src, a, b = net(), net(), net()
    src(torch.randn(4, 1, 4, 4))  # running stats and num_batches_tracked move
    state = {k: v.clone() for k, v in src.state_dict().items()}
    assert state_entries(a) is not None
    load_weights(a, state)
    b.load_state_dict(state)
    for (ka, va), (kb, vb) in zip(to_cpu_state(a).items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb) and va.dtype == vb.dtype
    out = to_cpu_state(a)
    out["3.weight"].add_(1.0)  # a copy, not the model's own tensor
    assert not torch.equal(out["3.weight"], a.state_dict()["3.weight"])
    with pytest.raises(RuntimeError, match="Missing key"):
        load_weights(a, {k: v for k, v in state.items() if k != "3.bias"})
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_weights(a, {**state, "3.bias": torch.zeros(4)})
    hooked = net()
    seen = []
    hooked.register_load_state_dict_post_hook(lambda *_: seen.append(1))
    assert state_entries(hooked) is None
    load_weights(hooked, state)
    assert seen == [1]
