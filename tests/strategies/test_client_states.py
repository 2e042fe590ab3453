"""The server's store of simulated clients' states: one file a round, kept while referred to."""

from __future__ import annotations

import numpy as np
import pytest

import strategies.client_states as client_states
from fedtitan.checkpoint import ClientStateStore, pack, unpack
from strategies.client_states import ClientStates, missing_state


@pytest.fixture(autouse=True)
def _replies_are_their_states(monkeypatch):
    monkeypatch.setattr(client_states, "state_of", lambda reply: reply)  # a reply here is its state's bytes


def _files(states: ClientStates) -> list[str]:
    return sorted(p.name for p in states.dir.iterdir() if not p.name.startswith("."))


def _state(pid: int, rnd: int) -> bytes:
    return pack({"pid": pid, "round": rnd})


def test_a_rounds_states_go_to_one_file_and_a_file_goes_once_nothing_refers_to_it(tmp_path):
    states = ClientStates(tmp_path / "s", num_clients=4, keep_checkpoints=2)
    states.keep(1, {0: _state(0, 1), 1: _state(1, 1), 2: None})  # partition 2 sent none (failed)
    assert _files(states) == ["round-000001.states"] and states.rounds.tolist() == [1, 1, -1, -1]
    states.keep(2, {0: _state(0, 2)})
    assert unpack(states.read(1, 1)) == {"pid": 1, "round": 1} and unpack(states.read(0, 2))["round"] == 2
    assert _files(states) == ["round-000001.states", "round-000002.states"]  # partition 1 still needs round 1
    states.keep(3, {1: _state(1, 3), 3: _state(3, 3)})
    assert _files(states) == ["round-000002.states", "round-000003.states"]  # round 1: nobody's newest
    assert states.rounds.tolist() == [2, 3, -1, 3] and states.io_bytes > 0


def test_checkpoints_on_disk_keep_the_files_they_refer_to(tmp_path):
    states = ClientStates(tmp_path / "s", num_clients=2, keep_checkpoints=2)
    states.keep(1, {0: _state(0, 1), 1: _state(1, 1)})
    states.sync()
    states.retain()  # checkpoint A refers to round 1
    states.keep(2, {0: _state(0, 2), 1: _state(1, 2)})
    assert "round-000001.states" in _files(states)
    states.retain()  # checkpoint B (round 2); A is still on disk
    states.keep(3, {0: _state(0, 3), 1: _state(1, 3)})
    assert _files(states) == ["round-000001.states", "round-000002.states", "round-000003.states"]
    states.retain()  # checkpoint C: A is gone, so is round 1
    assert _files(states) == ["round-000002.states", "round-000003.states"]


def test_restoring_a_checkpoint_drops_the_cut_off_future_and_reads_its_states(tmp_path):
    states = ClientStates(tmp_path / "s", num_clients=3, keep_checkpoints=2)
    states.keep(1, {0: _state(0, 1), 1: _state(1, 1), 2: _state(2, 1)})
    states.retain()
    at_checkpoint = states.rounds.copy()
    states.keep(2, {0: _state(0, 2)})  # the round the process was killed in
    again = ClientStates(tmp_path / "s", num_clients=3, keep_checkpoints=2)  # the resumed server
    again.restore(at_checkpoint, [])
    assert _files(again) == ["round-000001.states"]
    assert unpack(again.read(0, 1)) == {"pid": 0, "round": 1}
    assert missing_state(tmp_path / "s", at_checkpoint) is None
    assert missing_state(tmp_path / "s", np.array([1, 2, -1])) == (1, 2)  # round 2's file is gone
    (tmp_path / "s" / "round-000001.states").write_bytes(b"FTSTATES1\n")  # damaged
    assert missing_state(tmp_path / "s", at_checkpoint) == (0, 1)


def test_a_run_stored_a_file_a_client_still_resumes(tmp_path):
    """Before one file a round, the server kept DIR/pPID/rROUND.npz: read where no round file is."""
    ClientStateStore(tmp_path / "s").put(1, 4, {"old": 1})
    states = ClientStates(tmp_path / "s", num_clients=2, keep_checkpoints=2)
    states.restore(np.array([-1, 4]), [])
    assert unpack(states.read(1, 4)) == {"old": 1}
    assert missing_state(tmp_path / "s", np.array([-1, 4])) is None
    assert missing_state(tmp_path / "s", np.array([4, 4])) == (0, 4)
