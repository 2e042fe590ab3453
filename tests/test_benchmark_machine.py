"""Benchmarks say when other processes competed for the CPUs while they measured."""

from __future__ import annotations

import subprocess
import sys
import time

from simulations.benchmarks.machine import BUSY_CPUS, OtherLoad, report

# one CPU-second of work, however busy the machine is
BUSY = [sys.executable, "-c", "import time\nwhile time.process_time() < 1.0: pass"]


def test_a_busy_process_counts_only_outside_the_measured_tree(capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        time.sleep(0.3)
        # the same busy child seen from two roots: this process (it is ours) and an unrelated one
        with OtherLoad(interval=0.2) as ours, OtherLoad(interval=0.2, root=sleeper.pid) as theirs:
            busy = subprocess.Popen(BUSY)
            busy.wait()
    finally:
        sleeper.kill()
        sleeper.wait()
    # the child's CPU-second is counted by the monitor it is foreign to, not by ours (a look
    # every 0.2 s misses at most the child's last 0.2 s)
    assert theirs.cpu_s - ours.cpu_s > 0.7 and theirs.wall_s >= 1.0
    out = report(theirs)
    assert out["other_processes_cpus"] > BUSY_CPUS and "not comparable" in out["warning"]
    assert "warning: other processes kept" in capsys.readouterr().err


def test_an_idle_report_has_no_warning():
    load = OtherLoad()
    load.cpu_s, load.wall_s = 0.01, 2.0
    assert report(load) == {"other_processes_cpus": 0.005}
