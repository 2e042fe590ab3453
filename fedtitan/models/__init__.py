"""Model zoo with a registry by name."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

from fedtitan.errors import ConfigError, did_you_mean
from fedtitan.models import zoo
from fedtitan.models.base import BlockModel
from fedtitan.models.flops import count_forward_flops, param_bytes

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


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **options: object) -> BlockModel:
    """Build a model by short name for inputs of ``input_shape`` (channels first, no batch)."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}{did_you_mean(name, MODELS)}")
    return MODELS[name](tuple(input_shape), num_classes, **options)


@functools.lru_cache(maxsize=128)
def model_flops(name: str, input_shape: tuple[int, ...], num_classes: int, n_blocks: int | None = None) -> int:
    """Forward FLOPs per sample of model ``name`` (:func:`count_forward_flops`), cached per
    (model name, input shape, classes, blocks)."""
    return count_forward_flops(build_model(name, input_shape, num_classes), input_shape, n_blocks)


__all__ = ["MODELS", "BlockModel", "build_model", "count_forward_flops", "model_flops", "param_bytes", "takes_stem"]
