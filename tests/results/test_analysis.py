import math

import numpy as np
import pandas as pd
import pytest

from fedtitan.errors import ConfigError, FedtitanError
from fedtitan.results import analysis
from simulations.sweep import expand, parse_grid


def test_grid_expansion_and_ids():
    grid = parse_grid(["selection.method=titan,rs,is", "pruning.ratio=0.1,0.5"])
    specs = expand(grid, 2, ["run.rounds=3"])
    assert len(specs) == 3 * 2 * 2
    assert len({s.run_id for s in specs}) == 12
    s0 = specs[0]
    assert s0.run_id == "selection.method=titan__pruning.ratio=0.1__seed=0"
    assert s0.overrides == ("run.rounds=3", "selection.method=titan", "pruning.ratio=0.1", "run.seed=0")
    with pytest.raises(ConfigError, match="did you mean 'selection.method'"):
        parse_grid(["selection.metod=a,b"])
    with pytest.raises(ConfigError, match="key=v1,v2"):
        parse_grid(["selection.method"])
    with pytest.raises(ConfigError, match="--seeds"):
        parse_grid(["run.seed=1,2"])
    assert parse_grid(["fleet.mix=rpi4:0.5,rpi5:0.5"]) == {"fleet.mix": ["rpi4:0.5,rpi5:0.5"]}


def test_time_to_accuracy_interpolates():
    curve = pd.DataFrame({"virtual_time_s": [10.0, 20.0, 30.0], "accuracy": [0.2, 0.4, 0.8],
                          "energy_cum_j": [100.0, 200.0, 300.0]})
    t, e = analysis.time_to_accuracy(curve, 0.6)  # halfway between 20 s and 30 s
    assert t == pytest.approx(25.0) and e == pytest.approx(250.0)
    assert analysis.time_to_accuracy(curve, 0.1) == (10.0, 100.0)
    assert all(math.isnan(v) for v in analysis.time_to_accuracy(curve, 0.9))
    with_gaps = curve.assign(accuracy=[0.2, np.nan, 0.8])  # rounds without evaluation are skipped
    assert analysis.time_to_accuracy(with_gaps, 0.5)[0] == pytest.approx(20.0)


def test_ci95_by_hand():
    # t(0.975, 3) = 3.182446; sd of [1,2,3,4] = 1.290994; /sqrt(4)
    assert analysis.ci95(pd.Series([1.0, 2, 3, 4])) == pytest.approx(3.182446 * 1.290994 / 2, rel=1e-5)
    assert math.isnan(analysis.ci95(pd.Series([1.0])))


def test_linear_fit_and_r2():
    x = np.array([0.1, 0.2, 0.5, 1.0])
    fit = analysis.linear_fit(x, 3 * x + 1)
    assert fit["slope"] == pytest.approx(3) and fit["intercept"] == pytest.approx(1) and fit["r2"] == pytest.approx(1)
    noisy = analysis.linear_fit(np.array([0.0, 1, 2, 3]), np.array([0.0, 1, 1, 3]))
    # slope 0.9, intercept 0.1 -> residuals -0.1, 0, -0.9+... computed: ss_res 0.7, ss_tot 4.75
    assert noisy["slope"] == pytest.approx(0.9) and noisy["r2"] == pytest.approx(1 - 0.7 / 4.75)


def _rounds():
    rows = []
    for method, accs in (("rs", [0.3, 0.5, 0.6]), ("titan", [0.4, 0.6, 0.7])):
        for seed in (0, 1):
            for r, a in enumerate(accs, start=1):
                rows.append({"run_id": f"{method}-{seed}", "selection.method": method, "seed": seed,
                             "server_round": r, "accuracy": a + 0.02 * seed, "virtual_time_s": 10.0 * r,
                             "energy_cum_j": 5.0 * r})
    return pd.DataFrame(rows)


def test_final_accuracy_and_tta_table():
    rounds = _rounds()
    fa = analysis.final_accuracy(rounds, ["selection.method"])
    assert fa.set_index("selection.method").loc["titan", "final_acc_mean"] == pytest.approx(0.71)
    table, target = analysis.tta_table(rounds, ["selection.method"])
    assert target == pytest.approx(0.61)  # rs's mean final accuracy
    t = table.set_index("selection.method")
    # titan seed 0 hits 0.61 between 0.6 @20 s and 0.7 @30 s -> 21 s; seed 1: 0.62 @20 s -> 20 s... (0.61-0.42)/(0.62-0.42)
    assert t.loc["titan", "tta_s"] == pytest.approx((21.0 + (10 + 10 * (0.61 - 0.42) / 0.2)) / 2)
    assert t.loc["titan", "speedup_vs_rs"] > 1.0
    assert t.loc["rs", "speedup_vs_rs"] == pytest.approx(1.0)


def test_per_seed_finals_and_late_window_mean():
    rounds = _rounds()
    rounds = rounds[~((rounds.run_id == "rs-1") & (rounds.server_round == 2))]  # one missed evaluation
    ps = analysis.per_seed(rounds, ["selection.method"], window=2 / 3).set_index("selection.method")
    # seeds in seed order; final = last evaluated accuracy; the late window is rounds 2-3 of 3
    assert ps.loc["titan", "seeds"] == "0, 1"
    assert ps.loc["titan", "final_per_seed"] == "0.700, 0.720"
    assert ps.loc["titan", "late_acc_mean"] == pytest.approx(((0.6 + 0.7) / 2 + (0.62 + 0.72) / 2) / 2)
    assert ps.loc["rs", "late_acc_mean"] == pytest.approx(((0.5 + 0.6) / 2 + 0.62) / 2)  # rs-1 has only round 3
    assert ps.loc["rs", "late_rounds"] == "2–3"
    assert analysis.per_seed(rounds, ["selection.method"]).set_index("selection.method").loc[
        "titan", "late_rounds"] == "3"  # a sixth of 3 rounds rounds to 1: the last one
    with pytest.raises(FedtitanError, match="window"):
        analysis.per_seed(rounds, ["selection.method"], window=0)


def test_paired_gap_by_seed_by_hand():
    rounds = _rounds()
    bump = (rounds["selection.method"] == "titan") & (rounds.seed == 1)
    rounds.loc[bump, "accuracy"] += 0.04  # titan minus rs: 0.10 at seed 0, 0.14 at seed 1
    extra = rounds[rounds.run_id == "titan-1"].assign(run_id="titan-2", seed=2)  # no rs partner: left out
    g = analysis.paired_gap(pd.concat([rounds, extra]), "selection.method", "titan", "rs", window=2 / 3)
    assert g is not None and g["seeds"] == [0, 1]
    assert g["final"] == pytest.approx([0.10, 0.14]) and g["final_mean"] == pytest.approx(0.12)
    assert g["final_ci95"] == pytest.approx(12.706 * 0.04 / 2 ** 0.5 / 2 ** 0.5, rel=1e-3)  # t(0.975, 1) sd / sqrt(n)
    # late window = rounds 2-3: (0.65 - 0.55) at seed 0, (0.71 - 0.57) at seed 1
    assert g["late"] == pytest.approx([0.10, 0.14])
    assert analysis.paired_gap(rounds, "selection.method", "titan", "is") is None


def test_resume_refuses_runs_made_with_other_settings(tmp_path):
    from fedtitan.config import load_config
    from simulations.sweep import sweep

    def fake_done(run_id: str, overrides: list[str]) -> None:
        d = tmp_path / run_id
        d.mkdir(parents=True)
        (d / "config.json").write_text(load_config("quickstart", overrides).to_json())
        (d / "summary.json").write_text("{}")

    fake_done("selection.method=rs__seed=0", ["run.rounds=2", "selection.method=rs", "run.seed=0"])
    with pytest.raises(ConfigError, match=r"other settings \(run.rounds: 2 -> 3\)"):
        sweep("quickstart", ["selection.method=rs"], 1, ["run.rounds=3"], tmp_path, quiet=True)
    assert not (tmp_path / "sweep.json").exists() and not (tmp_path / "index.csv").exists()  # folder untouched


def test_resume_accepts_runs_older_than_new_keys_and_other_tracking(tmp_path):
    """A run made before a config key existed was made with its default; trackers do not
    change what a run computes."""
    import json

    from fedtitan.config import load_config
    from simulations.sweep import sweep

    d = tmp_path / "selection.method=rs__seed=0"
    d.mkdir()
    old = json.loads(load_config("quickstart", ["run.rounds=2", "selection.method=rs"]).to_json())
    del old["tracking"], old["compute"]  # sections added by later versions
    (d / "config.json").write_text(json.dumps(old))
    (d / "summary.json").write_text("{}")
    sweep("quickstart", ["selection.method=rs"], 1, ["run.rounds=2", "tracking.backend=tensorboard"], tmp_path,
          quiet=True)
    assert "done" in (tmp_path / "index.csv").read_text()


def test_load_sweep_fills_keys_another_call_did_not_vary(tmp_path):
    """Two sweep calls into one folder (titan x buffer sizes, then rs): each run's missing grid
    key comes from its config.json, so the methods stay apart in tables."""
    import json

    rows = []
    for rid, method, buf in [("selection.buffer_size=auto__seed=0", "titan", "auto"),
                             ("selection.method=rs__seed=0", "rs", None)]:
        d = tmp_path / rid
        d.mkdir()
        pd.DataFrame({"server_round": [1], "accuracy": [0.5]}).to_csv(d / "rounds.csv", index=False)
        (d / "config.json").write_text(json.dumps({"selection": {"method": method, "buffer_size": buf or 30}}))
        rows.append({"run_id": rid, "selection.method": None if buf else method, "seed": 0, "status": "done",
                     "path": rid, "selection.buffer_size": buf})
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    rounds, _, params = analysis.load_sweep(tmp_path)
    got = rounds.set_index("run_id")[["selection.method", "selection.buffer_size"]].astype(str).to_dict("index")
    assert got["selection.buffer_size=auto__seed=0"] == {"selection.method": "titan", "selection.buffer_size": "auto"}
    assert got["selection.method=rs__seed=0"] == {"selection.method": "rs", "selection.buffer_size": "30"}


def test_sweep_redoes_failed_runs(tmp_path):
    """A run whose summary says it failed (no round updated the model) is not done."""
    import json

    from simulations.sweep import _done

    for name, summary in [("ok", {"rounds": 2}), ("bad", {"rounds": 2, "failed": "no round updated the global model"})]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "summary.json").write_text("{")
    assert [_done(tmp_path / n) for n in ("ok", "bad", "torn", "absent")] == [True, False, False, False]
