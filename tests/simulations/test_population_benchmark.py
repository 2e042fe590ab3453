"""The population benchmark's pieces: its dataset made in chunks is the one made at once, and
its memory figure is the process tree's PSS (shared pages counted once) beside its RSS."""

import numpy as np
import psutil

from simulations.benchmarks.population import _holds, make_dataset, tree_memory


def test_the_dataset_made_in_chunks_is_the_dataset_made_at_once(tmp_path):
    make_dataset(tmp_path / "chunked.npz", n_train=5000, n_test=300, chunk=777)
    make_dataset(tmp_path / "whole.npz", n_train=5000, n_test=300, chunk=1 << 20)
    with np.load(tmp_path / "chunked.npz") as a, np.load(tmp_path / "whole.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
        assert a["x"].shape == (5000, 1, 8, 8) and a["x"].dtype == np.uint8
    assert _holds(tmp_path / "whole.npz", 5000) and not _holds(tmp_path / "whole.npz", 5001)
    assert not _holds(tmp_path / "absent.npz", 5000)


def test_tree_memory_sums_rss_and_pss():
    me = psutil.Process()
    rss, pss = tree_memory([me, me])
    assert rss >= pss > 0  # a page shared with others counts in full in RSS, in part in PSS


def test_the_sampler_finds_the_peak_and_reads_pss_only_as_rss_grows(monkeypatch):
    """RSS every tick, PSS (costly: smaps) only when RSS has grown 2% since its last read and
    not more often than ``pss_every_s``: a child that holds 150 MB for a second is seen at its
    peak in both, with few PSS reads."""
    import subprocess
    import sys
    import threading

    import simulations.benchmarks.population as population

    reads: list[int] = []
    real = population.tree_memory

    def counted(procs):
        reads.append(len(procs))
        return real(procs)

    monkeypatch.setattr(population, "tree_memory", counted)
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(150 << 20); time.sleep(1.5)"])
    stop, out = threading.Event(), []
    watcher = threading.Thread(target=population.peak_tree_memory, args=(child.pid, stop, out, 0.05),
                               kwargs={"pss_every_s": 0.4})
    watcher.start()
    child.wait()
    stop.set()
    watcher.join()
    (rss, pss), = out
    assert rss >= 150 << 20 and pss >= 140 << 20
    assert 1 <= len(reads) <= 8  # about 30 ticks; PSS read while the child grew, not after
