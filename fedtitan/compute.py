"""Where tensors live: resolving ``compute.device``, determinism, and device-resident data.

The device is resolved once per process, where the per-process set-up is built (a Ray
actor, the server, a SuperNode, a benchmark); the model and the cached dataset tensors move
there once. Selectors and trainers take tensors where they are and never choose a device.

``auto`` means CUDA if a CUDA device is visible, else Apple's MPS if available, else the
CPU. Asking for ``cuda``/``cuda:N``/``mps`` where none is visible is a one-line
:class:`~fedtitan.errors.ConfigError` naming what is visible.
"""

from __future__ import annotations

import contextlib
import functools
import os
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedtitan.config import DEVICE_PATTERN
from fedtitan.data.dataset import Dataset
from fedtitan.errors import ConfigError
from fedtitan.malloc import HEAP_KEEP_BYTES, MALLOC_ENV, keep_heap, one_arena


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


@functools.cache
def _cpu_only_torch() -> bool:
    """True when this torch can reach no accelerator (CUDA, MPS, XPU, MTIA): then seeding the
    CPU generator is all ``torch.manual_seed`` does."""
    checks = [torch.cuda.is_available, _mps_available]
    for name in ("xpu", "mtia"):
        backend = getattr(torch, name, None)
        if backend is not None and hasattr(backend, "is_available"):
            checks.append(backend.is_available)
    return not any(check() for check in checks)


def seed_torch(seed: int) -> None:
    """``torch.manual_seed(seed)``, without its cost where it would do nothing more than seed
    the CPU generator: on a CPU-only torch, ``torch.manual_seed`` also queues a lazy seeding of
    the CUDA, XPU and MTIA backends, formatting a stack trace for each, which every client round
    paid. The CPU generator ends in the same state either way."""
    if _cpu_only_torch():
        torch.default_generator.manual_seed(int(seed))
    else:
        torch.manual_seed(seed)


def visible_devices() -> list[str]:
    """What this process can use: ``cpu``, then ``cuda:0..N-1`` and/or ``mps``."""
    out = ["cpu"]
    if torch.cuda.is_available():
        out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        out.append("mps")
    return out


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps`` -> a usable :class:`torch.device`."""
    spec = str(spec).strip().lower()
    if not DEVICE_PATTERN.match(spec):
        raise ConfigError(f"compute.device {spec!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    visible = ", ".join(visible_devices())
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"compute.device={spec!r} but no CUDA device is visible (visible: {visible}); "
                              "use compute.device=auto or cpu")
        index = int(spec.split(":")[1]) if ":" in spec else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise ConfigError(f"compute.device={spec!r} but only {torch.cuda.device_count()} CUDA device(s) are "
                              f"visible (visible: {visible})")
        return torch.device("cuda", index)
    if spec == "mps" and not _mps_available():
        raise ConfigError(f"compute.device='mps' but MPS is not available (visible: {visible}); "
                          "use compute.device=auto or cpu")
    return torch.device(spec)


def device_label(device: torch.device) -> str:
    """What a run's wall times were measured on: ``cpu``, ``cuda: <GPU name>`` or ``mps``."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return device.type


def unit_device(unit: str, accelerator: torch.device) -> torch.device:
    """The torch device a profile's compute unit (``cpu`` | ``gpu``) runs on in this process:
    ``gpu`` is the resolved accelerator when there is one, else the CPU."""
    if unit == "gpu" and accelerator.type != "cpu":
        return accelerator
    return torch.device("cpu")


def describe(device: torch.device) -> dict[str, Any]:
    """Name and capability of a device, for meta.json and benchmarks."""
    out: dict[str, Any] = {"device": str(device), "torch": torch.__version__}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(name=props.name, cuda=torch.version.cuda, memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}")
    elif device.type == "cpu":
        out.update(name="cpu", threads=torch.get_num_threads(), cores=os.cpu_count())
    else:
        out.update(name=device.type)
    return out


def set_deterministic(enabled: bool) -> str:
    """Turn torch's deterministic algorithms on (and cuBLAS's fixed workspace) or leave them off.

    Ops with no deterministic kernel warn instead of failing (``warn_only``): the models here
    avoid the known ones (global average pooling is a mean on accelerators). Returns the mode
    recorded in ``meta.json``."""
    if not enabled:
        return "default"
    # cuBLAS reads this when its handle is created; set before the first matmul on a GPU.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    return "deterministic"


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``n`` inside the block and put back after (``None``: left alone).

    The last bits of a CPU matmul can depend on how many threads share it (measured on an AMD
    EPYC with torch 2.13's CPU wheel: a client's training loss differed in the 4th digit between
    1 and 2 threads), so a run that must repeat exactly fixes the count (see
    ``clients.client_app``)."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class DeviceData:
    """A dataset as the training code reads it, on one device.

    On the CPU it hands out what :meth:`Dataset.tensor` does (so CPU results stay bit-for-bit
    what they were). On an accelerator the compact arrays (often uint8) are copied there once
    and each batch is indexed and normalised on the device.
    """

    dataset: Dataset
    device: torch.device
    resident: dict[str, tuple[torch.Tensor, torch.Tensor]]
    norm: tuple[torch.Tensor, torch.Tensor] | None

    @classmethod
    def on(cls, dataset: Dataset, device: torch.device) -> DeviceData:
        if device.type == "cpu":
            return cls(dataset, device, {}, None)
        resident = {}
        for split in ("train", "test"):
            x, y = dataset.split(split)
            resident[split] = (torch.as_tensor(np.ascontiguousarray(x) if x.flags.writeable else np.array(x)).to(device),
                               torch.as_tensor(np.asarray(y, dtype=np.int64)).to(device))
        channels = len(dataset.mean)
        ndim = dataset.x_train.ndim
        shape = (1, channels) + (1,) * (ndim - 2) if channels > 1 and ndim >= 2 else (1,)
        mean = torch.tensor(dataset.mean, dtype=torch.float32, device=device).view(shape)
        std = torch.tensor(dataset.std, dtype=torch.float32, device=device).view(shape)
        return cls(dataset, device, resident, (mean, std))

    # the parts of the Dataset interface streams and trainers read
    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def y_train(self) -> np.ndarray:
        return self.dataset.y_train

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.dataset.input_shape

    def _index(self, idx: np.ndarray | slice | None) -> Any:
        if idx is None:
            return slice(None)
        if isinstance(idx, slice):
            return idx
        return torch.as_tensor(np.asarray(idx, dtype=np.int64), device=self.device)

    def tensor(self, split: str, idx: np.ndarray | slice | None = None) -> torch.Tensor:
        """Normalised float32 inputs ``x[idx]`` of ``split``, on :attr:`device`."""
        if self.norm is None:
            return self.dataset.tensor(split, idx)
        x = self.resident[split][0][self._index(idx)].to(torch.float32)
        if self.dataset.scale != 1.0:
            x = x * self.dataset.scale
        mean, std = self.norm
        return (x - mean) / std

    def labels(self, split: str, idx: np.ndarray | slice | None = None) -> torch.Tensor:
        if self.norm is None:
            return self.dataset.labels(split, idx)
        return self.resident[split][1][self._index(idx)]


_PLAIN_LOADERS = (torch.nn.Module._load_from_state_dict,
                  torch.nn.modules.batchnorm._NormBase._load_from_state_dict)  # copies, given every key
_ENTRIES: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, torch.Tensor] | None] = weakref.WeakKeyDictionary()


def state_entries(model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The tensors behind ``model.state_dict()`` (the parameters and buffers themselves), found
    once per model, when its state moves in and out by plain copies: no module loads or saves
    its state its own way or has state-dict hooks. ``None`` otherwise.

    ``load_state_dict`` and ``state_dict`` walk every module and look at its hooks on each
    call: a tenth of a small model's client round, once per client."""
    if model in _ENTRIES:
        return _ENTRIES[model]
    plain = not torch.__future__.get_swap_module_params_on_conversion() and all(
        type(m)._load_from_state_dict in _PLAIN_LOADERS and type(m).state_dict is torch.nn.Module.state_dict
        and type(m).load_state_dict is torch.nn.Module.load_state_dict
        and not (m._load_state_dict_pre_hooks or m._load_state_dict_post_hooks or m._state_dict_hooks
                 or m._state_dict_pre_hooks)
        for m in model.modules())
    entries = dict(model.state_dict(keep_vars=True)) if plain else None
    _ENTRIES[model] = entries
    return entries


def forget_entries(model: torch.nn.Module) -> None:
    """Look again at ``model`` (after ``.to()`` may have replaced its tensors)."""
    _ENTRIES.pop(model, None)


def load_weights(model: torch.nn.Module, state: dict[str, Any]) -> None:
    """``model.load_state_dict(state)``: the same copies, made directly when the model's
    state is plain (:func:`state_entries`) and ``state`` has exactly its keys and shapes."""
    own = state_entries(model)
    if own is None or own.keys() != state.keys() or not all(
            isinstance(v, torch.Tensor) and v.shape == own[k].shape for k, v in state.items()):
        model.load_state_dict(state)  # anything else: torch's own checks and errors
        return
    with torch.no_grad():
        for k, t in own.items():
            t.copy_(state[k])


def to_cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as CPU tensors (one copy from an accelerator; a clone on the CPU)."""
    own = state_entries(model)
    entries = own if own is not None else model.state_dict()
    return {k: v.detach().to("cpu", copy=True) for k, v in entries.items()}


__all__ = ["HEAP_KEEP_BYTES", "MALLOC_ENV", "DeviceData", "describe", "device_label", "forget_entries", "keep_heap",
           "load_weights", "one_arena", "resolve_device", "set_deterministic", "state_entries", "to_cpu_state",
           "torch_threads", "unit_device", "visible_devices"]
