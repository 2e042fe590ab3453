"""Run state as data: the pickle-free format, the client-state store, checkpoints, and a Flower
strategy's state."""

import errno
import io
import json
import logging
import math
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch

from fedtitan.checkpoint import CheckpointStore, ClientStateStore, StateError, pack, unpack
from fedtitan.config import RESULT_NEUTRAL, changed_settings, load_config
from fedtitan.fileio import DiskFullError


def test_pack_round_trips_what_client_state_holds():
    state = {
        "stream": {"epoch": 3, "offset": 40},
        "selector": {"count": {0: 5, 7: 2}, "sum_f": {0: np.arange(4.0)}, "sum_sq": {0: 1.5, 7: np.float64(2.5)},
                     "x": torch.randn(3, 2), "y": np.array([0, 7, 7]), "f": np.zeros((0, 4), np.float32), "none": None},
        "kept": np.array([4, 1, 9], dtype=np.int64), "rho": 0.5, "battery_j": math.nan, "big": 2**70,
        "flags": (True, "text", -math.inf), "bf16": torch.ones(2, dtype=torch.bfloat16), "list": [1, [2.0, "x"]],
    }
    back = unpack(pack(state))
    assert back["stream"] == {"epoch": 3, "offset": 40}
    sel = back["selector"]
    assert sel["count"] == {0: 5, 7: 2} and list(sel["count"]) == [0, 7]  # int keys stay ints
    np.testing.assert_array_equal(sel["sum_f"][0], np.arange(4.0))
    assert sel["sum_sq"][7] == 2.5 and isinstance(sel["sum_sq"][7], np.float64)
    assert isinstance(sel["x"], torch.Tensor) and torch.equal(sel["x"], state["selector"]["x"])
    assert sel["f"].shape == (0, 4) and sel["f"].dtype == np.float32 and sel["none"] is None
    assert back["kept"].dtype == np.int64 and back["kept"].tolist() == [4, 1, 9]
    assert math.isnan(back["battery_j"]) and back["big"] == 2**70 and back["rho"] == 0.5
    assert back["flags"] == (True, "text", -math.inf) and back["list"] == [1, [2.0, "x"]]
    assert back["bf16"].dtype == torch.bfloat16 and back["bf16"].float().tolist() == [1.0, 1.0]


def test_code_is_never_state():
    with pytest.raises(StateError, match="state .selector: a builtins.object cannot be saved as data"):
        pack({"selector": object()})
    with pytest.raises(StateError, match="object array"):
        pack({"a": np.array([object()])})
    # an npz holding a pickled object array (what np.save would write for objects) is refused
    buf = io.BytesIO()
    np.savez(buf, __tree__=np.frombuffer(b'{"format":1,"value":{"a":0}}', np.uint8), a0=np.array([{"x": 1}], object))
    with pytest.raises(StateError, match="truncated or corrupt"):
        unpack(buf.getvalue())
    with pytest.raises(StateError, match="truncated or corrupt"):
        unpack(pickle.dumps({"x": 1}))


def test_truncated_or_corrupt_state_is_refused_in_one_line():
    blob = pack({"x": np.arange(1000.0)})
    with pytest.raises(StateError, match="truncated or corrupt") as exc:
        unpack(blob[: len(blob) // 2], "client state p3")
    assert "\n" not in str(exc.value) and "client state p3" in str(exc.value)
    flipped = bytearray(blob)
    flipped[len(blob) // 3] ^= 0xFF  # inside the array's bytes: the zip CRC catches it
    with pytest.raises(StateError):
        unpack(bytes(flipped))


def test_client_store_keeps_the_newest_two_and_answers_before_a_round(tmp_path):
    store = ClientStateStore(tmp_path, keep=2)
    for r in (1, 3, 4, 6):
        store.put(5, r, {"round": r})
    assert store.rounds(5) == [4, 6]
    assert store.get(5) == (6, {"round": 6})
    # a server that resumes at round 5 (it checkpointed round 4) asks for what came before round 6... and 5
    assert store.get(5, before=6) == (4, {"round": 4})
    assert store.get(5, before=4) is None and store.get(9) is None
    store.put(5, 7, {"round": 7}, keep_rounds=[4])  # a checkpoint still refers to round 4
    assert store.rounds(5) == [4, 6, 7]
    store.put(5, 5, {"round": 5})  # round 5 redone after a resume: the cut-off future goes
    assert store.rounds(5) == [4, 5]


def test_a_corrupt_client_state_falls_back_to_the_older_one(tmp_path, caplog):
    store = ClientStateStore(tmp_path)
    store.put(0, 1, {"r": 1})
    store.put(0, 2, {"r": 2})
    store.path(0, 2).write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="fedtitan"):
        assert store.get(0) == (1, {"r": 1})
    assert "truncated or corrupt" in caplog.text


def test_checkpoints_keep_two_and_a_corrupt_one_is_refused_for_the_previous(tmp_path, caplog):
    store = CheckpointStore(tmp_path, keep=2)
    for r in (1, 2, 3):
        seconds, size = store.save(r, {"model": {"w": np.full(3, float(r))}})
        assert seconds >= 0 and size == store.path(r).stat().st_size
    assert store.rounds() == [2, 3]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    data = store.path(3).read_bytes()
    store.path(3).write_bytes(data[: len(data) - 40])  # truncated
    with caplog.at_level(logging.WARNING, logger="fedtitan"):
        ckpt = store.latest()
    assert ckpt is not None and ckpt.server_round == 2 and ckpt.state["model"]["w"].tolist() == [2.0] * 3
    assert "round-000003.npz is truncated or corrupt" in caplog.text and "using the previous checkpoint" in caplog.text
    assert store.latest(at_most=1) is None


def test_a_full_disk_while_checkpointing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save(1, {"model": {"w": np.ones(4)}})

    def full(fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full)
    with pytest.raises(DiskFullError, match="the disk is full: could not write .*round-000002.npz"):
        store.save(2, {"model": {"w": np.ones(4)}})
    monkeypatch.undo()
    assert store.rounds() == [1] and store.latest().server_round == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _flower_fedadam():
    from flwr.serverapp.strategy import FedAdam

    return FedAdam(fraction_train=1.0, min_available_nodes=1, min_train_nodes=1)


def test_flower_strategy_state_round_trips_through_a_checkpoint(tmp_path):
    from flwr.app import ArrayRecord
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideAdaptiveClipping, FedAvgM

    from strategies.state import load_strategy_state, strategy_state, unsaved

    adam = _flower_fedadam()
    adam.m_t = {"w": np.arange(3.0)}
    adam.v_t = {"w": np.ones(3) * 0.5}
    adam.current_arrays = {"w": np.zeros(3)}
    avgm = FedAvgM(server_momentum=0.9)
    avgm.momentum_vector = [np.arange(2.0)]
    avgm.current_arrays = ArrayRecord({"w": torch.ones(2)})
    dp = DifferentialPrivacyServerSideAdaptiveClipping(_flower_fedadam(), noise_multiplier=0.1, num_sampled_clients=2)
    dp.clipping_norm = 0.123
    dp.strategy.m_t = {"w": np.full(2, 7.0)}
    store = CheckpointStore(tmp_path)
    store.save(4, {"adam": strategy_state(adam), "avgm": strategy_state(avgm), "dp": strategy_state(dp)})
    saved = store.latest().state
    adam2, avgm2 = _flower_fedadam(), FedAvgM(server_momentum=0.9)
    dp2 = DifferentialPrivacyServerSideAdaptiveClipping(_flower_fedadam(), noise_multiplier=0.1, num_sampled_clients=2)
    load_strategy_state(adam2, saved["adam"])
    load_strategy_state(avgm2, saved["avgm"])
    load_strategy_state(dp2, saved["dp"])
    assert adam2.m_t["w"].tolist() == [0.0, 1.0, 2.0] and adam2.v_t["w"].tolist() == [0.5] * 3
    assert avgm2.momentum_vector[0].tolist() == [0.0, 1.0] and isinstance(avgm2.current_arrays, ArrayRecord)
    assert avgm2.current_arrays["w"].numpy().tolist() == [1.0, 1.0]
    assert dp2.clipping_norm == 0.123 and dp2.strategy.m_t["w"].tolist() == [7.0, 7.0]
    assert unsaved(adam) == [] and unsaved(dp) == []  # Flower's strategies keep only data


def test_a_plugin_strategy_uses_its_protocol_and_one_without_is_named():
    from strategies.state import load_strategy_state, strategy_state, unsaved

    class WithProtocol:
        def __init__(self):
            self.seen = 0

        def state_dict(self):
            return {"seen": self.seen}

        def load_state_dict(self, state):
            self.seen = state["seen"] + 100

    class Opaque:
        def __init__(self):
            self.history = io.StringIO()  # state fedtitan cannot save
            self.lr = 0.1

    p = WithProtocol()
    p.seen = 3
    q = WithProtocol()
    load_strategy_state(q, unpack(pack(strategy_state(p))))
    assert q.seen == 103
    assert unsaved(Opaque()) == ["Opaque.history"] and strategy_state(Opaque())["attributes"] == {"lr": 0.1}


def test_changed_settings_names_what_affects_results():
    base = load_config("quickstart", [])
    stored = base.to_json()
    assert changed_settings(stored, load_config("quickstart", ["tracking.report=false", "simulation.num_cpus=2",
                                                               "run.checkpoint_every=5"]), RESULT_NEUTRAL) == []
    diff = changed_settings(stored, load_config("quickstart", ["selection.method=rs", "run.rounds=40"]), RESULT_NEUTRAL)
    assert diff == ["run.rounds: 20 -> 40", "selection.method: 'titan' -> 'rs'"]
    # a config written before a setting existed counts as that setting's default
    old = base.model_dump()
    del old["run"]["checkpoint_every"]
    assert changed_settings(old, base) == []


def test_resume_checks_the_names_a_stored_config_gives(tmp_path):
    """A run folder whose config names something that no longer exists (a renamed model, a
    hand-edited config.json) is refused with the preflight's one line before any checkpoint."""
    import json

    from fedtitan.errors import ConfigError
    from strategies.checkpoints import resume_config

    stored = load_config("quickstart", []).model_dump(mode="json")
    stored["model"]["name"] = "cnnn"
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ConfigError, match="did you mean 'cnn'") as info:
        resume_config(tmp_path)
    assert "\n" not in str(info.value)


def test_npz_is_a_zip_of_plain_arrays():
    with zipfile.ZipFile(io.BytesIO(pack({"a": np.arange(3)}))) as z:
        assert sorted(z.namelist()) == ["__tree__.npy", "a0.npy"]


def test_client_states_reach_the_disk_before_the_checkpoint_that_refers_to_them(tmp_path, monkeypatch):
    """The server stores states without an fsync each; FileSyncer fsyncs them in the
    background and wait() returns only once every one of them is done; a full disk surfaces."""
    from fedtitan.checkpoint import FileSyncer

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    store, syncer = ClientStateStore(tmp_path, keep=1), FileSyncer()
    for pid in range(5):
        store.put(pid, 3, {"x": np.arange(pid + 1)}, fsync=False)
        syncer.add(store.path(pid, 3))
    assert not any(p.endswith(".tmp") for p in synced)  # no file was synced in the writing thread
    syncer.add(tmp_path / "gone.npz")  # removed before its turn: nothing to sync
    syncer.wait()
    assert sorted(synced) == sorted(str(store.path(pid, 3)) for pid in range(5))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    syncer.add(store.path(0, 3))
    with pytest.raises(DiskFullError, match="the disk is full: could not write .*r000003.npz"):
        syncer.wait()
    syncer.close()


def test_a_state_without_arrays_packs_as_checked_json_and_old_zips_still_read():
    """A stream position or battery level needs no zip: tagged JSON with a CRC-32 (a few us where
    the npz took ~100), read back the same; truncation or a flipped byte is a StateError; a
    state with arrays, and states written before, stay npz."""
    state = {"stream": {"epoch": 3, "offset": 0}, "selector": {}, "battery_j": math.nan, "big": 2**70,
             "flags": (True, "text", -math.inf), "ids": {0: 5, 7: 2}}
    blob = pack(state)
    assert blob.startswith(b"FTSTATE-JSON\n")
    back = unpack(blob)
    assert back["stream"] == {"epoch": 3, "offset": 0} and back["selector"] == {} and math.isnan(back["battery_j"])
    assert back["big"] == 2**70 and back["flags"] == (True, "text", -math.inf) and back["ids"] == {0: 5, 7: 2}
    for bad in (blob[:-1], blob[:15], blob[:-2] + b"9}", b"FTSTATE-JSON\n"):
        with pytest.raises(StateError, match="truncated or corrupt"):
            unpack(bad)
    assert zipfile.is_zipfile(io.BytesIO(pack({"a": np.arange(3)})))
    old = io.BytesIO()  # what pack wrote for this state before
    tree = {"format": 1, "value": {"d": [["stream", {"d": [["epoch", 3], ["offset", 0]]}]]}}
    np.savez(old, __tree__=np.frombuffer(json.dumps(tree).encode(), dtype=np.uint8))
    assert unpack(old.getvalue()) == {"stream": {"epoch": 3, "offset": 0}}


def test_a_state_file_holds_a_rounds_states_and_refuses_damage(tmp_path):
    from fedtitan.checkpoint import StateFile

    states = {3: pack({"r": 3}), 11: pack({"a": np.arange(4)}), 0: b""}
    path = tmp_path / "round-000004.states"
    index = StateFile.write(path, states)
    assert StateFile.index(path) == index and set(index) == {0, 3, 11}
    assert {pid: StateFile.read(path, index[pid]) for pid in index} == states
    assert unpack(StateFile.read(path, index[11]))["a"].tolist() == [0, 1, 2, 3]
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(StateError, match="truncated"):
        StateFile.read(path, index[11])
    path.write_bytes(data[:20])
    with pytest.raises(StateError, match="truncated or corrupt"):
        StateFile.index(path)
