"""Records made without Flower's per-entry checks equal Flower's own, and refuse what it refuses."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, MetricRecord

from clients.records import config_record, metric_record
from fedtitan.wire import ClientReport


def test_plain_values_give_the_record_flower_makes():
    metrics = {"loss": 0.25, "num-examples": 100, "accuracy": 0.5}
    config = {"round": 3, "config": '{"a": 1}', "start": 1.5, "flag": True, "blob": b"\x00\x01"}
    got_m, got_c = metric_record(metrics), config_record(config)
    assert type(got_m) is MetricRecord and got_m == MetricRecord(dict(metrics))
    assert list(got_m.keys()) == list(metrics) and type(got_m["num-examples"]) is int
    assert type(got_c) is ConfigRecord and got_c == ConfigRecord(dict(config))
    assert np.isnan(metric_record({"a": float("nan")})["a"])
    assert got_m.count_bytes() == MetricRecord(dict(metrics)).count_bytes()
    metrics["loss"] = 9.0  # the record keeps its own entries
    assert got_m["loss"] == 0.25


def test_other_values_take_flowers_path_and_its_checks():
    assert metric_record({"x": np.float64(0.5), "l": [1, 2]}) == MetricRecord({"x": np.float64(0.5), "l": [1, 2]})
    with pytest.raises(TypeError):
        metric_record({"x": "text"})
    with pytest.raises(TypeError):
        config_record({"x": {"nested": 1}})


def test_a_client_report_takes_the_direct_path(monkeypatch):
    """What a client sends is all plain scalars: no entry goes through Flower's checks."""
    numbers, strings = ClientReport(3, "rpi4").to_wire()

    def checked(*a, **k):
        raise AssertionError("took Flower's per-entry path")

    monkeypatch.setattr(MetricRecord, "__setitem__", checked)
    monkeypatch.setattr(ConfigRecord, "__setitem__", checked)
    metric_record(numbers), config_record(strings)
