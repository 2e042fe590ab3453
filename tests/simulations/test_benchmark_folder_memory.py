"""The image-folder memory benchmark: its processes share one memory-mapped copy of the data."""

from __future__ import annotations

import pytest

from simulations.benchmarks.folder_memory import main


@pytest.mark.slow
def test_processes_share_one_mapped_copy(capsys):
    r = main(["--images", "3000", "--size", "64"])  # 36.9 MB decoded: a few MB of fixed costs stay small beside it
    assert r["memory_mapped"] and r["same_data_in_every_process"] and r["images"] == 3000
    # the mapped copy is shared (the 50,000-image run meets the 1.3 target; here fixed costs
    # weigh more); private copies cost at least half a copy more than the shared one
    assert r["shared_ratio"] < 1.45
    assert r["copies_added_mb"] - r["shared_added_mb"] > 0.5 * r["decoded_mb"]
    assert '"shared_ratio"' in capsys.readouterr().out
