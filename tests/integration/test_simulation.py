"""Real Flower + Ray runs: 3 clients x 2 rounds."""

import json

import pandas as pd
import pytest

from fedtitan.config import load_config
from simulations.cli import main as cli_main
from simulations.run import run

pytestmark = pytest.mark.slow

BASE = ["data.num_clients=3", "run.rounds=2", "server.fraction=1.0", "data.min_samples=20",
        "fleet.mix=jetson-nano-10w:0.34,orin-nano:0.33,rpi4:0.33", "selection.local_steps=2"]


def _check_outputs(out):
    rounds = pd.read_csv(out / "rounds.csv")
    clients = pd.read_csv(out / "clients.csv")
    for col in ("server_round", "accuracy", "loss", "virtual_time_s", "energy_j", "clients_ok", "clients_failed"):
        assert col in rounds.columns
    for col in ("server_round", "partition_id", "device", "sim_time_s", "sim_energy_j", "num_examples", "status"):
        assert col in clients.columns
    assert rounds["server_round"].tolist() == [1, 2]
    assert rounds["virtual_time_s"].is_monotonic_increasing and rounds["virtual_time_s"].diff().dropna().gt(0).all()
    per_round = clients.groupby("server_round")["sim_energy_j"].sum()
    assert per_round.values == pytest.approx(rounds["energy_j"].values)
    assert sorted(clients[clients.server_round == 1].partition_id) == [0, 1, 2]
    assert json.loads((out / "config.json").read_text())["data"]["num_clients"] == 3
    part = pd.read_csv(out / "partition.csv", index_col=0)  # the clients' label histogram
    assert len(part) == 3 and part["n"].sum() == part.filter(like="class_").to_numpy().sum()
    meta = json.loads((out / "meta.json").read_text())
    assert "versions" in meta and meta["versions"]["flwr"].startswith("1.")
    assert meta["compute"]["mode"] == "default" and meta["compute"]["device"] in ("cpu", "cuda:0", "mps")
    return rounds, clients


def test_streaming_titan_run_and_reproducible(tmp_path):
    cfg = load_config("quickstart", BASE)
    run(cfg, tmp_path / "a", quiet=True)
    run(cfg, tmp_path / "b", quiet=True)
    ra, ca = _check_outputs(tmp_path / "a")
    rb, cb = _check_outputs(tmp_path / "b")
    # partial participation: Flower's node ids differ per run, the sampled partitions must not
    part = load_config("quickstart", [*BASE, "data.num_clients=6", "server.fraction=0.5"])
    run(part, tmp_path / "c", quiet=True)
    run(part, tmp_path / "d", quiet=True)
    pc = pd.read_csv(tmp_path / "c" / "clients.csv")
    pd_ = pd.read_csv(tmp_path / "d" / "clients.csv")
    picks_c = pc.groupby("server_round").partition_id.apply(sorted).tolist()
    assert picks_c == pd_.groupby("server_round").partition_id.apply(sorted).tolist()
    assert all(len(p) == 3 for p in picks_c)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "c" / "rounds.csv")[["accuracy", "virtual_time_s"]],
                                  pd.read_csv(tmp_path / "d" / "rounds.csv")[["accuracy", "virtual_time_s"]])
    cols = ["accuracy", "loss", "virtual_time_s", "energy_j"]
    pd.testing.assert_frame_equal(ra[cols], rb[cols])
    key = ["server_round", "partition_id"]
    pd.testing.assert_frame_equal(ca.sort_values(key)[key + ["sim_time_s", "train_loss"]].reset_index(drop=True),
                                  cb.sort_values(key)[key + ["sim_time_s", "train_loss"]].reset_index(drop=True))
    assert (ca.status == "ok").all() and (ca.selected > 0).all()
    phases = ca.sim_train_j + ca.sim_select_j + ca.sim_comm_j + ca.sim_idle_j
    assert phases.values == pytest.approx(ca.sim_energy_j.values)


def test_pruning_run(tmp_path):
    cfg = load_config("quickstart", [*BASE, "pruning.method=warmup-loss", "pruning.ratio=0.5", "model.name=mlp",
                                     "server.client_eval=true"])
    run(cfg, tmp_path, quiet=True)
    _, clients = _check_outputs(tmp_path)
    # round 1 includes the warm-up; round 2 trains only the kept half
    r2 = clients[clients.server_round == 2]
    assert (r2.rho == 0.5).all()
    assert (clients[clients.server_round == 1].streamed > 0).all()  # warm-up samples recorded
    assert clients.client_accuracy.between(0, 1).all()  # federated evaluation on each client's test share


def test_failing_client_is_recorded_and_round_completes(tmp_path):
    cfg = load_config("quickstart", [*BASE, "faults.exception=0.4", "faults.nan=0.3", "run.seed=3"])
    run(cfg, tmp_path, quiet=True)
    rounds = pd.read_csv(tmp_path / "rounds.csv")
    clients = pd.read_csv(tmp_path / "clients.csv")
    assert len(rounds) == 2
    bad = clients[clients.status.isin(["failed", "nonfinite"])]
    assert len(bad) >= 1
    # a client that raised inside a worker's message for several clients fails alone, in one line
    failed = clients[clients.status == "failed"]
    assert len(failed) and failed.error.str.fullmatch(r"injected client failure \(partition \d+, round \d+\)").all()
    assert rounds.clients_failed.sum() == len(bad)
    assert not clients[clients.status == "nonfinite"].included.any()


def test_a_run_where_every_client_fails_is_a_failed_run(tmp_path, capsys):
    """Every client raising (here injected; in the wild e.g. Ray's out-of-memory killer) leaves
    a run that measured nothing: exit 1 with the first client error, summary.json says so."""
    sets = sum((["--set", o] for o in [*BASE, "run.rounds=1", "faults.exception=1.0"]), [])
    assert cli_main(["run", "--quiet", "--out", str(tmp_path), *sets]) == 1
    err = capsys.readouterr().err
    assert "run failed: no round updated the global model" in err and "first client error" in err
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["client_rounds_failed"] == 3 and "injected" in summary["first_client_error"].lower()


def test_cli_run_and_bad_input(tmp_path, capsys):
    assert cli_main(["run", "--quiet", "--out", str(tmp_path), *sum((["--set", o] for o in BASE), [])]) == 0
    assert (tmp_path / "rounds.csv").exists()
    assert cli_main(["run", "--set", "run.roundz=2"]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'run.rounds'" in err and "Traceback" not in err


def test_a_population_larger_than_the_pool_is_played_by_the_workers(tmp_path):
    """300 clients, 6 sampled a round, a living fleet and FedAdam: a handful of Flower nodes
    play them (no node per client, no start-up query); each sampled partition trains as
    itself, under a stable id, and the run (its weights through Ray's object store) equals
    the same run on the local engine (weights in the messages)."""
    from simulations.run import pool_size

    overrides = ["data.num_clients=300", "data.min_samples=2", "data.partition=iid", "server.fraction=0.02",
                 "run.rounds=3", "selection.local_steps=2", "selection.velocity=10", "selection.buffer_size=10",
                 "fleet.dynamics=diurnal", "server.strategy=fedadam", "run.deterministic=true",
                 "simulation.arrays=object-store"]
    cfg = load_config("quickstart", overrides)
    assert pool_size(cfg, 300, cpus=2) == 4 < 300  # two per client process: a round goes out in one message each
    assert pool_size(load_config("quickstart", [*overrides, "simulation.clients_per_message=1"]), 300, cpus=2) == 16
    run(cfg, tmp_path / "ray", quiet=True)
    clients = pd.read_csv(tmp_path / "ray" / "clients.csv")
    assert len(clients) == 18 and (clients.status == "ok").all()
    assert (clients.node_id == clients.partition_id + 1).all() and clients.partition_id.max() > 16
    fleet = pd.read_csv(tmp_path / "ray" / "fleet.csv")
    assert len(fleet) == 3 * 300 and (fleet.available == 0).any()  # the fleet lives
    assert not fleet[(fleet.sampled == 1) & (fleet.available == 0)].size  # the offline are never sampled
    from fedtitan.checkpoint import StateFile  # a state per client played, in its round's file
    folder = tmp_path / "ray" / "checkpoints" / "clients"
    stored = {pid for f in folder.glob("round-*.states") for pid in StateFile.index(f)}
    assert stored == set(clients.partition_id)
    run(load_config("quickstart", [*overrides, "simulation.engine=local"]), tmp_path / "local", quiet=True)
    for name in ("rounds.csv", "clients.csv"):
        a, b = pd.read_csv(tmp_path / "ray" / name), pd.read_csv(tmp_path / "local" / name)
        keep = [c for c in a.columns if "wall" not in c and c not in ("checkpoint_s", "checkpoint_bytes")]
        pd.testing.assert_frame_equal(a[keep], b[keep])
