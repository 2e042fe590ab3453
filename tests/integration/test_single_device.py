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


def test_har_mlp_records_model_and_device_clock(shared_data, tmp_path, monkeypatch):
    argv = ["single_device", "--data-dir", str(shared_data), "--dataset", "uci-har", "--model", "mlp", "--steps", "6",
            "--eval-every", "3", "--seeds", "1", "--methods", "rs,titan", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    single_device.main()
    c = pd.read_csv(tmp_path / "curves.csv")
    assert set(c.dataset) == {"uci-har"} and set(c.model) == {"mlp"}
    last = c[c.step == 6].set_index("method")
    # rs: training only; titan: pipelined, at least as long a step; both grow with the steps
    assert 0 < last.loc["rs", "sim_time_s"] <= last.loc["titan", "sim_time_s"]
    half = c[c.step == 3].set_index("method").sim_time_s
    assert list(half * 2) == pytest.approx(list(last.sim_time_s), rel=0.05)
    assert 100 <= last.loc["titan", "coarse_forwards"] <= 130  # v new + what the buffer kept


def test_unknown_profile_is_one_line(shared_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["single_device", "--data-dir", str(shared_data), "--device-profile", "nano",
                                      "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        single_device.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert "nano" in err[-1] and "Traceback" not in "".join(err)
