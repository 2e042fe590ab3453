"""Benchmarks say when other processes competed for the CPUs while they measured."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil

from simulations.benchmarks.machine import BUSY_CPUS, OtherLoad, report

# busy for as long as the test needs it
BUSY = [sys.executable, "-c", "import time\nwhile time.process_time() < 60: pass"]


def test_a_busy_process_counts_only_outside_the_measured_tree(capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    busy = None
    try:
        time.sleep(0.3)
        # the same busy child seen from two roots: this process (it is ours) and an unrelated one
        with OtherLoad(interval=0.2) as ours, OtherLoad(interval=0.2, root=sleeper.pid) as theirs:
            busy = subprocess.Popen(BUSY)
            child = psutil.Process(busy.pid)
            while sum(child.cpu_times()[:2]) < 1.0:  # a CPU-second, however busy the machine is
                time.sleep(0.05)
    finally:
        for proc in (sleeper, busy):
            if proc is not None:
                proc.kill()
                proc.wait()
    # the child's CPU-second is counted by the monitor it is foreign to, not by ours (other
    # work on the machine counts in both)
    assert theirs.cpu_s - ours.cpu_s > 0.8
    assert any(who.startswith(f"{busy.pid} ") for who in theirs.by_process)  # named in the warning
    assert not any(who.startswith(f"{busy.pid} ") for who in ours.by_process)
    out = report(theirs)
    assert out["other_processes_cpus"] > BUSY_CPUS and "not comparable" in out["warning"]
    assert "warning: other processes kept" in capsys.readouterr().err


def test_an_idle_report_has_no_warning():
    load = OtherLoad()
    load.cpu_s, load.wall_s = 0.01, 2.0
    assert report(load) == {"other_processes_cpus": 0.005}


def test_a_process_that_leaves_the_tree_stays_ours():
    """Ray's workers outlive their driver for a moment, orphaned: still the benchmark's own."""
    parent = [sys.executable, "-c", "import subprocess, sys, time\n"
              f"print(subprocess.Popen({BUSY!r}).pid, flush=True)\ntime.sleep(0.6)"]
    with OtherLoad(interval=0.1) as ours:
        middle = subprocess.Popen(parent, stdout=subprocess.PIPE, text=True)
        orphan = psutil.Process(int(middle.stdout.readline()))
        try:
            middle.wait()  # the orphan's parent is gone: it is no longer in this process's tree
            assert orphan.pid not in {p.pid for p in psutil.Process().children(recursive=True)}
            start = sum(orphan.cpu_times()[:2])
            while sum(orphan.cpu_times()[:2]) < start + 0.5:
                time.sleep(0.05)
        finally:
            orphan.kill()
    assert not any(who.startswith(f"{orphan.pid} ") for who in ours.by_process)
