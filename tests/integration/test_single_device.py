"""simulations.single_device on real CIFAR-10: a few steps of two methods, then a resume."""

import sys

import pandas as pd
import pytest

from simulations import single_device

pytestmark = pytest.mark.slow


def test_two_methods_then_resume(shared_data, tmp_path, monkeypatch, capsys):
    argv = ["single_device", "--data-dir", str(shared_data), "--steps", "4", "--eval-every", "2", "--seeds", "1",
            "--methods", "rs;titan:buffer=15", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    single_device.main()
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert sorted(set(curves.method)) == ["rs", "titan:buffer=15"] and curves.step.max() == 4
    assert "[2/2]" in capsys.readouterr().out  # the second method ran in the same call
    single_device.main()  # every (method, seed) reached --steps: nothing is run again
    assert "seed 0: acc" not in capsys.readouterr().out
    assert pd.read_csv(tmp_path / "curves.csv").equals(curves)
