"""simulations.papers.single_device on real CIFAR-10: a few steps of two methods, then a resume."""

import sys

import pandas as pd
import pytest

from simulations.papers import single_device

pytestmark = pytest.mark.slow


def test_two_methods_then_resume(shared_data, tmp_path, monkeypatch, capsys):
    argv = ["single_device", "--data-dir", str(shared_data), "--steps", "4", "--eval-every", "2", "--seeds", "1",
            "--methods", "rs;titan:buffer=15", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    single_device.main()
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert sorted(set(curves.method)) == ["rs", "titan:buffer=15"] and curves.step.max() == 4
    assert set(curves.hardware) == {"cpu"}
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert set(summary.wall_ms_on) == {"cpu"} and set(summary.hardware) == {"cpu"}
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


def test_a_cut_off_run_continues_bit_for_bit(shared_data, tmp_path, monkeypatch, capsys):
    """A run killed after its second evaluation continues from the partial state it saved and
    ends exactly where an uninterrupted run ends (Titan's buffer, the coarse filter's random
    rule, the stream, the generators and the device clock all carried over)."""
    base = ["single_device", "--data-dir", str(shared_data), "--steps", "6", "--eval-every", "2", "--seeds", "1",
            "--methods", "titan;titan:coarse=random"]
    monkeypatch.setattr(sys, "argv", [*base, "--out", str(tmp_path / "whole")])
    single_device.main()
    whole = pd.read_csv(tmp_path / "whole" / "curves.csv")
    assert not (tmp_path / "whole" / "partial").exists()  # finished runs leave no partial state

    save = single_device.PartialRun.save
    calls = []

    def save_then_die(self, state):
        save(self, state)
        calls.append((self.path.name, state["step"]))
        if state["step"] == 4:
            raise KeyboardInterrupt  # the process is cut off right after saving step 4

    cut = tmp_path / "cut"
    monkeypatch.setattr(single_device.PartialRun, "save", save_then_die)
    monkeypatch.setattr(sys, "argv", [*base, "--out", str(cut)])
    for _ in range(2):  # cut off in each method
        with pytest.raises(KeyboardInterrupt):
            single_device.main()
    assert calls == [("titan-seed0.npz", 2), ("titan-seed0.npz", 4), ("titan_coarse_random-seed0.npz", 2),
                     ("titan_coarse_random-seed0.npz", 4)]
    assert "titan seed 0: continuing at step 4" in capsys.readouterr().out
    monkeypatch.setattr(single_device.PartialRun, "save", save)
    single_device.main()
    assert "titan:coarse=random seed 0: continuing at step 4" in capsys.readouterr().out
    resumed = pd.read_csv(cut / "curves.csv")
    exact = ["method", "seed", "step", "accuracy", "loss", "coarse_forwards", "sim_time_s", "sim_energy_j"]
    pd.testing.assert_frame_equal(resumed[exact], whole[exact])
    assert not (cut / "partial").exists()

    # a partial run is only continued with the settings it was made with
    (cut / "partial").mkdir()
    single_device.PartialRun(single_device.partial_path(cut, "rs", 0), "rs", 0,
                             single_device.argparse.Namespace(**{k: None for k in single_device.RUN_SETTINGS})
                             ).save({"step": 2})
    monkeypatch.setattr(sys, "argv", [*base[:-1], "rs", "--out", str(cut)])
    with pytest.raises(SystemExit) as exc:
        single_device.main()
    msg = str(exc.value)
    assert "partial run with other settings" in msg and "model=None (now 'cnn')" in msg and "\n" not in msg


def test_processes_share_one_out(shared_data, tmp_path, monkeypatch, capsys):
    """A run another process holds is skipped; two processes on one --out split the runs and
    their curves.csv holds every finished run once."""
    import fcntl
    import subprocess

    base = ["--data-dir", str(shared_data), "--dataset", "uci-har", "--model", "mlp", "--steps", "6", "--eval-every",
            "3", "--seeds", "2", "--methods", "rs,titan,cis", "--out", str(tmp_path)]
    lock = single_device.partial_path(tmp_path, "rs", 0).with_suffix(".lock")
    lock.parent.mkdir()
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as another process running rs seed 0 would
        monkeypatch.setattr(sys, "argv", ["single_device", *base[:-6], "--seeds", "1", "--methods", "rs,titan",
                                          "--out", str(tmp_path)])
        single_device.main()
    assert "rs seed 0: running in another process; skipped" in capsys.readouterr().out
    assert set(pd.read_csv(tmp_path / "curves.csv").method) == {"titan"}

    cmd = [sys.executable, "-m", "simulations.papers.single_device", *base]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    curves = pd.read_csv(tmp_path / "curves.csv")
    runs = curves.groupby(["method", "seed"]).step.apply(list)
    assert len(runs) == 6 and all(steps == [3, 6] for steps in runs), runs
    ran = [line for out in outs for line in out.splitlines() if ": acc " in line]
    assert len(ran) == 5  # titan seed 0 was finished before; each other run ran in one process only
    assert not (tmp_path / "partial").exists()


@pytest.mark.gpu
def test_every_method_runs_on_cuda(shared_data, tmp_path, monkeypatch):
    # the model, the flop counter, the stream and every selector on the GPU (Table 1's ResNet
    # rows ran this way on a lent H200)
    argv = ["single_device", "--data-dir", str(shared_data), "--steps", "2", "--eval-every", "1", "--seeds", "1",
            "--methods", "titan,rs,is,ce,ocs,ll,hl,camel,cis", "--device", "cuda", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    single_device.main()
    c = pd.read_csv(tmp_path / "curves.csv")
    assert len(c[c.step == 2]) == 9 and c.hardware.str.startswith("cuda: ").all()
