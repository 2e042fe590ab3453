"""Experiment trackers: what each backend receives, read back the way each tool stores it."""

from __future__ import annotations

import glob
import json
import logging
import struct
import time
from pathlib import Path

import pandas as pd
import pytest

from fedtitan.config import load_config
from fedtitan.errors import ConfigError
from fedtitan.preflight import check_config
from fedtitan.results import tracking
from fedtitan.results.tracking import Tracker, flatten, make_tracker

CONFIG = {"run": {"seed": 3, "rounds": 2}, "selection": {"method": "titan", "options": {"k": 1}},
          "data": {"path": None}}
TIERS = pd.DataFrame({"device": ["jetson-nano", "rpi4"], "client_rounds": [3, 4], "time_s_mean": [1.5, 2.5],
                      "energy_j_mean": [5.0, 6.0], "energy_j_total": [15.0, 24.0]})
SUMMARY = {"rounds": 2, "final_accuracy": 0.25, "interrupted": False, "target_reached_round": None}


def _drive(tracker: Tracker, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "rounds.csv").write_text("server_round,accuracy\n1,0.125\n2,0.25\n")
    (run_dir / "summary.json").write_text(json.dumps(SUMMARY))
    tracker.start(run_dir, CONFIG, "run-a")
    for rnd in (1, 2):
        tracker.log_round(rnd, {"server_round": rnd, "accuracy": rnd / 8, "loss": float("nan"),
                                "updated": True, "aggregation_error": ""})
    tracker.finish(run_dir, SUMMARY, TIERS)
    assert tracker.alive


def test_flatten_config():
    flat = flatten(CONFIG)
    assert flat == {"run.seed": 3, "run.rounds": 2, "selection.method": "titan", "selection.options.k": 1,
                    "data.path": "null"}


def test_mlflow_default_store_beside_the_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _drive(make_tracker("mlflow", project="exp"), tmp_path / "sweep" / "run-a")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("exp")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_name == "run-a" and run.info.status == "FINISHED"
    assert run.data.params["run.seed"] == "3" and run.data.params["selection.method"] == "titan"
    history = client.get_metric_history(run.info.run_id, "accuracy")
    assert [(m.step, m.value) for m in history] == [(1, 0.125), (2, 0.25)]
    assert "loss" not in run.data.metrics  # NaN means not measured: not logged
    assert run.data.metrics["tier/rpi4/time_s_mean"] == 2.5
    assert run.data.metrics["final/final_accuracy"] == 0.25
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"rounds.csv", "summary.json", "tiers.json"} <= names
    assert (tmp_path / "sweep" / "mlartifacts").is_dir()


def test_mlflow_local_file_store(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    _drive(make_tracker("mlflow", uri=uri), tmp_path / "run-a")
    client = MlflowClient(tracking_uri=uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fedtitan").experiment_id])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "accuracy")] == [0.125, 0.25]


def test_mlflow_file_store_refused_is_one_line(tmp_path, monkeypatch):
    from mlflow import environment_variables as env

    if getattr(env, "MLFLOW_ALLOW_FILE_STORE", None) is None:
        pytest.skip("this MLflow accepts file stores")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError, match="MLFLOW_ALLOW_FILE_STORE=true") as info:
        check_config(load_config("quickstart", ["tracking.backend=mlflow", f"tracking.uri={tmp_path.as_uri()}"]))
    assert "\n" not in str(info.value)


def test_tensorboard_event_files_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run-a"
    _drive(make_tracker("tensorboard"), run_dir)
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("round/accuracy")] == [(1, 0.125), (2, 0.25)]
    assert "round/loss" not in acc.Tags()["scalars"]
    assert acc.Scalars("tier/jetson-nano/energy_j_total")[0].value == 15.0
    texts = {tag: acc.Tensors(tag)[0].tensor_proto.string_val[0].decode() for tag in acc.Tags()["tensors"]
             if tag.endswith("text_summary")}
    assert any("selection.method | titan" in t for t in texts.values())
    assert any("rpi4" in t for t in texts.values())


def _wandb_records(path: str) -> list:
    """Records of an offline ``run-*.wandb`` file (LevelDB log blocks of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST fragment
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_wandb_offline_run_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run-a"
    _drive(make_tracker("wandb", project="proj", mode="offline"), run_dir)
    (path,) = glob.glob(str(run_dir / "wandb" / "offline-run-*" / "run-*.wandb"))
    # run.finish() can return before wandb-core's writer flushes the transaction log (CI saw a
    # 7-byte header-only file; here it fills within about 50 ms), so wait for the exit record.
    deadline = time.monotonic() + 30
    while True:
        try:
            records = _wandb_records(path)
        except Exception:  # a record caught half-written
            records = []
        kinds = [r.WhichOneof("record_type") for r in records]
        if (kinds and kinds[-1] == "exit") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert run.display_name == "run-a" and run.project == "proj"
    assert config["run"]["seed"] == 3 and config["selection"]["method"] == "titan"
    history = [{i.key or "/".join(i.nested_key): i.value_json for i in r.history.item} for r in records
               if r.WhichOneof("record_type") == "history"]
    assert [(h["_step"], float(h["accuracy"])) for h in history if "accuracy" in h] == [("1", 0.125), ("2", 0.25)]
    summary = {i.key or "/".join(i.nested_key): i.value_json for r in records
               if r.WhichOneof("record_type") == "summary" for i in r.summary.update}
    assert float(summary["tier/rpi4/energy_j_mean"]) == 6.0
    assert "artifact" in kinds and kinds[-1] == "exit"


def test_missing_extra_is_one_line(monkeypatch):
    real = tracking.importlib.util.find_spec
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ConfigError, match=r"pip install 'fedtitan\[wandb\]'") as info:
        check_config(load_config("quickstart", ["tracking.backend=wandb"]))
    assert "\n" not in str(info.value)


def test_a_failing_tracker_never_stops_the_run(tmp_path, caplog):
    class Broken(Tracker):
        name = "broken"
        calls = 0

        def _log_round(self, step, metrics):
            Broken.calls += 1
            raise ConnectionError("tracking server went away")

    t = Broken()
    with caplog.at_level(logging.WARNING):
        t.start(tmp_path, CONFIG, "x")
        t.log_round(1, {"accuracy": 0.1})
        t.log_round(2, {"accuracy": 0.2})
        t.finish(tmp_path, SUMMARY, TIERS)
    assert not t.alive and Broken.calls == 1  # switched off after the first failure
    assert "tracking server went away" in caplog.text and "round 1" in caplog.text


def test_a_resumed_tensorboard_writer_waits_for_its_file_to_sort_last(tmp_path):
    import time

    from fedtitan.results.tracking import _after_existing_events

    now = int(time.time())
    (tmp_path / f"events.out.tfevents.{now}.host.99999.0").write_bytes(b"")
    (tmp_path / "events.out.tfevents.notatime.host").write_bytes(b"")
    _after_existing_events(tmp_path)
    assert int(time.time()) > now  # a file opened now carries a later second, so sorts after
    t0 = time.monotonic()
    _after_existing_events(tmp_path / "empty")  # nothing there: no wait
    assert time.monotonic() - t0 < 0.1
