"""Flower's MetricRecord and ConfigRecord made without their per-entry checks where the values
are plain scalars.

Flower 1.41-1.42 checks every entry a record is given; each check builds two
``typing.Callable[...]`` aliases, about 8 us an entry. A client's reply carries some 40
metrics and each train message about ten config entries, so a small model's client round paid
about 0.4 ms for them. Where every key is a ``str`` and every value a plain ``int`` or
``float`` (metrics) or one of those, ``bool``, ``str`` or ``bytes`` (config), which those
checks accept, the entries go in directly; anything else takes Flower's own path and its
checks. The records are the same either way (tests/clients/test_records.py). :func:`record_of`
looks one record up without the typed views Flower's RecordDict rebuilds on each access.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

_METRIC_TYPES = (int, float)
_CONFIG_TYPES = (int, float, bool, str, bytes)


def _fill(record: Any, values: Mapping[str, Any], types: tuple[type, ...]) -> bool:
    data = record.__dict__.get("_data")
    if not isinstance(data, dict) or not all(type(k) is str and type(v) in types for k, v in values.items()):
        return False
    data.update(values)
    return True


def metric_record(values: Mapping[str, Any]) -> MetricRecord:
    """``MetricRecord(dict(values))``."""
    rec = MetricRecord()
    return rec if _fill(rec, values, _METRIC_TYPES) else MetricRecord(dict(values))


def config_record(values: Mapping[str, Any]) -> ConfigRecord:
    """``ConfigRecord(dict(values))``."""
    rec = ConfigRecord()
    return rec if _fill(rec, values, _CONFIG_TYPES) else ConfigRecord(dict(values))


R = TypeVar("R", ArrayRecord, ConfigRecord, MetricRecord)


def record_of(content: RecordDict, key: str, kind: type[R]) -> R | None:
    """``content``'s record ``key`` if it is a ``kind``, else None: what
    ``content.config_records.get(key)`` (``array_records``, ``metric_records``) answers, without
    the typed view Flower builds over *every* record, entry by entry with its checks, on each
    such access (a bundle's reply holds four records a client: a lookup per client cost
    O(clients))."""
    value = content.get(key)
    return value if isinstance(value, kind) else None


__all__ = ["config_record", "metric_record", "record_of"]
