"""Optimisers, schedules and one weighted SGD step."""

from __future__ import annotations

import math
import sys
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import optimizer as _optim

from fedtitan.errors import ConfigError, did_you_mean

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine", "step")


_PLAIN_SGD: weakref.WeakKeyDictionary[nn.Module, torch.optim.SGD] = weakref.WeakKeyDictionary()


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """An optimiser over ``model``'s parameters that carries nothing from earlier use. Plain
    SGD (no momentum or weight decay) keeps no state, so one is made per model and handed out
    again with the new learning rate (a client process trains one model for many clients;
    building torch's optimiser costs about as much as a small model's step); the others are
    made fresh."""
    if name == "sgd" and momentum == 0 and weight_decay == 0:
        params = list(model.parameters())
        opt = _PLAIN_SGD.get(model)
        if opt is None or len(opt.param_groups) != 1 or opt.state or len(opt.param_groups[0]["params"]) != len(params) \
                or any(a is not b for a, b in zip(opt.param_groups[0]["params"], params, strict=True)):
            opt = _PLAIN_SGD[model] = plain_sgd(params, lr)
        set_lr(opt, lr)
        return opt
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}{did_you_mean(name, OPTIMIZERS)}")


def plain_sgd(params: list[nn.Parameter], lr: float) -> torch.optim.SGD:
    """``torch.optim.SGD(params, lr=lr)``, made without importing TorchDynamo when nothing has.

    torch wraps ``Optimizer.add_param_group`` in ``torch._disable_dynamo``, whose first call
    imports ``torch._dynamo`` (to tell the compiler to leave the function alone): 2.4 s of CPU,
    as long as ``import torch`` itself, in every process that makes its first optimiser
    (measured here, torch 2.13; a client process's first round paid it). Until something has
    imported ``torch._dynamo`` nothing in the process can be compiling, so telling the
    compiler to skip the function changes nothing: the wrapper is handed the plain function
    as its cached "disabled" one for this call only, and put back as it was. The SGD is
    torch's own, the same as one made the usual way (tested); any other torch, or a process
    that has imported TorchDynamo, makes it the usual way. A plain SGD step taken directly
    (:func:`weighted_step`) never needs TorchDynamo either; torch's own ``step`` imports it."""
    fn = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__", None)
    if "torch._dynamo" in sys.modules or fn is None or hasattr(fn, _DYNAMO_CACHE):
        return torch.optim.SGD(params, lr=lr)
    setattr(fn, _DYNAMO_CACHE, fn)
    try:
        return torch.optim.SGD(params, lr=lr)
    finally:
        if getattr(fn, _DYNAMO_CACHE, None) is fn:
            delattr(fn, _DYNAMO_CACHE)


# the attribute where torch._disable_dynamo's wrapper caches the disabled function (torch/_compile.py)
_DYNAMO_CACHE = "__dynamo_disable"


def lr_at(base_lr: float, schedule: str, step: int, total: int, decay: float = 0.95,
          every: int = 100) -> float:
    """Learning rate at global ``step`` of ``total``.

    ``step``: ``base * decay ** (step // every)`` (Titan: 0.95 per 100 rounds);
    ``cosine``: cosine annealing to 0 over ``total`` (the pruning paper); ``constant``.
    """
    if schedule == "constant":
        return base_lr
    if schedule == "step":
        return base_lr * decay ** (step // max(every, 1))
    if schedule == "cosine":
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    raise ConfigError(f"unknown lr schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}"
                      f"{did_you_mean(schedule, SCHEDULES)}")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


@dataclass(frozen=True)
class Proximal:
    """FedProx's proximal term ``mu/2 * ||w - w_global||^2`` over the trainable parameters
    (Li et al., 2020, eq. 2), anchored at the weights the round started from."""

    mu: float
    anchor: tuple[torch.Tensor, ...]

    @classmethod
    def at(cls, model: nn.Module, mu: float) -> Proximal | None:
        """The term anchored at ``model``'s current weights; ``None`` when ``mu`` is 0 (plain FedAvg)."""
        if mu < 0 or not math.isfinite(mu):
            raise ConfigError(f"proximal mu must be a finite number >= 0, got {mu}")
        if mu == 0:
            return None
        return cls(mu, tuple(p.detach().clone() for p in model.parameters()))

    def term(self, model: nn.Module) -> torch.Tensor:
        sq = [((p - a) ** 2).sum() for p, a in zip(model.parameters(), self.anchor, strict=True)]
        return 0.5 * self.mu * torch.stack(sq).sum()


_DIRECT: weakref.WeakKeyDictionary[torch.optim.Optimizer, bool] = weakref.WeakKeyDictionary()


def direct_sgd(opt: torch.optim.Optimizer) -> bool:
    """Whether ``opt.step()`` is exactly ``p.add_(p.grad, alpha=-lr)`` for each parameter
    with a gradient: torch's SGD without momentum, weight decay or ``maximize``, on CPU
    tensors (its single-tensor path), with a float learning rate and no step hooks.

    Such a step is taken directly by :func:`weighted_step` (the same tensor operation, so the
    same weights bit for bit): torch's ``step``/``zero_grad`` wrap it in profiler ranges,
    hook and grad-mode bookkeeping that cost a small model's step (~0.6 ms) about a tenth."""
    if type(opt) is not torch.optim.SGD:
        return False
    if opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks or _optim._global_optimizer_pre_hooks \
            or _optim._global_optimizer_post_hooks:
        return False
    plain = _DIRECT.get(opt)
    if plain is None:  # the groups' settings, looked at once
        plain = all(
            not g["momentum"] and not g["weight_decay"] and not g["maximize"] and not g["differentiable"]
            and not g["foreach"] and not g.get("fused") and all(p.device.type == "cpu" for p in g["params"])
            for g in opt.param_groups)
        _DIRECT[opt] = plain
    return plain and not any(isinstance(g["lr"], torch.Tensor) for g in opt.param_groups)


def weighted_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                  weights: torch.Tensor | None = None, prox: Proximal | None = None) -> tuple[float, torch.Tensor]:
    """One step on ``sum_i w_i * loss_i`` (mean when ``weights`` is None), plus FedProx's
    proximal term when ``prox`` is given.

    Returns the weighted data loss (without the proximal term) and the per-sample losses
    (detached, before the update).
    """
    if not model.training:  # set once, not every step (a recursive walk of the modules); eval() clears it
        model.train()
    direct = direct_sgd(opt)
    if direct:  # what zero_grad(set_to_none=True) does, without its profiler range
        for g in opt.param_groups:
            for p in g["params"]:
                p.grad = None
    else:
        opt.zero_grad(set_to_none=True)
    losses = F.cross_entropy(model(x), y, reduction="none")
    loss = losses.mean() if weights is None else (weights.to(losses.device, losses.dtype) * losses).sum()
    (loss if prox is None else loss + prox.term(model)).backward()
    if direct:  # torch's single-tensor SGD update, the same operation
        with torch.no_grad():
            for g in opt.param_groups:
                lr = g["lr"]
                for p in g["params"]:
                    if p.grad is not None:
                        p.add_(p.grad, alpha=-lr)
    else:
        opt.step()
    return float(loss.detach()), losses.detach()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> tuple[float, float]:
    """(mean loss, accuracy) over a labelled set."""
    model.eval()
    total_loss, correct = 0.0, 0
    for i in range(0, len(y), batch_size):
        z = model(x[i : i + batch_size])
        total_loss += float(F.cross_entropy(z, y[i : i + batch_size], reduction="sum"))
        correct += int((z.argmax(1) == y[i : i + batch_size]).sum())
    n = max(len(y), 1)
    return total_loss / n, correct / n
