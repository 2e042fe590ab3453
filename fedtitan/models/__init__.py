"""Model zoo with a registry by name, and plugin models (``package.module:factory`` or a
``fedtitan.models`` entry point) adapted to the zoo's shape."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

from fedtitan.errors import ConfigError
from fedtitan.models import zoo
from fedtitan.models.adapt import AdaptedModel, adapt
from fedtitan.models.base import BlockModel
from fedtitan.models.flops import count_forward_flops, param_bytes
from fedtitan.plugins import call_with_accepted, check_options, resolve

MODELS: dict[str, Callable[..., BlockModel]] = {
    "mlp": zoo.mlp,
    "cnn": zoo.cnn,
    "mobilenet_v1": zoo.mobilenet_v1,
    "mobilenet_v2": zoo.mobilenet_v2,
    "resnet18": zoo.resnet18,
    "resnet34": zoo.resnet34,
    "resnet50": zoo.resnet50,
    "alexnet": zoo.alexnet,
    "squeezenet": zoo.squeezenet,
    "har_cnn": zoo.har_cnn,
    "speech_cnn": zoo.speech_cnn,
}


def takes_stem(name: str) -> bool:
    """Whether model ``name`` has a choice of first block (its ``stem`` option: auto, cifar, imagenet)."""
    return name in MODELS and "stem" in inspect.signature(MODELS[name]).parameters


MODEL_GROUP = "fedtitan.models"


def model_factory(name: str) -> Callable[..., Any]:
    """What ``model.name`` stands for: a zoo name, an installed ``fedtitan.models`` entry point,
    or ``package.module:factory`` (one line when none resolves)."""
    factory = resolve(name, key="model.name", group=MODEL_GROUP, builtins=MODELS, what="factory")
    if not callable(factory):
        raise ConfigError(f"config model.name: {name!r} is a {type(factory).__name__}, not a callable returning "
                          f"an nn.Module")
    return factory


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, *, head: str | None = None,
                embedding: str | None = None, first_block: str | None = None, **options: object) -> BlockModel:
    """Build a model for inputs of ``input_shape`` (channels first, no batch): a zoo model by
    short name, or a plugin's module adapted to :class:`BlockModel` (:func:`adapt`; ``head``,
    ``embedding`` and ``first_block`` name its parts where the defaults do not find them)."""
    if name in MODELS and head is embedding is first_block is None:
        return MODELS[name](tuple(input_shape), num_classes, **options)
    factory = model_factory(name)
    if name in MODELS:
        net = factory(tuple(input_shape), num_classes, **options)
    else:
        try:
            net = call_with_accepted(factory, {"input_shape": tuple(input_shape), "num_classes": num_classes},
                                     options)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"config model.name: {name!r} failed to build a model for inputs {tuple(input_shape)} "
                              f"and {num_classes} classes: {type(exc).__name__}: {exc}") from None
    return adapt(net, tuple(input_shape), num_classes, head=head, embedding=embedding, first_block=first_block,
                 source=repr(name))


def check_model_options(name: str, options: Mapping[str, Any]) -> None:
    """Every ``model.options`` key must be a keyword the model's factory takes."""
    reserved = {"input_shape": "it is the dataset's sample shape", "num_classes": "it is the dataset's class count"}
    check_options(model_factory(name), options, "model.options", name, reserved)


@functools.lru_cache(maxsize=128)
def model_flops(name: str, input_shape: tuple[int, ...], num_classes: int, n_blocks: int | None = None) -> int:
    """Forward FLOPs per sample of model ``name`` (:func:`count_forward_flops`), cached per
    (model name, input shape, classes, blocks)."""
    return count_forward_flops(build_model(name, input_shape, num_classes), input_shape, n_blocks)


__all__ = ["MODELS", "MODEL_GROUP", "AdaptedModel", "BlockModel", "adapt", "check_model_options",
           "model_factory", "build_model", "count_forward_flops", "model_flops", "param_bytes", "takes_stem"]
