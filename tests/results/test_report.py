import json

import numpy as np
import pandas as pd

from fedtitan.results.report import build_report
from simulations.cli import main


def _fake_sweep(root):
    rows = []
    for method, ratios in (("warmup-loss", (0.1, 0.5, 1.0)), ("random", (0.1, 0.5, 1.0)), ("full", (1.0,))):
        for ratio in ratios:
            for seed in (0, 1):
                rid = f"pruning.method={method}__pruning.ratio={ratio}__seed={seed}"
                d = root / rid
                d.mkdir(parents=True)
                bonus = 0.1 if method == "warmup-loss" and ratio < 1 else 0.0
                acc = [0.2 + 0.3 * ratio + bonus, 0.3 + 0.4 * ratio + bonus + 0.01 * seed]
                pd.DataFrame({"server_round": [1, 2], "accuracy": acc, "loss": [1.0, 0.8],
                              "virtual_time_s": [10 * ratio, 20 * ratio], "energy_cum_j": [5 * ratio, 10 * ratio]}
                             ).to_csv(d / "rounds.csv", index=False)
                pd.DataFrame({"server_round": [1, 1, 2, 2], "device": ["rpi4", "orin-nano"] * 2,
                              "sim_time_s": [ratio, ratio / 2] * 2, "sim_energy_j": [3 * ratio, 2 * ratio] * 2,
                              "sim_train_s": [ratio, ratio / 2] * 2}).to_csv(d / "clients.csv", index=False)
                (d / "config.json").write_text(json.dumps({"run": {"seed": seed}}))
                (d / "summary.json").write_text("{}")
                rows.append({"run_id": rid, "pruning.method": method, "pruning.ratio": ratio, "seed": seed,
                             "status": "done", "path": rid, "wall_s": 1.0})
    pd.DataFrame(rows).to_csv(root / "index.csv", index=False)


def test_report_for_a_pruning_sweep(tmp_path):
    from fedtitan.data import partition, summary

    _fake_sweep(tmp_path)
    assert main(["plot", "partition", str(tmp_path), "-o", str(tmp_path / "p.png")]) == 2  # none recorded yet
    labels = np.repeat(np.arange(4), 25)
    part = summary(partition(labels, "shards", 5, seed=0, classes_per_client=2), labels, 4)
    part.to_csv(tmp_path / "pruning.method=random__pruning.ratio=0.1__seed=0" / "partition.csv")
    path, table = build_report(tmp_path)
    html = path.read_text()
    for section in ("Final accuracy", "Accuracy vs pruning ratio", "Accuracy gap", "linear fit", "Per device tier",
                    "Partition: labels per client (pruning.method=random__pruning.ratio=0.1__seed=0)"):
        assert section in html, section
    assert html.count("data:image/png;base64") >= 5
    assert main(["plot", "partition", str(tmp_path), "-o", str(tmp_path / "p.png")]) == 0
    # training time is exactly linear in rho here: R^2 = 1
    tables = json.loads((tmp_path / "report-tables.json").read_text())
    assert len(tables["final"]) == 7
    assert main(["plot", "accuracy-ratio", str(tmp_path), "-o", str(tmp_path / "f.pdf")]) == 0
    assert (tmp_path / "f.pdf").stat().st_size > 1000
    assert main(["plot", "tiers", str(tmp_path), "-o", str(tmp_path / "t.png")]) == 0


def test_fits_are_exact_on_linear_costs(tmp_path):
    from fedtitan.results import analysis

    _fake_sweep(tmp_path)
    _, clients, _ = analysis.load_sweep(tmp_path)
    fits = analysis.cost_vs_ratio(clients)
    assert len(fits) == 4 and (fits.r2 > 0.999999).all()  # full data (rho = 1 only) has no fit
    t = fits[(fits["pruning.method"] == "random") & (fits.metric == "train_time_s")].iloc[0]
    assert abs(t.slope - 3.0) < 1e-9  # per run: 2 rounds x (1 + 0.5) x rho


def test_verdict_reads_the_table_honestly():
    import pandas as pd

    from fedtitan.results.analysis import verdict

    by = ["selection.method"]
    one_seed = pd.DataFrame({"selection.method": ["titan", "rs"], "tta_s": [100.0, 150.0], "tta_sd": [None, None],
                             "reached": [1, 1], "runs": [1, 1]})
    v = verdict(one_seed, by, 0.5)
    assert v.startswith("titan reached the target accuracy 0.500 first, after 100 s") and "1.50x sooner than rs" in v
    assert "one seed" in v
    apart = one_seed.assign(tta_sd=[5.0, 8.0], reached=[3, 3], runs=[3, 3])
    assert "larger than the seed-to-seed spread (sd up to 8 s)" in verdict(apart, by, 0.5)
    close = one_seed.assign(tta_sd=[40.0, 60.0], reached=[3, 3], runs=[3, 3])
    assert "within the seed-to-seed spread" in verdict(close, by, 0.5) and "not distinguishable" in verdict(close, by, 0.5)
    nobody = one_seed.assign(tta_s=[float("nan")] * 2)
    assert verdict(nobody, by, 0.5).startswith("No configuration reached the target accuracy 0.500")
    only = one_seed.assign(tta_s=[100.0, float("nan")])
    assert verdict(only, by, 0.5).endswith("; rs did not reach it.")


def test_verdict_when_only_some_runs_reach_the_target():
    from fedtitan.results.analysis import verdict

    by = ["selection.method"]
    tta = pd.DataFrame({"selection.method": ["titan", "rs"], "tta_s": [90.0, 100.0], "tta_sd": [None, 4.0],
                        "reached": [1, 2], "runs": [2, 2]})
    v = verdict(tta, by, 0.5)
    assert "(mean of the 1 of 2 runs that reached it)" in v and "not every run reached the target" in v
    assert "one seed" not in v  # two seeds each: the missing spread is a run that never got there


def test_results_tables_on_a_pruning_sweep_under_way(tmp_path, capsys):
    from simulations.papers import results_tables

    sweep = tmp_path / "pruning-cifar10-full"
    _fake_sweep(sweep)
    index = pd.read_csv(sweep / "index.csv")
    index = index[(index.seed == 0) | (index["pruning.ratio"] == 0.1)]  # seed 1 has only rho = 0.1 so far
    index.to_csv(sweep / "index.csv", index=False)
    results_tables.sweep(tmp_path, "pruning-cifar10-full")
    out = capsys.readouterr().out
    assert "mean ± 95% CI over 1–2 seeds (no ± where one)" in out
    assert "fitted per seed (one partition each, 1 with two ratios or more)" in out
    # per seed (seed order), late-window mean (2 rounds: the last one), virtual time and energy at the end
    assert "| 0.1 | warmup-loss | 0, 1 | 0.440, 0.450 | 0.445 | 2 | 2 | 1 |" in out
    assert "| 0.5 | random | 0 | 0.500 | 0.5 | 2 | 10 | 5 |" in out
    # warm-up loss minus random, paired by seed, where both ran; no line for pairs never run
    assert ("rho 0.1: warmup-loss minus random, paired by seed (0, 1), points: final +10.0, +10.0 (mean +10.0 ± 0.0)"
            in out)
    assert "rho 0.5: warmup-loss minus random, paired by seed (0), points: final +10.0 (mean +10.0); last" in out
    assert "random-warmup, paired" not in out
    assert (tmp_path / "pruning-cifar10-full-accuracy-vs-rho.png").exists()


def test_results_tables_separates_the_warm_up_epoch_from_selection(tmp_path, capsys):
    import shutil

    from simulations.papers import results_tables

    sweep = tmp_path / "pruning-cifar10-full"
    _fake_sweep(sweep)
    index = pd.read_csv(sweep / "index.csv")
    added = []
    for seed in (0, 1):  # random pruning after the warm-up epoch: random + 3 points at rho = 0.1
        src, rid = (f"pruning.method={m}__pruning.ratio=0.1__seed={seed}" for m in ("random", "random-warmup"))
        shutil.copytree(sweep / src, sweep / rid)
        r = pd.read_csv(sweep / rid / "rounds.csv")
        r.assign(accuracy=r.accuracy + 0.03).to_csv(sweep / rid / "rounds.csv", index=False)
        added.append({**index[index.run_id == src].iloc[0].to_dict(), "run_id": rid, "path": rid,
                      "pruning.method": "random-warmup"})
    pd.concat([index, pd.DataFrame(added)]).to_csv(sweep / "index.csv", index=False)
    results_tables.sweep(tmp_path, "pruning-cifar10-full")
    out = capsys.readouterr().out
    # the three columns of docs/results.md's paired table: warm-up alone, selection after it, and both
    assert "rho 0.1: random-warmup minus random, paired by seed (0, 1), points: final +3.0, +3.0 (mean +3.0" in out
    assert "rho 0.1: warmup-loss minus random-warmup, paired by seed (0, 1), points: final +7.0, +7.0" in out
    assert "rho 0.1: warmup-loss minus random, paired by seed (0, 1), points: final +10.0, +10.0" in out
    assert "rho 0.5: random-warmup minus random" not in out  # never run at rho = 0.5


def _fake_fl_sweep(sweep, seeds_of, acc):
    """A selection sweep: for each method, the given seeds; final accuracy acc[method] (+1 point a seed for cis)."""
    rows = []
    for method, seeds in seeds_of.items():
        for seed in seeds:
            rid = f"selection.method={method}__seed={seed}"
            d = sweep / rid
            d.mkdir(parents=True)
            final = acc[method] + 0.01 * seed * (method == "cis")
            pd.DataFrame({"server_round": [1, 2], "accuracy": [0.1, final], "loss": [2.0, 1.5],
                          "virtual_time_s": [10.0, 20.0], "energy_cum_j": [5.0, 10.0]}).to_csv(d / "rounds.csv", index=False)
            pd.DataFrame({"server_round": [1, 2], "device": ["rpi4"] * 2, "status": ["ok"] * 2,
                          "sim_time_s": [1.0] * 2, "sim_energy_j": [2.0] * 2, "sim_train_s": [0.5] * 2,
                          "sim_select_s": [0.1] * 2, "sim_comm_s": [0.4] * 2}).to_csv(d / "clients.csv", index=False)
            (d / "config.json").write_text(json.dumps({"run": {"seed": seed}}))
            (d / "summary.json").write_text("{}")
            rows.append({"run_id": rid, "selection.method": method, "seed": seed, "status": "done", "path": rid,
                         "wall_s": 1.0})
    pd.DataFrame(rows).to_csv(sweep / "index.csv", index=False)


def test_results_tables_on_one_method_and_on_seeds_only(tmp_path, capsys):
    from simulations.papers import results_tables

    _fake_fl_sweep(tmp_path / "titan-only", {"titan": (0, 1)}, {"titan": 0.40})  # no rs to take a target from
    results_tables.sweep(tmp_path, "titan-only")
    assert "| titan | 0.4 | 0 | 2 | 0 |" in capsys.readouterr().out
    _fake_fl_sweep(tmp_path / "seeds-only", {"titan": (0, 1, 2)}, {"titan": 0.40})
    index = pd.read_csv(tmp_path / "seeds-only" / "index.csv")
    index.drop(columns=["selection.method"]).to_csv(tmp_path / "seeds-only" / "index.csv", index=False)  # no --grid
    results_tables.sweep(tmp_path, "seeds-only")
    assert "| seeds-only | 0.4 | 0 | 3 |" in capsys.readouterr().out  # one group of 3 runs


def test_results_tables_pairs_titan_with_every_baseline(tmp_path, capsys):
    from simulations.papers import results_tables

    _fake_fl_sweep(tmp_path / "fl", {"titan": (0, 1), "rs": (0, 1), "cis": (0, 1), "is": (0,)},
                   {"titan": 0.40, "rs": 0.38, "cis": 0.41, "is": 0.30})
    results_tables.sweep(tmp_path, "fl")
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ", paired by seed" in ln]
    assert [ln.split(", paired")[0] for ln in lines] == ["titan minus rs", "titan minus cis", "titan minus is",
                                                          "cis minus rs"]
    assert "titan minus rs, paired by seed (0, 1), points: final +2.0, +2.0 (mean +2.0 ± 0.0)" in out
    assert "titan minus cis, paired by seed (0, 1), points: final -1.0, -2.0" in out
    assert "titan minus is, paired by seed (0), points: final +10.0 (mean +10.0);" in out
    assert "cis minus rs, paired by seed (0, 1), points: final +3.0, +4.0" in out


def test_the_device_timeline_of_a_large_fleet_draws_an_even_spread_of_its_devices():
    from fedtitan.results.plots import TIMELINE_DEVICES, device_timeline

    n, rounds = 500, 3
    fleet = pd.DataFrame({"server_round": np.repeat(np.arange(1, rounds + 1), n),
                          "virtual_time_s": np.repeat(np.arange(rounds) * 10.0, n),
                          "partition_id": np.tile(np.arange(n), rounds), "device": "rpi4", "available": 1,
                          "speed_factor": 0.5, "select_share": 0.7, "bandwidth_factor": 1.0, "sampled": 0,
                          "included": 0})
    fleet.loc[fleet.partition_id == n - 1, ["sampled", "included"]] = 1
    ax = device_timeline(fleet).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert len(labels) == TIMELINE_DEVICES and labels[0] == "0 rpi4" and labels[-1] == f"{n - 1} rpi4"
    assert ax.get_title() == f"{TIMELINE_DEVICES} of {n} devices, evenly spread"
    small = device_timeline(fleet[fleet.partition_id < 10]).axes[0]
    assert len(small.get_yticklabels()) == 10 and small.get_title() == ""
