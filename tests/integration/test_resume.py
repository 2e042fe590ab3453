"""A run killed at a random round and resumed gives what the uninterrupted run gives.

Compared: rounds.csv (every column but wall times), clients.csv (every column but wall times,
and Flower's node ids under Ray, which differ from run to run), fleet.csv and the final
model's arrays. The local engine runs most cases (no Ray start-up); the Ray cases kill the
whole process from outside, kill a Ray worker, and cut a sweep.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from fedtitan.config import load_config
from simulations.cli import main as cli_main
from simulations.run import run

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BASE = ["simulation.engine=local", "run.deterministic=true", "run.save_model=true", "data.num_clients=6",
        "server.fraction=0.5", "run.rounds=6", "selection.local_steps=3"]
WALL = {"wall_s", "checkpoint_s", "train_wall_ms", "select_wall_ms", "sync_wall_ms", "steps_wall_ms"}
SEED = int(os.environ.get("FEDTITAN_TEST_SEED", time.time_ns() % 10_000))


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1", **extra}


def _fedtitan(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], env=_env(**env), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _faulty(*args: str) -> subprocess.CompletedProcess:
    """``fedtitan ARGS`` with the faults its leading ``--kill-*`` options name (tests/faults.py)."""
    return subprocess.run([sys.executable, "-m", "tests.faults", *args], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def _sets(overrides: list[str]) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def assert_same_run(a: Path, b: Path, node_ids: bool = True, same_config: bool = True) -> None:
    """``node_ids``: Flower's node ids are compared (not under Ray); ``same_config``: so is the
    checkpoints' size (a config that differs in simulation.engine is 2 bytes longer or shorter)."""
    for name in ("rounds.csv", "clients.csv", "fleet.csv"):
        if not (a / name).exists():
            assert not (b / name).exists()
            continue
        ta, tb = pd.read_csv(a / name), pd.read_csv(b / name)
        drop = [c for c in ta.columns if c in WALL or (c == "node_id" and not node_ids)
                or (c == "checkpoint_bytes" and not same_config)]
        pd.testing.assert_frame_equal(ta.drop(columns=drop), tb.drop(columns=drop), obj=name)
    with np.load(a / "model.npz") as za, np.load(b / "model.npz") as zb:
        assert za.files == zb.files and all(np.array_equal(za[k], zb[k]) for k in za.files)


def cut_and_resume(tmp_path: Path, overrides: list[str], kill_round: int) -> tuple[Path, Path]:
    """The same run uninterrupted, and SIGKILLed mid-round ``kill_round`` (the clients have
    trained and sent their states; nothing of the round is recorded) then resumed."""
    cfg = load_config("quickstart", [*BASE, *overrides])
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(cfg, full, quiet=True)
    killed = _faulty("--kill-at-round", str(kill_round), "run", "--quiet", "--out", str(cut),
                     *_sets([*BASE, *overrides]))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert len(pd.read_csv(cut / "rounds.csv")) == kill_round - 1 and not (cut / "summary.json").exists()
    assert cli_main(["resume", str(cut), "--quiet"]) == 0
    assert json.loads((cut / "meta.json").read_text())["resumed_from_rounds"] == [kill_round - 1]
    return full, cut


def _random_round(low: int, high: int) -> int:
    k = random.Random(SEED).randint(low, high)
    print(f"killing at round {k} (FEDTITAN_TEST_SEED={SEED})")
    return k


@pytest.mark.parametrize("method", ["titan", "rs"])
def test_streaming_run_killed_at_a_random_round_resumes_exactly(tmp_path, method):
    full, cut = cut_and_resume(tmp_path, [f"selection.method={method}"], _random_round(2, 6))
    assert_same_run(full, cut)
    assert (pd.read_csv(cut / "clients.csv").selected > 0).all()


def _tight(tmp_path: Path, **fields: float) -> str:
    body = "\n".join(f"{k} = {v}" for k, v in fields.items())
    path = tmp_path / "tight.toml"
    path.write_text(f'[devices.tight]\nbase = "rpi4"\n{body}\n')
    return str(path)


@pytest.mark.parametrize("kill_round", [2, 3], ids=["before-pruning", "after-pruning"])
def test_warmup_loss_pruning_cut_before_and_after_the_pruning_round(tmp_path, kill_round):
    """An energy budget spreads the largest client's warm-up over rounds 1 and 2 (the loss sums
    wait in the client's state) and it prunes in round 2: cut in round 2 resumes from the
    warm-up state, cut in round 3 from the kept subsets."""
    overrides = ["pruning.method=warmup-loss", "pruning.ratio=0.5", "server.fraction=1.0", "run.rounds=4",
                 "data.num_clients=4", f"fleet.profiles={_tight(tmp_path, energy_budget_j=0.5)}",
                 "fleet.devices=tight", "fleet.variation=0"]
    full, cut = cut_and_resume(tmp_path, overrides, kill_round)
    clients = pd.read_csv(full / "clients.csv")
    first_pruned = clients[clients.rho > 0].groupby("partition_id").server_round.min()
    assert (first_pruned == 2).any() and len(first_pruned) == 4  # partition 0 warms up in round 1, prunes in 2
    assert_same_run(full, cut)


def test_fedadam_resumes_with_its_moments(tmp_path):
    full, cut = cut_and_resume(tmp_path, ["server.strategy=fedadam", "server.strategy_options.eta=0.05"],
                               _random_round(2, 6))
    assert_same_run(full, cut)
    # without its moments the resumed run would differ: FedAdam's m_t/v_t are in the checkpoint
    ckpt = sorted((cut / "checkpoints").glob("round-*.npz"))[-1]
    from fedtitan.checkpoint import unpack

    assert set(unpack(ckpt)["strategy"]["attributes"]) >= {"m_t", "v_t", "current_arrays"}


def test_a_living_fleet_with_a_trace_resumes_exactly(tmp_path):
    trace = tmp_path / "trace.csv"
    trace.write_text("partition_id,t_start_s,t_end_s,available,speed_factor\n1,0,0.3,0,1\n2,0,1000,1,0.5\n")
    overrides = ["fleet.dynamics=random-walk", f"fleet.trace={trace}", "run.rounds=7"]
    full, cut = cut_and_resume(tmp_path, overrides, _random_round(2, 7))
    fleet = pd.read_csv(full / "fleet.csv")
    assert (fleet.available == 0).any() and fleet.speed_factor.nunique() > 2  # the fleet does live
    assert_same_run(full, cut)


def test_a_battery_limited_fleet_resumes_exactly(tmp_path):
    overrides = [f"fleet.profiles={_tight(tmp_path, battery_j=1.5)}", "fleet.devices=tight", "fleet.variation=0",
                 "server.fraction=1.0", "data.num_clients=3", "run.rounds=6"]
    full, cut = cut_and_resume(tmp_path, overrides, 4)
    clients = pd.read_csv(full / "clients.csv")
    assert clients.status.isin(["declined", "unavailable"]).any()  # batteries ran low during the run
    assert clients[clients.partition_id == 0].battery_j.is_monotonic_decreasing
    assert_same_run(full, cut)


def test_a_corrupt_checkpoint_is_refused_and_the_previous_one_used(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(load_config("quickstart", BASE), full, quiet=True)
    killed = _faulty("--kill-at-round", "5", "run", "--quiet", "--out", str(cut), *_sets(BASE))
    assert killed.returncode == -signal.SIGKILL
    newest = cut / "checkpoints" / "round-000004.npz"
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    res = _fedtitan("resume", str(cut), "--quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "round-000004.npz is truncated or corrupt" in res.stderr and "using the previous checkpoint" in res.stderr
    assert json.loads((cut / "meta.json").read_text())["resumed_from_rounds"] == [3]
    assert_same_run(full, cut)


def test_a_full_disk_during_a_checkpoint_stops_cleanly_and_resume_goes_on(tmp_path, monkeypatch, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(load_config("quickstart", BASE), full, quiet=True)
    import fedtitan.checkpoint as ck

    real = ck.atomic_writer

    class HalfWay:  # the disk fills up half-way through the file
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(bytes(data)[: len(data) // 2])
            raise OSError(28, "No space left on device")

    @contextlib.contextmanager
    def atomic_writer(path, fsync=False):  # round 3's checkpoint meets a full disk
        with real(path, fsync=fsync) as fh:
            yield HalfWay(fh) if Path(path).name == "round-000003.npz" else fh

    monkeypatch.setattr(ck, "atomic_writer", atomic_writer)
    code = cli_main(["run", "--quiet", "--out", str(cut), *_sets(BASE)])
    err = capsys.readouterr().err
    assert code == 2 and "the disk is full: could not write" in err and "fedtitan resume" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    monkeypatch.undo()
    assert sorted(p.name for p in (cut / "checkpoints").glob("round-*.npz")) == ["round-000001.npz",
                                                                                  "round-000002.npz"]
    assert not list((cut / "checkpoints").glob(".*"))  # nothing half-written is left to be loaded
    assert cli_main(["resume", str(cut), "--quiet"]) == 0
    assert_same_run(full, cut)


def test_resume_refuses_changed_settings_extends_and_leaves_finished_runs(tmp_path, capsys):
    out = tmp_path / "run"
    run(load_config("quickstart", [*BASE, "run.rounds=3"]), out, quiet=True)
    assert cli_main(["resume", str(out), "--set", "selection.method=rs"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "selection.method: 'titan' -> 'rs'" in err and "\n" not in err.strip()
    assert cli_main(["resume", str(out), "--quiet"]) == 0
    assert "has finished all its 3 rounds" in capsys.readouterr().out
    assert cli_main(["resume", str(out), "--quiet", "--set", "run.rounds=5"]) == 0
    rounds = pd.read_csv(out / "rounds.csv")
    assert rounds.server_round.tolist() == [1, 2, 3, 4, 5] and rounds.accuracy.notna().all()
    assert (rounds.checkpoint_bytes > 0).all() and (rounds.checkpoint_s >= 0).all()
    assert json.loads((out / "summary.json").read_text())["rounds"] == 5
    assert len(list((out / "checkpoints").glob("round-*.npz"))) == 2  # disk use stays bounded
    assert cli_main(["resume", str(tmp_path / "nothing")]) == 2
    assert "not a fedtitan run folder" in capsys.readouterr().err
    none = tmp_path / "none"
    run(load_config("quickstart", [*BASE, "run.rounds=2", "run.checkpoint_every=0"]), none, quiet=True)
    assert cli_main(["resume", str(none), "--set", "run.rounds=3"]) == 2
    assert "run.checkpoint_every=0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- Ray
RAY = ["run.deterministic=true", "simulation.arrays=object-store", "run.save_model=true", "data.num_clients=4",
       "server.fraction=0.5", "run.rounds=5", "selection.local_steps=3"]


def _alive(procs: list[psutil.Process]) -> list[str]:
    """Those of ``procs`` still running (a zombie has ended), as "pid name"."""
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.Error:
            continue
    return left


def test_ray_run_killed_from_outside_resumes_exactly(tmp_path):
    """The whole process is killed with SIGKILL while a round is under way (the kill comes when
    the checkpoint of a random round appears); `fedtitan resume` goes on under Ray."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    run(load_config("quickstart", RAY), full, quiet=True)
    k = _random_round(1, 3)
    proc = subprocess.Popen([sys.executable, "-m", "simulations.cli", "run", "--quiet", "--out", str(cut), *_sets(RAY)],
                            env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = cut / "checkpoints" / f"round-{k:06d}.npz"
    t0 = time.time()
    while not marker.exists() and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.02)
    tree = psutil.Process(proc.pid).children(recursive=True)  # its Ray cluster: GCS, raylet, agents, workers
    proc.kill()
    proc.wait()
    assert not (cut / "summary.json").exists()
    res = _fedtitan("resume", str(cut), "--quiet")
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_run(full, cut, node_ids=False)
    # the killed run's Ray processes go too (its agents notice within a minute or so). Only its own
    # are looked at: another test may run a Ray cluster beside this one (pytest-xdist)
    assert tree
    t0 = time.time()
    while _alive(tree) and time.time() - t0 < 120:
        time.sleep(1)
    assert not _alive(tree), _alive(tree)


def test_a_ray_worker_killed_mid_round_is_restarted_and_the_run_is_unchanged(tmp_path):
    full, hit = tmp_path / "full", tmp_path / "hit"
    run(load_config("quickstart", RAY), full, quiet=True)
    clients = pd.read_csv(full / "clients.csv")
    victim = int(clients[clients.server_round == 2].partition_id.iloc[-1])
    marker = tmp_path / "killed-once"
    res = _faulty("--kill-client", f"2:{victim}:{marker}", "run", "--quiet", "--out", str(hit), *_sets(RAY))
    assert res.returncode == 0, res.stderr[-2000:]
    assert marker.exists()  # the worker training that partition in round 2 was SIGKILLed
    assert "died mid-round; sending their work again" in res.stderr
    assert (pd.read_csv(hit / "clients.csv").status == "ok").all()
    assert_same_run(full, hit, node_ids=False)


def test_a_sweep_cut_mid_run_resumes_that_run_from_its_checkpoint(tmp_path):
    """The sweep is SIGKILLed in its second run's round 3; the same command again finishes it
    from its checkpoint. Each run equals the same run made uninterrupted (local engine: it
    gives what Ray gives)."""
    args = ["sweep", "quickstart", "--grid", "selection.method=titan,rs", "--out", str(tmp_path / "sw"), "--quiet",
            "--no-report", *_sets(RAY)]
    proc = subprocess.Popen([sys.executable, "-m", "simulations.cli", *args], env=_env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    second = tmp_path / "sw" / ".partial-selection.method=rs__seed=0"
    t0 = time.time()
    while not (second / "checkpoints" / "round-000002.npz").exists() and proc.poll() is None \
            and time.time() - t0 < 400:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / "sw" / "selection.method=titan__seed=0" / "summary.json").exists()
    assert not (tmp_path / "sw" / "selection.method=rs__seed=0").exists()
    res = _fedtitan(*args)
    assert res.returncode == 0, res.stderr[-2000:]
    done = tmp_path / "sw" / "selection.method=rs__seed=0"
    assert json.loads((done / "meta.json").read_text())["resumed_from_rounds"][0] >= 2
    index = pd.read_csv(tmp_path / "sw" / "index.csv")
    assert (index.status == "done").all()
    for method in ("titan", "rs"):
        ref = tmp_path / f"ref-{method}"
        run(load_config("quickstart", [*RAY, f"selection.method={method}", "simulation.engine=local"]), ref,
            quiet=True)
        assert_same_run(ref, tmp_path / "sw" / f"selection.method={method}__seed=0", node_ids=False,
                        same_config=False)
