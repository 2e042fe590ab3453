"""Any ``nn.Module`` as a fedtitan model: its head, embedding and first block found once.

Titan needs more of a model than ``forward``: the coarse filter reads the first block's
output, C-IS the penultimate embedding ``h`` and a linear head ``z = W h + b`` (for the
closed-form last-layer gradients), and the cost model the FLOPs of both. A model from the
zoo is built as ``head(neck(blocks(x)))`` (:class:`~fedtitan.models.base.BlockModel`); any
other module is wrapped in :class:`AdaptedModel`, which finds those parts by running the
module once on a zero batch with forward hooks:

* the **head** is the last ``nn.Linear`` *called* with ``num_classes`` outputs (or the
  submodule ``model.head_module`` names), and its output must be the model's output;
* the **embedding** is the head's input (or the output of ``model.embedding_module``, which
  the head must then map to the model's output), one vector per sample;
* the **blocks** are the top-level children in the order the forward calls them, leaving
  out the one holding the head (when that is the only one, as in an ``nn.Sequential`` of
  everything, the children of that one, and so on down); block 1 is the coarse filter's
  (``model.first_block_module`` names another, and is then the only block).

A failure is one line naming what is missing and the key that fixes it. The wrapped module
is kept as ``net``, so its parameters are named ``net.<its own names>`` in the weights that
travel and in checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from fedtitan.errors import ConfigError
from fedtitan.models.base import BlockModel


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the wanted tensor is seen."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.value = value


def _tensor(out: Any) -> torch.Tensor | None:
    """A module's output as one tensor: the tensor itself, the first of a tuple or list (an
    ``nn.GRU`` returns ``(output, h_n)``), a model output's ``logits``, or ``None``."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, tuple | list) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    if isinstance(out, Mapping):
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    return None


@contextmanager
def _hook(module: nn.Module, fn: Callable[..., Any], pre: bool = False) -> Iterator[None]:
    handle = module.register_forward_pre_hook(fn) if pre else module.register_forward_hook(fn)
    try:
        yield
    finally:
        handle.remove()


class AdaptedModel(BlockModel):
    """A foreign ``nn.Module`` with the parts :class:`BlockModel` promises (``features``,
    ``embed``, ``head``, ``num_blocks``), found by :func:`adapt`."""

    def __init__(self, net: nn.Module, head: str, embedding: str | None, blocks: list[str]) -> None:
        nn.Module.__init__(self)  # not BlockModel's: the parts live inside ``net``
        self.net = net
        self.head_name, self.embedding_name, self.block_names = head, embedding, list(blocks)

    @property
    def head(self) -> nn.Linear:  # type: ignore[override]
        return self.net.get_submodule(self.head_name)  # type: ignore[return-value]

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        return nn.ModuleList(self.net.get_submodule(n) for n in self.block_names)

    @property
    def num_blocks(self) -> int:
        return len(self.block_names)

    def _until(self, module: nn.Module, x: torch.Tensor, pre: bool = False) -> torch.Tensor:
        """Run ``net`` on ``x`` until ``module`` runs; its output (its input with ``pre``)."""
        def grab(_m: nn.Module, inputs: Any, out: Any = None) -> None:
            t = _tensor(inputs if pre else out)
            if t is None:
                raise ConfigError(f"model: submodule {type(_m).__name__} gives no tensor "
                                  f"({type(out).__name__}); name another in model.first_block_module")
            raise _Stop(t)

        with _hook(module, grab, pre):
            try:
                self.net(x)
            except _Stop as stop:
                return stop.value
        raise ConfigError(f"model: {type(module).__name__} did not run in the model's forward pass")

    def features(self, x: torch.Tensor, n_blocks: int = 1) -> torch.Tensor:
        if not 1 <= n_blocks <= self.num_blocks:
            raise ValueError(f"n_blocks must be in 1..{self.num_blocks}, got {n_blocks}")
        return self._until(self.net.get_submodule(self.block_names[n_blocks - 1]), x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.embedding_name is not None:
            return self._until(self.net.get_submodule(self.embedding_name), x)
        return self._until(self.head, x, pre=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        t = _tensor(out)
        if t is None:
            raise ConfigError(f"model: the forward pass returns {type(out).__name__}, not the logits tensor")
        return t


def _submodule(net: nn.Module, name: str, key: str) -> nn.Module:
    try:
        return net.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in net.named_modules() if n]
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ConfigError(f"config {key}: the model has no submodule {name!r}; its submodules: {shown}") from None


def _calls(net: nn.Module, x: torch.Tensor) -> tuple[list[tuple[str, nn.Module, Any, Any]], torch.Tensor]:
    """Every submodule call of one forward pass, in order: (name, module, inputs, output), and
    the model's output."""
    seen: list[tuple[str, nn.Module, Any, Any]] = []
    handles = []
    for name, m in net.named_modules():
        if name:
            handles.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: seen.append((name, mod, inp, out))))
    try:
        out = _tensor(net(x))
    finally:
        for h in handles:
            h.remove()
    if out is None:
        raise ConfigError("model: its forward pass returns no tensor; it must return the logits, (N, classes)")
    return seen, out


def adapt(net: nn.Module, input_shape: tuple[int, ...], num_classes: int, *, head: str | None = None,
          embedding: str | None = None, first_block: str | None = None, source: str = "the model") -> BlockModel:
    """``net`` as a :class:`BlockModel`: itself when it is one (and no part is named), else an
    :class:`AdaptedModel` whose parts are found (or named) and checked on a zero batch."""
    if not isinstance(net, nn.Module):
        raise ConfigError(f"config model.name: {source} returned {type(net).__name__}, not a torch.nn.Module")
    if isinstance(net, BlockModel) and head is embedding is first_block is None:
        return net
    was = net.training
    net.eval()
    x = torch.zeros((2, *input_shape))
    try:
        with torch.no_grad():
            try:
                calls, out = _calls(net, x)
            except ConfigError:
                raise
            except Exception as exc:
                raise ConfigError(f"config model.name: {source} fails on a batch of shape {tuple(x.shape)} "
                                  f"(data.dataset's samples): {type(exc).__name__}: {exc}") from None
            if out.shape != (2, num_classes):
                raise ConfigError(f"config model.name: {source} returns shape {tuple(out.shape[1:])} a sample; "
                                  f"the dataset has {num_classes} classes, so it must return ({num_classes},)")
            head_name = _find_head(net, calls, num_classes, head, source)
            head_mod = net.get_submodule(head_name)
            h_in = next(_tensor(i) for n, _m, i, _o in reversed(calls) if n == head_name)
            if embedding is not None:
                emb_mod = _submodule(net, embedding, "model.embedding_module")
                got = [o for n, _m, _i, o in calls if n == embedding]
                if not got:
                    raise ConfigError(f"config model.embedding_module: {embedding!r} does not run in the forward pass")
                h = _tensor(got[-1])
                if h is None or h.ndim != 2 or h.shape[1] != head_mod.in_features:
                    raise ConfigError(f"config model.embedding_module: {embedding!r} ({type(emb_mod).__name__}) "
                                      f"must give (N, {head_mod.in_features}) vectors, the head's input; it gives "
                                      f"{None if h is None else tuple(h.shape)}")
            else:
                h = h_in
                if h is None or h.ndim != 2:
                    raise ConfigError(f"config model.head_module: the head {head_name!r} is applied to a tensor of "
                                      f"shape {None if h is None else tuple(h.shape)}, not one vector a sample; name "
                                      f"the module giving the embedding in model.embedding_module")
            if not torch.allclose(head_mod(h), out, rtol=1e-4, atol=1e-5):
                raise ConfigError(f"config model.head_module: the model's output is not head({head_name!r}) of its "
                                  f"embedding (something follows the head, or the embedding is not its input); "
                                  f"C-IS needs logits = head(embedding): name the parts in model.head_module / "
                                  f"model.embedding_module")
            blocks = _find_blocks(net, calls, head_name, first_block)
    finally:
        net.train(was)
    return AdaptedModel(net, head_name, embedding, blocks)


def _find_head(net: nn.Module, calls: list[tuple[str, nn.Module, Any, Any]], num_classes: int, head: str | None,
               source: str) -> str:
    if head is not None:
        mod = _submodule(net, head, "model.head_module")
        if not isinstance(mod, nn.Linear) or mod.out_features != num_classes:
            raise ConfigError(f"config model.head_module: {head!r} is {_describe(mod)}; the head must be an "
                              f"nn.Linear with {num_classes} outputs (the dataset's classes)")
        if not any(n == head for n, *_ in calls):
            raise ConfigError(f"config model.head_module: {head!r} does not run in the forward pass")
        return head
    linear = [n for n, m, *_ in calls if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not linear:
        raise ConfigError(f"config model.head_module: {source} calls no nn.Linear with {num_classes} outputs (the "
                          f"dataset's classes); Titan's last-layer gradients need a linear head: end the model with "
                          f"one and name it in model.head_module")
    return linear[-1]


def _find_blocks(net: nn.Module, calls: list[tuple[str, nn.Module, Any, Any]], head: str,
                 first_block: str | None) -> list[str]:
    if first_block is not None:
        _submodule(net, first_block, "model.first_block_module")
        outs = [o for n, _m, _i, o in calls if n == first_block]
        if not outs:
            raise ConfigError(f"config model.first_block_module: {first_block!r} does not run in the forward pass")
        if _tensor(outs[0]) is None:
            raise ConfigError(f"config model.first_block_module: {first_block!r} gives "
                              f"{type(outs[0]).__name__}, not a tensor")
        return [first_block]
    prefix = ""  # the blocks are the children of the outermost module with one not holding the head
    while True:
        order: list[str] = []
        for name, _m, _i, out in calls:
            if not name.startswith(prefix) or "." in name[len(prefix):] or name in order:
                continue
            if head == name or head.startswith(name + ".") or _tensor(out) is None:
                continue
            order.append(name)
        holder = head[len(prefix):].split(".")[0]
        if order or "." not in head[len(prefix):]:
            break
        prefix += holder + "."
    if not order:
        raise ConfigError("config model.first_block_module: the model has no submodule before its head that gives "
                          "a tensor; name the coarse filter's block in model.first_block_module")
    return order


def _describe(mod: nn.Module) -> str:
    if isinstance(mod, nn.Linear):
        return f"an nn.Linear with {mod.out_features} outputs"
    return f"a {type(mod).__name__}"


__all__ = ["AdaptedModel", "adapt"]
