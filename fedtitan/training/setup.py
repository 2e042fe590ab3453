"""Per-process set-up of a client (or the server): built once, cached, reused every round.

A Ray actor serves many virtual clients, one message at a time: the dataset is decoded,
partitioned and moved to the compute device once, the model is built once and its weights
are loaded every round (:func:`setup_for`). Which device profile a client simulates is a
pure function of the run config and its partition id (:func:`device_of`).
"""

from __future__ import annotations

import functools
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedtitan.compute import DeviceData, keep_heap, resolve_device, set_deterministic, unit_device
from fedtitan.config import Config
from fedtitan.data import load_dataset, partition
from fedtitan.data.dataset import Dataset
from fedtitan.data.partition import Partition, even_sizes, sorted_runs
from fedtitan.devices import device_for, get_profile
from fedtitan.devices.budgets import training_memory_bytes
from fedtitan.devices.catalog import DeviceProfile
from fedtitan.devices.dynamics import FleetDynamics, build_dynamics
from fedtitan.devices.fleet import fleet_devices, fleet_profiles, fleet_spec
from fedtitan.errors import ConfigError
from fedtitan.models import build_model, count_forward_flops, param_bytes
from fedtitan.models.base import BlockModel


@dataclass
class Setup:
    dataset: Dataset
    device: torch.device  # compute.device, resolved in this process
    data: DeviceData  # the dataset's tensors on ``device``
    parts: Partition  # client k's training indices: parts[k]
    test_parts: Partition  # its test indices (client-side evaluation)
    model: BlockModel
    forward_flops: int
    block_flops: int
    model_bytes: int
    memory_bytes: int
    extra_profiles: dict[str, DeviceProfile]


def model_options(cfg: Config) -> dict[str, Any]:
    opts: dict[str, Any] = {"width": cfg.model.width} if cfg.model.width is not None and cfg.model.name in (
        "cnn", "speech_cnn", "har_cnn", "resnet18", "resnet34") else {}
    if cfg.model.stem != "auto":
        opts["stem"] = cfg.model.stem
    return {**opts, **cfg.model.options}


def model_parts(cfg: Config) -> dict[str, str | None]:
    """The submodules ``model.head_module`` / ``embedding_module`` / ``first_block_module`` name."""
    m = cfg.model
    return {"head": m.head_module, "embedding": m.embedding_module, "first_block": m.first_block_module}


READ_KEYS = ("image_size", "image_mode", "label_column", "feature_columns", "group_column", "window", "window_step",
             "sample_shape", "bad_rows", "holdout", "test_fraction")


def read_options(cfg: Config) -> str:
    """The ``data.*`` settings reading a folder, table or LEAF set, as JSON ("" for the other datasets)."""
    import json

    from fedtitan.data.formats import FORMATS

    if cfg.data.dataset not in FORMATS:
        return ""
    return json.dumps({k: getattr(cfg.data, k) for k in READ_KEYS}, sort_keys=True)


def data_stamp(cfg: Config) -> tuple[int, int] | None:
    """The size and modification time of an ``npz`` dataset's file (``None`` for the other
    datasets): the per-process caches below read a changed file again, as its arrays may be
    memory-mapped from the file (:func:`fedtitan.data.load_npz`)."""
    d = cfg.data
    if d.dataset != "npz" or not d.path:
        return None
    try:
        st = Path(d.path).expanduser().stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=4)
def _dataset(name: str, data_dir: str | None, path: str | None, seed: int, options: str = "",
             stamp: tuple[int, int] | None = None) -> Dataset:
    return load_dataset(name, data_dir=data_dir, path=path, seed=seed, read_options=json.loads(options or "{}"),
                        progress=True)


@functools.lru_cache(maxsize=4)
def _subsampled(name: str, data_dir: str | None, path: str | None, seed: int, max_train: int,
                options: str = "", stamp: tuple[int, int] | None = None) -> Dataset:
    import dataclasses

    from fedtitan.data import stratified_holdout

    ds = _dataset(name, data_dir, path, seed, options, stamp)
    if max_train >= len(ds.y_train):
        return ds
    _, keep = stratified_holdout(ds.y_train, max_train / len(ds.y_train), seed)
    g = ds.groups_train[keep] if ds.groups_train is not None else None
    return dataclasses.replace(ds, x_train=ds.x_train[keep], y_train=ds.y_train[keep], groups_train=g)


def dataset_for(cfg: Config) -> Dataset:
    """The run's dataset (cached per process); ``data.max_train`` keeps a seeded stratified subset."""
    d = cfg.data
    if d.max_train is not None:
        return _subsampled(d.dataset, d.data_dir, d.path, cfg.run.seed, d.max_train, read_options(cfg), data_stamp(cfg))
    return _dataset(d.dataset, d.data_dir, d.path, cfg.run.seed, read_options(cfg), data_stamp(cfg))


def build_global_model(cfg: Config, ds: Dataset) -> BlockModel:
    torch.manual_seed(cfg.run.seed)
    model = build_model(cfg.model.name, ds.input_shape, ds.num_classes, **model_parts(cfg), **model_options(cfg))
    if cfg.selection.n_blocks > model.num_blocks:
        raise ConfigError(f"config selection.n_blocks: {cfg.selection.n_blocks} blocks, but model {cfg.model.name!r} "
                          f"has {model.num_blocks}; choose 1..{model.num_blocks}")
    return model


# partition_for's last partitions: (settings, the dataset they partition) -> the partition. A
# process asks more than once (the server's set-up and its partition table): 10^6 clients take
# a second or two each time.
_PARTITIONS: dict[str, tuple[weakref.ref[Dataset], Partition]] = {}
_PARTITIONS_KEPT = 4


def partition_for(cfg: Config, ds: Dataset) -> Partition:
    """The run's client partitions of ``ds``'s training set (deterministic per seed; made once
    per process for the same settings and dataset)."""
    d = cfg.data
    key = json.dumps([d.partition, d.num_clients, cfg.run.seed, d.alpha, d.classes_per_client, d.min_samples,
                      d.self_balancing, d.quantity_sigma, d.partition_options], sort_keys=True, default=str)
    kept = _PARTITIONS.get(key)
    if kept is not None and kept[0]() is ds:
        return kept[1]
    parts = Partition.of(partition(ds.y_train, d.partition, d.num_clients, seed=cfg.run.seed, alpha=d.alpha,
                                   classes_per_client=d.classes_per_client, min_samples=d.min_samples,
                                   groups=ds.groups_train, self_balancing=d.self_balancing, sigma=d.quantity_sigma,
                                   options=d.partition_options))
    if len(parts) != d.num_clients:
        raise ConfigError(f"config data.num_clients: {d.partition} made {len(parts)} partitions for "
                          f"{d.num_clients} clients; set data.num_clients = {len(parts)}")
    empty = parts.empty()
    if len(empty):
        raise ConfigError(f"config data.partition: {d.partition} left {len(empty)} client(s) without samples "
                          f"(first: {empty[0]}); change data.partition_options or lower data.num_clients")
    _PARTITIONS.pop(key, None)
    _PARTITIONS[key] = (weakref.ref(ds, functools.partial(_forget_partition, key)), parts)
    while len(_PARTITIONS) > _PARTITIONS_KEPT:
        del _PARTITIONS[next(iter(_PARTITIONS))]
    return parts


def _forget_partition(key: str, gone: weakref.ref[Dataset]) -> None:
    """A kept partition goes with its dataset (not with a newer dataset's under the same key)."""
    kept = _PARTITIONS.get(key)
    if kept is not None and kept[0] is gone:
        del _PARTITIONS[key]


def client_test_indices(cfg: Config, n_test: int) -> Partition:
    """Every client's share of the test split (client-side evaluation): a seeded permutation
    cut into near-equal parts, each sorted."""
    perm = np.random.default_rng([cfg.run.seed, 0x7E57]).permutation(n_test)
    return sorted_runs(perm, even_sizes(n_test, cfg.data.num_clients))


@functools.lru_cache(maxsize=4)
def _setup(cfg_json: str, stamp: tuple[int, int] | None = None) -> Setup:
    cfg = Config.from_json(cfg_json)
    set_deterministic(cfg.run.deterministic)
    device = resolve_device(cfg.compute.device)
    ds = dataset_for(cfg)
    parts = partition_for(cfg, ds)
    test_parts = client_test_indices(cfg, len(ds.y_test))
    model = build_global_model(cfg, ds)
    batch = cfg.selection.batch_size if cfg.regime == "streaming" else cfg.pruning.batch_size
    extra = fleet_profiles(cfg)
    setup = Setup(
        dataset=ds, device=device, data=DeviceData.on(ds, device), parts=parts, test_parts=test_parts, model=model,
        forward_flops=count_forward_flops(model, ds.input_shape),
        block_flops=count_forward_flops(model, ds.input_shape, n_blocks=cfg.selection.n_blocks),
        model_bytes=param_bytes(model), memory_bytes=training_memory_bytes(model, ds.input_shape, batch),
        extra_profiles=extra,
    )
    model.to(device)  # once per process; weights are loaded into it every round
    # the heap is kept from here on (training's buffers), not before: the set-up's scratch
    # arrays (the partition's sort, the labels' checks: hundreds of MB at 10,000,000 samples)
    # go back to the system instead of staying with the process
    keep_heap()
    return setup


@functools.lru_cache(maxsize=4)
def _data_on(cfg_json: str, device: torch.device, stamp: tuple[int, int] | None = None) -> DeviceData:
    setup = _setup(cfg_json, stamp)
    return setup.data if device == setup.device else DeviceData.on(setup.dataset, device)


def data_on(cfg: Config, device: torch.device, setup: Setup | None = None) -> DeviceData:
    """The run's dataset as tensors on ``device`` (the set-up's own, or a cached copy);
    ``setup``: :func:`setup_for`'s, when the caller has it (one look at the data file less)."""
    if setup is not None and device == setup.device:
        return setup.data
    return _data_on(cfg.to_json(), device, data_stamp(cfg))


def setup_for(cfg: Config) -> Setup:
    return _setup(cfg.to_json(), data_stamp(cfg))


def train_units(cfg: Config, profile: DeviceProfile, meter: str,
                setup: Setup | None = None) -> tuple[torch.device, torch.device]:
    """(training device, selecting device) for this client.

    Simulated devices compute everything on ``compute.device``. A measured device (a real
    board) trains on its profile's ``train_unit`` and, with the pipeline on, selects on its
    ``select_unit`` (``gpu`` = the resolved accelerator, the CPU when there is none)."""
    accel = (setup or setup_for(cfg)).device
    if meter != "measured":
        return accel, accel
    train = unit_device(profile.train_unit, accel)
    return train, (unit_device(profile.select_unit, accel) if cfg.run.pipeline else train)


@functools.lru_cache(maxsize=4)
def _dynamics(cfg_json: str) -> FleetDynamics:
    cfg = Config.from_json(cfg_json)
    extra = setup_for(cfg).extra_profiles
    return build_dynamics(cfg.fleet.dynamics, cfg.fleet.dynamics_options, cfg.run.seed,
                          fleet_devices(cfg, extra), cfg.fleet.trace)


def fleet_dynamics(cfg: Config) -> FleetDynamics:
    """The fleet's dynamics model and trace (built once per process)."""
    return _dynamics(cfg.to_json())


def device_of(cfg: Config, partition_id: int, override: str | None = None,
              setup: Setup | None = None) -> DeviceProfile:
    """Catalog/TOML profile named by the node (deployment), else the fleet's device for this client."""
    extra = (setup or setup_for(cfg)).extra_profiles
    if override:
        return get_profile(override, extra)
    return device_for(fleet_spec(cfg), cfg.run.seed, partition_id, extra)
