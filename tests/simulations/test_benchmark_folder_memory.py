"""The image-folder memory benchmark: its processes share one memory-mapped copy of the data."""

from __future__ import annotations

import pytest

from simulations.benchmarks.folder_memory import main


@pytest.mark.slow
def test_processes_share_one_mapped_copy(capsys):
    r = main(["--images", "3000", "--size", "32"])
    assert r["memory_mapped"] and r["same_data_in_every_process"] and r["images"] == 3000
    # two private copies cost about twice one; the mapped copy is shared (the small folder's
    # fixed costs, a few MB, keep this from the 1.3 target the 50,000-image run meets)
    assert r["shared_ratio"] < 1.6 < r["copies_ratio"]
    assert '"shared_ratio"' in capsys.readouterr().out
