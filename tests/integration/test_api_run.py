"""The Python API (simulations.api, as fedtitan.run) end to end on Flower + Ray: two runs in one process, then Ctrl-C in a third."""

import os
import signal
import threading
import time

import pandas as pd
import psutil
import pytest

import fedtitan as ft

pytestmark = pytest.mark.slow

SMALL = {"run.rounds": 2, "data.num_clients": 6, "server.fraction": 0.5}


def _ray_children() -> list[str]:
    names = []
    for p in psutil.Process().children(recursive=True):
        try:
            names.append(" ".join(p.cmdline())[:80])
        except psutil.Error:
            continue
    return [n for n in names if "ray" in n or "raylet" in n or "gcs_server" in n]


def test_two_runs_in_one_process_then_an_interrupted_third_that_resumes(tmp_path):
    import ray

    a = ft.run("quickstart", SMALL, out=tmp_path / "a", quiet=True)
    assert not ray.is_initialized()
    b = ft.run("quickstart", {**SMALL, "selection.method": "rs"}, out=tmp_path / "b", quiet=True)
    assert (a.summary["rounds"], b.summary["rounds"]) == (2, 2)
    assert a.config.selection.method == "titan" and b.config.selection.method == "rs"
    assert len(a.rounds) == len(b.rounds) == 2 and not a.clients.empty
    assert isinstance(ft.load(tmp_path / "b"), ft.Run)

    # a third, stopped by SIGINT (what Ctrl-C and the notebook's interrupt button send) once
    # its first round is written
    out = tmp_path / "c"

    def interrupt() -> None:
        deadline = time.time() + 240
        while time.time() < deadline:
            f = out / "rounds.csv"
            if f.exists() and len(pd.read_csv(f)) >= 1:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=interrupt, daemon=True)
    watcher.start()
    with pytest.raises(KeyboardInterrupt):
        ft.run("quickstart", {**SMALL, "run.rounds": 30}, out=out, quiet=True)
    watcher.join()
    done = len(pd.read_csv(out / "rounds.csv"))
    assert 1 <= done < 30
    assert not ray.is_initialized()
    deadline = time.time() + 20  # Ray's processes leave with its shutdown
    while _ray_children() and time.time() < deadline:
        time.sleep(0.5)
    assert _ray_children() == []
    assert not ft.load(out).finished

    c = ft.resume(out, {"run.rounds": done + 1}, quiet=True)  # goes on from its checkpoint
    assert c.summary["rounds"] == done + 1 and list(c.rounds.server_round) == list(range(1, done + 2))
