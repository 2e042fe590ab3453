"""What a sweep's analysis reads from the data it has (issue 44, items 1, 3 and 9): settings given
once with --set, the caveats of a time-to-accuracy verdict, clipped accuracy intervals, and one
line (never a traceback) where a table or figure cannot be made."""

import json
import tomllib
from pathlib import Path

import pandas as pd
import pytest

import fedtitan
from fedtitan.errors import FedtitanError
from fedtitan.results import analysis
from fedtitan.results.report import build_report
from fedtitan.results.views import Sweep
from simulations.cli import main


def _sweep(root: Path, grid: dict[str, list], config: dict, seeds=(0, 1), acc=None, rounds=(1, 2, 3, 4, 5),
           classes: int | None = 10) -> None:
    """A hand-made sweep folder: every combination of ``grid`` x ``seeds``; each run's config.json
    is ``config`` plus its grid values; ``acc(values, seed)`` gives its accuracies per round (NaN:
    not evaluated that round)."""
    import itertools

    keys = list(grid)
    rows = []
    for values in itertools.product(*grid.values()):
        for seed in seeds:
            point = dict(zip(keys, values, strict=True))
            rid = "__".join(f"{k}={v}" for k, v in point.items()) + f"__seed={seed}"
            d = root / rid
            d.mkdir(parents=True)
            a = acc(point, seed) if acc else [0.2 + 0.1 * r for r in range(len(rounds))]
            ratio = float(point.get("pruning.ratio", config.get("pruning", {}).get("ratio", 1.0)))
            pd.DataFrame({"server_round": list(rounds), "accuracy": a, "loss": [1.0] * len(rounds),
                          "virtual_time_s": [10.0 * r for r in rounds], "energy_cum_j": [5.0 * r for r in rounds]}
                         ).to_csv(d / "rounds.csv", index=False)
            pd.DataFrame({"server_round": [1, 1], "device": ["rpi4", "orin-nano"], "sim_time_s": [ratio, ratio / 2],
                          "sim_energy_j": [3 * ratio, 2 * ratio], "sim_train_s": [ratio, ratio / 2]}
                         ).to_csv(d / "clients.csv", index=False)
            cfg = json.loads(json.dumps(config))
            cfg.setdefault("run", {})["seed"] = seed
            for k, v in point.items():
                section, _, name = k.partition(".")
                cfg.setdefault(section, {})[name] = v
            (d / "config.json").write_text(json.dumps(cfg))
            if classes:
                pd.DataFrame([[0, 10, classes, *([1] * classes)]],
                             columns=["partition_id", "n", "classes", *[f"class_{c}" for c in range(classes)]]
                             ).to_csv(d / "partition.csv", index=False)
            rows.append({"run_id": rid, **point, "seed": seed, "status": "done", "path": rid, "wall_s": 1.0})
    pd.DataFrame(rows).to_csv(root / "index.csv", index=False)


# ---------------------------------------------------------------- item 1: settings given once


def test_ratio_sections_when_the_pruning_method_is_set_once(tmp_path, capsys):
    """The issue's sweep: --grid pruning.ratio --grid fleet.name --set pruning.method=warmup-loss."""
    _sweep(tmp_path, {"pruning.ratio": [0.1, 0.3, 0.5], "fleet.name": ["jetson-lab", "phones"]},
           {"pruning": {"method": "warmup-loss"}})
    html = build_report(tmp_path)[0].read_text()
    assert "Accuracy vs pruning ratio" in html and "Training time and energy vs rho (linear fit)" in html
    rounds, clients, params = analysis.load_sweep(tmp_path)
    assert params == ["pruning.ratio", "fleet.name"] and set(rounds["pruning.method"]) == {"warmup-loss"}
    fits = analysis.cost_vs_ratio(clients, by=["fleet.name"])
    assert len(fits) == 4 and set(fits["fleet.name"]) == {"jetson-lab", "phones"}  # a fit per fleet, not mixed
    assert main(["plot", "accuracy-ratio", str(tmp_path), "-o", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert Sweep(tmp_path).plot("accuracy-ratio") is not None
    assert len(Sweep(tmp_path).final_accuracy(by=["pruning.method", "pruning.ratio"])) == 3  # a set-once column


def test_accuracy_ratio_without_ratios_is_one_line(tmp_path, capsys):
    _sweep(tmp_path, {"selection.method": ["titan", "rs"]}, {})
    assert main(["plot", "accuracy-ratio", str(tmp_path), "-o", str(tmp_path / "r.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "needs runs at two or more pruning.ratio values" in err
    assert "only pruning.ratio=1" in err  # the default, read from the runs' configs
    with pytest.raises(FedtitanError, match="two or more pruning.ratio values") as info:
        fedtitan.load(tmp_path).plot("accuracy-ratio")
    assert "\n" not in str(info.value)


def test_small_real_sweep_with_the_method_set_once(tmp_path, capsys):
    out = tmp_path / "sw"
    args = ["sweep", "quickstart", "--grid", "pruning.ratio=0.3,0.6", "--seeds", "1", "--quiet", "--out", str(out)]
    for o in ("pruning.method=warmup-loss", "run.rounds=1", "simulation.engine=local", "data.num_clients=4",
              "tracking.report=false"):
        args += ["--set", o]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "No time-to-accuracy table" in printed  # no rs arm: said in one line
    html = (out / "report.html").read_text()
    assert "Accuracy vs pruning ratio" in html and "No time-to-accuracy table" in html
    assert main(["plot", "accuracy-ratio", str(out), "-o", str(tmp_path / "r.png")]) == 0


# ---------------------------------------------------------------- item 3: the verdict's caveats


def _tta_sweep(root: Path, rounds=(1, 2, 3, 4, 5, 6, 7, 8), titan=None, rs=None, classes=10) -> None:
    titan = titan or [0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80]
    rs = rs or [0.10, 0.15, 0.20, 0.25, 0.30, 0.35, 0.40, 0.45]
    _sweep(root, {"selection.method": ["titan", "rs"]}, {}, seeds=(0, 1, 2), rounds=rounds, classes=classes,
           acc=lambda p, s: [None if a is None else a + 0.001 * s for a in (titan if p["selection.method"] == "titan" else rs)])


def test_no_caveat_on_a_well_measured_comparison(tmp_path):
    _tta_sweep(tmp_path)
    v = Sweep(tmp_path).time_to_accuracy(target=0.42).attrs["verdict"]
    assert "sooner than rs" in v and "Caveat" not in v


def test_caveat_target_near_chance(tmp_path, capsys):
    _tta_sweep(tmp_path, titan=[0.05, 0.08, 0.10, 0.12, 0.2, 0.3, 0.4, 0.5],
               rs=[0.05, 0.06, 0.07, 0.09, 0.11, 0.12, 0.13, 0.14])
    v = Sweep(tmp_path).time_to_accuracy(target=0.109).attrs["verdict"]
    assert "at or near chance (0.100 for 10 classes)" in v
    assert main(["report", str(tmp_path), "--target", "0.109"]) == 0
    assert "near chance" in capsys.readouterr().out
    assert "near chance" in (tmp_path / "report.html").read_text()
    # 0.3 is three times chance
    assert "chance" not in Sweep(tmp_path).time_to_accuracy(target=0.3).attrs["verdict"]


def test_caveat_too_few_evaluations(tmp_path):
    _tta_sweep(tmp_path, titan=[0.1, 0.5, 0.6, 0.7, 0.8, 0.8, 0.8, 0.8])
    v = Sweep(tmp_path).time_to_accuracy(target=0.45).attrs["verdict"]
    assert "reached within 2 evaluations (titan by evaluation 2)" in v


def test_caveat_sparse_evaluation(tmp_path):
    """A 5-round run evaluated at round 5 only (eval_every = 10): the time to target is the run's length."""
    _tta_sweep(tmp_path, rounds=(1, 2, 3, 4, 5), titan=[None, None, None, None, 0.5],
               rs=[None, None, None, None, 0.3])
    table = Sweep(tmp_path).time_to_accuracy()
    v = table.attrs["verdict"]
    assert "evaluated only every 5 rounds" in v and "within 2 evaluations" in v
    assert set(table.eval_every) == {5.0}


def test_presets_evaluate_often_enough_for_their_own_rounds():
    """At least 10 evaluations over a preset's rounds, so its time to accuracy is measured."""
    for f in sorted(Path(fedtitan.__file__).parent.glob("presets/*.toml")):
        cfg = tomllib.loads(f.read_text())
        rounds, every = cfg["run"].get("rounds", 1), cfg.get("server", {}).get("eval_every", 1)
        assert rounds // every >= 10, f"{f.name}: {rounds} rounds, eval_every {every}"


# ---------------------------------------------------------------- item 9: intervals and missing tables


def test_accuracy_interval_is_clipped(tmp_path):
    rounds = pd.DataFrame({"run_id": ["a", "b", "c", "d"], "server_round": 1, "g": ["x", "x", "y", "y"],
                           "seed": [0, 1, 0, 1], "accuracy": [0.99, 0.80, 0.01, 0.20]})
    final = analysis.final_accuracy(rounds, ["g"])
    assert (final.final_acc_mean + final.final_acc_ci95).max() > 1  # the t-interval over 2 seeds leaves [0, 1]
    assert final.final_acc_hi.max() == 1.0 and final.final_acc_lo.min() == 0.0
    from simulations.papers.markdown import accuracy_pm as _pm

    assert _pm(0.895, 0.15) == "0.895 (0.745–1.000)" and _pm(0.5, 0.1) == "0.500 ± 0.100"


def test_no_rs_arm_says_why_there_is_no_tta_table(tmp_path, capsys):
    _sweep(tmp_path, {"selection.method": ["titan", "is"]}, {})
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "time-to-accuracy" in ln]
    assert len(lines) == 1 and "no random-selection arm" in lines[0] and "--target" in lines[0]
    assert "no random-selection arm" in (tmp_path / "report.html").read_text()
