"""The wire: every key once, and the client's report with one translation to and from Flower's
records. The report must keep what clients.csv had (same keys, order and values), and say the
device by name (a fleet.profiles device or a board's --device had an empty ``device`` cell)."""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedtitan import wire
from fedtitan.status import Status
from fedtitan.wire import ClientReport

GOLDEN = Path(__file__).resolve().parent / "golden"
# the train reply's MetricRecord before the wire module (training/client.py's _base_metrics), in
# order, less the catalog index "device_id" (the device now travels by name)
METRICS_BEFORE = (
    "num-examples", "partition_id", "train_loss", "sim_time_s", "sim_energy_j", "sim_train_s",
    "sim_select_s", "sim_comm_s", "sim_train_j", "sim_select_j", "sim_comm_j", "sim_idle_j", "train_wall_ms",
    "select_wall_ms", "sync_wall_ms", "steps_wall_ms", "train_on_gpu", "select_on_gpu", "streamed", "selected",
    "steps", "rho", "proximal_mu", "fault_scaled", "available", "speed_factor", "select_share",
    "bandwidth_factor", "buffer_size", "status", "measured", "wall_s", "energy_j", "energy_available", "battery_j",
)
REPORT = ClientReport(
    partition_id=7, device="pixel-lab", status=Status.REDUCED, num_examples=30, train_loss=1.25, sim_time_s=2.5,
    sim_energy_j=3.5, sim_train_s=1.0, sim_select_s=0.5, sim_comm_s=0.25, sim_train_j=1.5, sim_select_j=0.75,
    sim_comm_j=0.125, sim_idle_j=0.0625, train_wall_ms=11.0, select_wall_ms=12.0, sync_wall_ms=13.0,
    steps_wall_ms=14.0, train_on_gpu=True, select_on_gpu=False, streamed=300, selected=30, steps=3, rho=0.5,
    proximal_mu=0.1, fault_scaled=True, available=True, speed_factor=0.5, select_share=0.75, bandwidth_factor=2.0,
    buffer_size=20, measured=True, wall_s=0.3, energy_j=4.5, energy_available=True, battery_j=12.0,
)


def test_the_report_goes_to_the_wire_and_back_unchanged():
    numbers, strings = REPORT.to_wire()
    assert ClientReport.from_wire(numbers, strings) == REPORT
    assert strings == {"device": "pixel-lab"}  # by name: Flower's MetricRecords hold numbers only
    assert numbers["num-examples"] == 30.0 and numbers["status"] == Status.REDUCED.code
    assert numbers["train_on_gpu"] == 1.0 and numbers["select_on_gpu"] == 0.0
    assert all(type(v) is float for v in numbers.values())


def test_no_battery_and_a_missing_energy_reading_survive_the_trip():
    r = ClientReport(partition_id=0, device="rpi4", energy_j=math.nan, energy_available=False)
    numbers, strings = r.to_wire()
    assert numbers["battery_j"] == -1.0 and math.isnan(numbers["energy_j"])
    back = ClientReport.from_wire(numbers, strings)
    assert back.battery_j is None and not back.energy_available and math.isnan(back.energy_j)
    assert ClientReport.from_wire(*ClientReport(partition_id=0, device="rpi4", battery_j=0.0).to_wire()).battery_j == 0.0


def test_from_wire_reads_flower_records_as_a_reply_carries_them():
    numbers, strings = REPORT.to_wire()
    assert ClientReport.from_wire(MetricRecord(numbers), ConfigRecord(strings)) == REPORT


def test_the_report_keeps_the_metric_keys_and_order_clients_csv_had():
    numbers, _ = ClientReport(partition_id=1, device="rpi4").to_wire()
    assert tuple(numbers) == METRICS_BEFORE == wire.METRIC_KEYS
    # clients.csv: the server's columns, then every metric ("num-examples" as num_examples)
    header = (GOLDEN / "titan" / "clients.csv").read_text().splitlines()[0].split(",")
    wall = {"train_wall_ms", "select_wall_ms", "sync_wall_ms", "steps_wall_ms", "wall_s"}  # not in the golden files
    from_metrics = {k.replace("num-examples", "num_examples") for k in numbers} - wall
    server_own = {"server_round", "node_id", "device", "included", "client_accuracy", "error"}
    assert set(header) == from_metrics | server_own


def test_a_reply_without_the_report_record_names_no_device():
    numbers, _ = ClientReport(partition_id=1, device="orin-nano").to_wire()
    assert "device_id" not in numbers and ClientReport.from_wire(numbers).device == ""


def test_a_count_that_is_not_whole_is_refused():
    numbers, strings = REPORT.to_wire()
    with pytest.raises(ValueError, match="count"):
        ClientReport.from_wire({**numbers, "steps": 2.5}, strings)


def test_every_key_is_spelled_once():
    records = (wire.CONFIG_RECORD, wire.ARRAYS_RECORD, wire.METRICS_RECORD, wire.STATE_RECORD, wire.ARRAYS_KEY,
               wire.REPORT_RECORD, wire.ERROR_RECORD)
    config = (*wire.OWN_CONFIG_KEYS, wire.PROXIMAL_MU_KEY, wire.CLIPPING_NORM_KEY)
    node = (wire.NODE_PARTITION, wire.NODE_NUM_PARTITIONS, wire.NODE_DEVICE, wire.NODE_METER, wire.NODE_STATE_DIR)
    reply_fields = (*wire.METRIC_KEYS, wire.NUM_PARTITIONS, wire.LOSS, wire.ACCURACY)
    for group in (records, config, node, reply_fields, (wire.STATE_NPZ, wire.STATE_ROUND)):
        assert len(set(group)) == len(group), group
    own = {wire.RUN_CONFIG_KEY, wire.SERVER_ROUND_KEY, wire.RUN_TOKEN_KEY, wire.ROUND_START_KEY, wire.PARTITION_KEY,
           wire.STATE_KEY, wire.STATE_ROUND_KEY, wire.ARRAYS_KEY, wire.BUNDLE_KEY, wire.SCHEDULE_ROUND_KEY}
    assert set(wire.OWN_CONFIG_KEYS) == own  # every key fedtitan puts in a train config is its own
    # every field of the report travels under one key (its strings under their own)
    report_fields = {f.name for f in fields(ClientReport)}
    assert report_fields - {"device", "extra"} == {k.replace("num-examples", "num_examples") for k in wire.METRIC_KEYS}
    assert not [k for k in wire.METRIC_KEYS if k.startswith(wire.INFO_PREFIX)]  # the selector's names stay apart
    # a bundle member's own entries cannot be taken for a record or key of a lone client's message
    assert not {wire.member_key(0, k) for k in (*records, *config)} & {*records, *config}


def test_the_selectors_diagnostics_travel_after_the_fixed_keys_under_their_prefix():
    report = ClientReport(3, "rpi4", num_examples=20, extra={"buffer": 30.0, "coarse_forwards": 12.5})
    numbers, strings = report.to_wire()
    assert tuple(numbers) == (*wire.METRIC_KEYS, "info_buffer", "info_coarse_forwards")
    assert numbers["info_coarse_forwards"] == 12.5
    assert ClientReport.from_wire(numbers, strings) == report
    assert ClientReport.from_wire(ClientReport(3, "rpi4").to_wire()[0]).extra == {}


@pytest.fixture
def _task_identity():
    """Flower stamps messages with the running task's identity; outside a run, give it one."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.mark.usefixtures("_task_identity")
def test_the_client_app_reply_carries_the_report_numbers_as_before_and_the_device_by_name(tmp_path):
    from clients.client_app import _train
    from fedtitan.config import load_config
    from fedtitan.training.setup import setup_for

    profiles = tmp_path / "p.toml"
    profiles.write_text('[devices.pixel-lab]\nbase = "jetson-nano-10w"\n')
    cfg = load_config("quickstart", ["data.num_clients=2", "selection.local_steps=1", f"fleet.profiles={profiles}",
                                     "fleet.devices=pixel-lab"])
    g = {k: v.detach().cpu().clone() for k, v in setup_for(cfg).model.state_dict().items()}
    msg = Message(RecordDict({wire.ARRAYS_RECORD: ArrayRecord(g), wire.CONFIG_RECORD: ConfigRecord(
        {wire.RUN_CONFIG_KEY: cfg.to_json(), wire.SERVER_ROUND_KEY: 1, wire.PARTITION_KEY: 1})}),
        dst_node_id=5, message_type="train")
    context = Context(run_id=1, node_id=5, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                      run_config={})
    reply = _train(msg, context)
    assert len(reply.content.array_records) == 1 and len(reply.content.metric_records) == 1  # Flower aggregates it
    metrics = reply.content[wire.METRICS_RECORD]
    assert tuple(metrics)[:len(METRICS_BEFORE)] == METRICS_BEFORE  # then Titan's info_keys
    assert tuple(metrics)[len(METRICS_BEFORE):] == ("info_buffer", "info_coarse_forwards")
    report = ClientReport.from_wire(metrics, reply.content[wire.REPORT_RECORD])
    assert report.device == "pixel-lab" and report.partition_id == 1 and report.status == Status.OK
    assert set(reply.content.config_records) == {wire.REPORT_RECORD, wire.STATE_RECORD}
