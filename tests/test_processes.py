"""tests/processes.py stops the processes of one test and leaves a neighbour's alone."""

import os
import subprocess
import sys
import time

from tests.processes import TAG_ENV, kill_tagged, tagged


def test_kill_tagged_stops_only_its_own_tag(tmp_path):
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    mine = subprocess.Popen(sleep, env={**os.environ, TAG_ENV: f"{tmp_path}/a"})
    # a grandchild, detached from the test's own Popen, as Flower's SuperExec starts its apps
    spawner = f"import subprocess, sys; subprocess.Popen({sleep!r}); import time; time.sleep(60)"
    mine2 = subprocess.Popen([sys.executable, "-c", spawner], env={**os.environ, TAG_ENV: f"{tmp_path}/a"})
    theirs = subprocess.Popen(sleep, env={**os.environ, TAG_ENV: f"{tmp_path}/b"})
    try:
        for _ in range(100):
            if len(tagged(f"{tmp_path}/a")) == 3:
                break
            time.sleep(0.1)
        assert len(tagged(f"{tmp_path}/a")) == 3
        kill_tagged(f"{tmp_path}/a")
        assert tagged(f"{tmp_path}/a") == []  # the grandchild too
        assert mine.poll() is not None and mine2.poll() is not None
        assert theirs.poll() is None and [p.pid for p in tagged(f"{tmp_path}/b")] == [theirs.pid]
    finally:
        for p in (mine, mine2, theirs):
            p.kill()
            p.wait()
