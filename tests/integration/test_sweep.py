"""A real sweep, killed mid-way and resumed; then the report."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

ARGS = ["sweep", "quickstart", "--grid", "selection.method=titan,rs", "--seeds", "1", "--quiet",
        "--set", "data.num_clients=3", "--set", "run.rounds=2", "--set", "server.fraction=1.0",
        "--set", "selection.local_steps=2", "--set", "fleet.mix=rpi4:1"]


def test_sweep_resume_after_kill_and_report(tmp_path):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "fedtitan.cli", *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            idx = out / "index.csv"
            if idx.exists() and (pd.read_csv(idx).status == "done").sum() >= 1:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the first run of the sweep did not finish in time")
        time.sleep(3)  # let it get into the second run
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = set(pd.read_csv(out / "index.csv").query("status == 'done'").run_id)
    assert len(done_before) == 1
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    idx = pd.read_csv(out / "index.csv")
    assert len(idx) == 2 and idx.run_id.is_unique and (idx.status == "done").all()
    assert idx.wall_s.notna().all()  # the run finished before the kill keeps its wall time
    dirs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dirs == sorted(idx.run_id)  # no .partial leftovers, nothing duplicated
    for rid in idx.run_id:
        rounds = pd.read_csv(out / rid / "rounds.csv")
        assert rounds.server_round.tolist() == [1, 2]
    assert (out / "report.html").exists() and "speedup_vs_rs" in res.stdout
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Time to accuracy" in html
