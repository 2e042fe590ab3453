"""Bad input and faults: one-line errors before any work, nothing lost, nothing leaked."""

import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import psutil
import pytest

from simulations.cli import main

BASE = ["--set", "data.num_clients=3", "--set", "run.rounds=2", "--set", "server.fraction=1.0",
        "--set", "selection.local_steps=2"]


def _one_line_error(capsys, code=2):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.startswith("fedtitan: error:") and len(err.splitlines()) == 1, err
    return err


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["run", "--quiet", "--out", str(blocker / "sub"), *BASE]) == 2
    assert "cannot write to output directory" in _one_line_error(capsys)


def test_too_many_cpus_per_client(tmp_path, capsys):
    assert main(["run", "--quiet", "--out", str(tmp_path), *BASE, "--set", "simulation.num_cpus=512"]) == 2
    assert "simulation.num_cpus" in _one_line_error(capsys)


def test_bad_dataset_file_fails_before_training(tmp_path, capsys):
    np.savez(tmp_path / "d.npz", x=np.zeros((30, 4)), y=np.arange(30) % 3)
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.full((30, 4), np.nan), y=np.arange(30) % 3)
    assert main(["run", "--quiet", "--out", str(tmp_path / "o"), *BASE, "--set", "data.dataset=npz",
                 "--set", f"data.path={bad}", "--set", "model.name=mlp"]) == 2
    assert "NaN" in _one_line_error(capsys)
    assert not (tmp_path / "o" / "rounds.csv").exists()


@pytest.mark.slow
def test_all_clients_failing_and_dropping_is_recorded(tmp_path):
    # every round is recorded; a run where no round updated the model exits 1 (it measured nothing)
    assert main(["run", "--quiet", "--out", str(tmp_path / "a"), *BASE, "--set", "faults.exception=1.0"]) == 1
    rounds = pd.read_csv(tmp_path / "a" / "rounds.csv")
    assert len(rounds) == 2 and not rounds.updated.any() and (rounds.clients_failed == 3).all()
    assert main(["run", "--quiet", "--out", str(tmp_path / "b"), *BASE, "--set", "faults.drop=0.5",
                 "--set", "run.seed=1"]) == 0
    clients = pd.read_csv(tmp_path / "b" / "clients.csv")
    assert (clients.status == "dropped").any() and not clients[clients.status == "dropped"].included.any()


def _ray_procs(temp_dir):
    """Ray's core processes (raylet, gcs_server, ...) of the instance using ``temp_dir``; workers
    die with them. Other Ray instances on the machine are not ours to judge."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if str(temp_dir) in " ".join(p.info["cmdline"] or []):
            out.append(p)
    return out


@pytest.fixture
def ray_tmp(monkeypatch):
    import tempfile

    d = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's socket paths have a length limit
    monkeypatch.setenv("RAY_TMPDIR", d)
    return d


@pytest.mark.slow
def test_interrupt_keeps_finished_rounds_and_leaks_no_ray(tmp_path, ray_tmp):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "simulations.cli", "run", "--quiet", "--out", str(out),
           "--set", "data.num_clients=3", "--set", "run.rounds=200", "--set", "server.fraction=1.0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (out / "rounds.csv").exists() and len(pd.read_csv(out / "rounds.csv")) >= 2:
                break
            time.sleep(0.3)
        else:
            pytest.fail("no rounds written in time")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    rounds = pd.read_csv(out / "rounds.csv")  # a complete, parseable file
    assert len(rounds) >= 2 and rounds.server_round.tolist() == list(range(1, len(rounds) + 1))
    time.sleep(3)
    assert not _ray_procs(ray_tmp), [p.info["cmdline"] for p in _ray_procs(ray_tmp)]


@pytest.mark.slow
def test_run_leaves_no_ray_processes(tmp_path, ray_tmp):
    assert main(["run", "--quiet", "--out", str(tmp_path), *BASE]) == 0
    time.sleep(2)
    assert not _ray_procs(ray_tmp)




@pytest.mark.parametrize(("arrays", "message"), [
    (dict(x=np.zeros((0, 4)), y=np.zeros(0, np.int64)), "hold no samples"),
    (dict(x=np.zeros((20, 4)), y=np.r_[np.zeros(10), -np.ones(10)].astype(np.int64)), "labels must be integers >= 0"),
    (dict(x=np.zeros((20, 4)), y=np.zeros(20, np.int64)), "a classifier needs at least two"),
    (dict(x=np.zeros((3, 4)), y=np.arange(3)), "left an empty split"),
    (dict(x=np.zeros((20, 4)), y=np.linspace(0, 1, 20)), "fractional or non-finite"),
    (dict(x=np.zeros((20, 4)), y=np.r_[np.zeros(19), [10**9]].astype(np.int64)), "remap them"),
    (dict(x=np.zeros((20, 4)), y=np.arange(20) % 2, x_test=np.zeros((4, 4))), "has x_test but not y_test"),
])
def test_npz_edge_cases_are_one_line_errors(tmp_path, capsys, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    assert main(["run", "--quiet", "--out", str(tmp_path / "o"), *BASE, "--set", "data.dataset=npz",
                 "--set", f"data.path={path}", "--set", "model.name=mlp"]) == 2
    assert message in _one_line_error(capsys)


def test_npz_with_whole_number_float_labels_loads(tmp_path):
    from fedtitan.data import load_dataset

    path = tmp_path / "d.npz"
    np.savez(path, x=np.random.default_rng(0).random((20, 4)), y=(np.arange(20) % 2).astype(np.float32))
    ds = load_dataset("npz", path=path)
    assert ds.num_classes == 2 and ds.y_train.dtype == np.int64
