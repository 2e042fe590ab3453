from simulations.cli import main


def test_devices_list_show_and_errors(capsys):
    assert main(["devices", "list"]) == 0
    out = capsys.readouterr().out
    assert "jetson-nano-10w" in out and "phone-midrange" in out
    assert main(["devices", "show", "orin-nano"]) == 0
    assert "[devices.orin-nano]" in capsys.readouterr().out
    assert main(["devices", "show", "orin-nan"]) == 2
    assert "did you mean 'orin-nano'" in capsys.readouterr().err


def test_devices_list_and_show_read_your_own_profiles(tmp_path, capsys):
    """The profile TOML of docs/devices.md can be checked before a run uses it."""
    mine = tmp_path / "my-devices.toml"
    mine.write_text('[devices.my-nano]\nbase = "jetson-nano-10w"\ntrain_flops = 3.1e9\nenergy_budget_j = 150.0\n')
    assert main(["devices", "show", "my-nano"]) == 2
    assert "for a profile of your own add --profiles FILE" in capsys.readouterr().err
    assert main(["devices", "show", "my-nano", "--profiles", str(mine)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("[devices.my-nano]") and "train_flops = 3100000000.0" in out
    assert main(["devices", "show", "my-nan", "--profiles", str(mine)]) == 2
    assert "did you mean 'my-nano'" in capsys.readouterr().err
    assert main(["devices", "list", "--profiles", str(mine)]) == 0
    assert "my-nano" in capsys.readouterr().out


def test_devices_calibrate_writes_loadable_profile(tmp_path, capsys):
    out = tmp_path / "me.toml"
    assert main(["devices", "calibrate", "--model", "mlp", "--seconds", "0.3", "-o", str(out)]) == 0
    from fedtitan.devices import load_profiles

    prof = load_profiles(out)["this-machine"]
    assert prof.train_flops > 1e6 and prof.sources


def test_data_summary_with_heatmap(tmp_path, capsys):
    png = tmp_path / "h.png"
    assert main(["data", "summary", "digits", "--num-clients", "5", "--heatmap", str(png)]) == 0
    out = capsys.readouterr().out
    assert "class_9" in out and png.exists() and png.stat().st_size > 1000
    assert main(["data", "summary", "digits", "--partition", "dirichlet", "--alpha", "0"]) == 2


def _one_line_error(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_data_summary_checks_names(capsys):
    """A misspelled dataset in --dataset or --set is preflight's one line with a did-you-mean;
    a positional that is neither a preset, a TOML file nor a dataset suggests from both."""
    _one_line_error(capsys, ["data", "summary", "--dataset", "cifar1"], "did you mean 'cifar10'")
    _one_line_error(capsys, ["data", "summary", "--set", "data.dataset=cifar1"], "did you mean 'cifar10'")
    _one_line_error(capsys, ["data", "summary", "cifar1"], "did you mean 'cifar10'")
    _one_line_error(capsys, ["data", "summary", "quickstar"], "did you mean 'quickstart'")


def test_data_summary_shows_the_partition_a_run_trains_on(tmp_path, capsys):
    """At alpha = 0.1, seed 3, a partition drawn without the preset's min_samples = 20 has a
    client with 2 samples; the run redraws it. The summary is the run's partition.csv."""
    import pandas as pd

    from simulations.cli import _partition_table, build_parser

    sets = ["data.alpha=0.1", "run.seed=3"]
    out = tmp_path / "run"
    args = ["run", "quickstart", "--quiet", "--out", str(out)]
    for o in [*sets, "run.rounds=1", "simulation.engine=local", "tracking.report=false"]:
        args += ["--set", o]
    assert main(args) == 0
    ran = pd.read_csv(out / "partition.csv", index_col=0)
    shown = _partition_table(build_parser().parse_args(["data", "summary", "quickstart", "--set", sets[0],
                                                         "--set", sets[1]]))[0]
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), ran.reset_index(drop=True), check_dtype=False)
    assert ran.iloc[:, 0].min() >= 20  # data.min_samples of the preset
    # the old flags override the preset's settings: --alpha and --seed are data.alpha and run.seed
    flags = _partition_table(build_parser().parse_args(["data", "summary", "quickstart", "--alpha", "0.1",
                                                         "--seed", "3"]))[0]
    pd.testing.assert_frame_equal(flags, shown)


def test_devices_calibrate_says_what_it_measured(tmp_path, capsys):
    out = tmp_path / "me.toml"
    assert main(["devices", "calibrate", "--model", "mlp", "--seconds", "0.2", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "measured: training " in printed and "GFLOP/s" in printed and "forward (selection)" in printed
    assert ("power " in printed) and f"wrote {out}" in printed
    assert main(["devices", "calibrate", "--model", "mlp", "--seconds", "0.2"]) == 0
    both = capsys.readouterr()
    assert both.out.startswith("[devices.") and "measured: training " in both.err  # stdout stays TOML


def test_resume_says_which_run_and_round_it_goes_on_from(tmp_path, capsys, monkeypatch):
    import simulations.run as run_mod
    import strategies.checkpoints as ckpts
    from fedtitan.config import load_config

    class Ckpt:
        server_round = 3

    cfg = load_config("quickstart", ["run.rounds=5"])
    monkeypatch.setattr(ckpts, "resume_config", lambda run_dir, overrides: (cfg, Ckpt()))
    monkeypatch.setattr(run_mod, "run", lambda *a, **k: {"rounds": 5, "final_accuracy": 0.5})
    assert main(["resume", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"fedtitan resume: {tmp_path} from round 3 (to round 5)" in out
    title = "".join(out.split("(to round 5)", 1)[1].split())  # rich wraps a table's title to the table's width
    assert "fedtitanrun:" not in title and "fromround3" in title  # the summary's title


def test_a_stopped_run_shows_no_eta():
    """After Ctrl-C the run ends after its current round: the bar shows no ETA for the rest."""
    from simulations.run import progress_bar

    prog = progress_bar("{task.fields[acc]}", quiet=False)  # never started: nothing drawn
    task = prog.add_task("quickstart", total=10, completed=2, acc="-", stopped=False)
    eta = prog.columns[-1]
    assert str(eta.render(prog.tasks[0])).startswith("ETA ")
    prog.update(task, stopped=True)
    assert "ETA" not in str(eta.render(prog.tasks[0])) and str(eta.render(prog.tasks[0])) == "stopping"


def test_plot_kinds_spelled_out_agree_and_the_cli_imports_no_pandas():
    """simulations.cli spells fedtitan.results.views.PLOT_KINDS out so that `fedtitan run`
    starts Ray before pandas is imported."""
    import subprocess
    import sys

    from fedtitan.results.views import PLOT_KINDS
    from simulations import cli

    assert cli.PLOT_KINDS == PLOT_KINDS
    code = "import sys, simulations.cli; print('pandas' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_the_command_ends_with_its_code_and_its_whole_output():
    """The command line's process skips the interpreter's tear-down (simulations.cli._quick_exit):
    what it printed arrives whole, through a pipe, and its exit code is main()'s."""
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "simulations.cli", "devices", "list"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "jetson" in ok.stdout.lower() and ok.stdout.endswith("\n")
    bad = subprocess.run([sys.executable, "-m", "simulations.cli", "run", "--set", "data.datset=cifar10"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("fedtitan: error:") and "datset" in bad.stderr
    code = "import sys; from simulations.cli import main; main(['devices', 'list']); print('after'); sys.exit(3)"
    called = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert called.returncode == 3 and called.stdout.endswith("after\n")  # main(argv) leaves the process alone
