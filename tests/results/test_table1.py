"""simulations.papers.table1: Table 1 from single-device curves, on hand-made curves."""

import json
import sys

import numpy as np
import pandas as pd
import pytest

from simulations.papers import single_device, table1


def _curves(model: str, per_method: dict[str, list[float]], sim_per_step: dict[str, float]) -> pd.DataFrame:
    rows = []
    for m, accs in per_method.items():
        for seed, offset in enumerate((-0.01, 0.01)):
            for i, a in enumerate(accs):
                step = 100 * (i + 1)
                rows.append({"dataset": "cifar10", "model": model, "method": m, "seed": seed, "step": step,
                             "accuracy": a + offset, "loss": 1.0, "select_ms_per_step": 5.0,
                             "train_ms_per_step": 10.0, "coarse_forwards": np.nan,
                             "sim_time_s": step * sim_per_step[m], "sim_energy_j": step * sim_per_step[m] * 4.0})
    return pd.DataFrame(rows)


def test_time_to_target_is_normalised_by_rs_and_unreached_is_marked(tmp_path):
    d = tmp_path / "cnn"
    d.mkdir()
    # rs ends at 0.50 (the target) and first reaches it at step 300; titan reaches it at step
    # 200 at 1.5x rs's cost per step: 200*1.5 / (300*1) = 1.0; is never reaches it
    _curves("cnn", {"rs": [0.3, 0.4, 0.5, 0.5], "titan": [0.4, 0.55, 0.6, 0.62], "is": [0.1, 0.2, 0.3, 0.4]},
            {"rs": 1.0, "titan": 1.5, "is": 2.0}).to_csv(d / "curves.csv", index=False)
    t = table1.table(table1.combine(tmp_path)).set_index("method")
    assert t.loc["rs", "target"] == pytest.approx(0.5)
    assert t.loc["rs", "time_to_target_norm"] == pytest.approx(1.0)
    assert t.loc["titan", "time_to_target_norm"] == pytest.approx(200 * 1.5 / 300)
    assert not t.loc["is", "reached"] and t.loc["is", "time_to_target_norm"] == pytest.approx(400 * 2.0 / 300)
    assert t.loc["titan", "final_acc"] == pytest.approx(0.62)
    assert t.loc["titan", "final_acc_ci95"] == pytest.approx(12.706 * 0.01 * np.sqrt(2) / np.sqrt(2), rel=1e-3)
    assert t.loc["titan", "sim_w"] == pytest.approx(4.0)
    md = table1.markdown(t.reset_index())
    assert "| cnn | is | 2 | 0.400 ± 0.127 |  | >2.67 |  |" in md
    v = table1.verdict(t.reset_index()).iloc[0]
    assert v.titan_rank == "1 of 3" and v.verdict in ("reproduces", "partly reproduces")
    combined = pd.read_csv(tmp_path / "curves.csv")
    assert list(combined.columns[:6]) == ["dataset", "model", "method", "seed", "step", "accuracy"]


def test_runs_on_a_gpu_keep_accuracy_but_not_the_cpu_wall_times(tmp_path):
    # seed 0 on this CPU (written before the hardware column: backfilled "cpu"), seed 1 on a GPU
    d = tmp_path / "resnet50"
    d.mkdir()
    c = _curves("resnet50", {"rs": [0.3, 0.5], "titan": [0.4, 0.6]}, {"rs": 1.0, "titan": 1.2})
    gpu = c.seed == 1
    c.loc[gpu, "select_ms_per_step"] = 900.0
    c["hardware"] = np.where(gpu, "cuda: NVIDIA H200", None)
    c.to_csv(d / "curves.csv", index=False)
    df = table1.combine(tmp_path)
    assert set(df[df.seed == 0].hardware) == {"cpu"}
    t = table1.table(df).set_index("method")
    assert t.loc["titan", "seeds"] == 2 and t.loc["titan", "final_acc"] == pytest.approx(0.6)
    assert t.loc["titan", "select_ms_per_sample_here"] == pytest.approx(5.0 / 100)  # the CPU run's only
    assert t.loc["titan", "hardware"] == "cpu, cuda: NVIDIA H200"
    only_gpu = table1.table(df[df.seed == 1]).set_index("method")
    assert np.isnan(only_gpu.loc["titan", "select_ms_per_sample_here"])
    s = single_device.method_summary("titan", df[(df.step == 200) & (df.method == "titan")])
    assert s["wall_ms_on"] == "cpu" and s["select_ms_per_step"] == 5.0 and s["final_acc_mean"] == pytest.approx(0.6)
    s = single_device.method_summary("titan", c[(c.step == 200) & (c.method == "titan") & gpu])
    assert s["wall_ms_on"] == s["hardware"] == "cuda: NVIDIA H200" and s["select_ms_per_step"] == 900.0


def test_old_curves_get_the_device_clock_from_the_cost_model(tmp_path):
    # curves written before single_device billed the device clock: no dataset, model or sim_time_s
    d = tmp_path / "mobilenet_v1"
    d.mkdir()
    (d / "args.json").write_text(json.dumps({"model": "mobilenet_v1", "velocity": 100, "batch": 10, "buffer": 30}))
    pd.DataFrame([{"method": m, "seed": 0, "step": s, "accuracy": 0.1, "loss": 2.0, "select_ms_per_step": 1.0,
                   "train_ms_per_step": 1.0} for m in ("rs", "titan") for s in (100, 200)]).to_csv(d / "curves.csv",
                                                                                              index=False)
    df = table1.combine(tmp_path)
    assert set(df.model) == {"mobilenet_v1"} and set(df.dataset) == {"cifar10"}
    from fedtitan.devices import get_profile
    from fedtitan.models import build_model, count_forward_flops

    net = build_model("mobilenet_v1", (3, 32, 32), 10)
    fwd, block = count_forward_flops(net, (3, 32, 32)), count_forward_flops(net, (3, 32, 32), n_blocks=1)
    p = get_profile("jetson-nano-10w")
    for m, cf in (("rs", None), ("titan", 120)):  # titan's default: v + buffer - B forwards a step
        t, _ = single_device.device_step(m, p, forward_flops=fwd, block_flops=block, batch=10, velocity=100,
                                         buffer=30, dim=3072, coarse_forwards=cf)
        got = df[(df.method == m) & (df.step == 200)].sim_time_s.iloc[0]
        assert got == pytest.approx(200 * t)


def test_device_step_bills_titan_pipelined_and_baselines_serially():
    from fedtitan.devices import get_profile
    from fedtitan.devices.cost import fine_cost, train_cost

    p = get_profile("jetson-nano-10w")
    kw = dict(forward_flops=1e8, block_flops=2e6, batch=10, velocity=100, buffer=30, dim=3072, coarse_forwards=120)
    rs, _ = single_device.device_step("rs", p, **kw)
    assert rs == pytest.approx(train_cost(p, 1e8, 10).time_s)
    is_, _ = single_device.device_step("is", p, **kw)  # serial: train + a forward over all v
    assert is_ == pytest.approx(train_cost(p, 1e8, 10).time_s + fine_cost(p, 1e8, 100).time_s)
    titan, _ = single_device.device_step("titan", p, **kw)
    sel = fine_cost(p, 1e8, 30).time_s + 2e6 * 120 / p.select_flops
    assert titan == pytest.approx(max(train_cost(p, 1e8, 10).time_s, sel))
    titan_serial, _ = single_device.device_step("titan", p, **kw, pipeline="none")
    assert titan_serial == pytest.approx(train_cost(p, 1e8, 10).time_s + sel)


def test_paper_learning_rates():
    assert single_device.paper_lr("alexnet") == single_device.paper_lr("squeezenet") == 0.1
    assert single_device.paper_lr("mobilenet_v1") == 0.1
    assert single_device.paper_lr("resnet50") == single_device.paper_lr("resnet34") == 0.005


def test_stem_is_a_run_setting_and_partials_saved_before_it_continue(tmp_path):
    args = single_device.argparse.Namespace(**{k: 0 for k in single_device.RUN_SETTINGS})
    args.stem = "auto"
    old = single_device.PartialRun(tmp_path / "rs-seed0.npz", "rs", 0, args)
    del old.key["stem"]  # as saved before --stem existed
    old.save({"step": 2})
    assert single_device.PartialRun(tmp_path / "rs-seed0.npz", "rs", 0, args).load()["step"] == 2
    args.stem = "imagenet"
    with pytest.raises(SystemExit, match="stem='auto' \\(now 'imagenet'\\)"):
        single_device.PartialRun(tmp_path / "rs-seed0.npz", "rs", 0, args).load()
    assert single_device.model_options(args.stem) == {"stem": "imagenet"} and single_device.model_options("auto") == {}


def test_stem_for_a_model_with_one_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["single_device", "--model", "mlp", "--stem", "imagenet"])
    with pytest.raises(SystemExit):
        single_device.main()
    err = capsys.readouterr().err.strip().splitlines()
    assert "model mlp has one stem" in err[-1] and "resnet34" in err[-1]


def test_results_tables_prints_table1_beside_the_other_tables(tmp_path, capsys, monkeypatch):
    from simulations.papers import results_tables

    d = tmp_path / "single-device-table1" / "cnn"
    d.mkdir(parents=True)
    _curves("cnn", {"rs": [0.3, 0.5], "titan": [0.4, 0.6]}, {"rs": 1.0, "titan": 1.2}).to_csv(d / "curves.csv",
                                                                                             index=False)
    (tmp_path / "single-device-table1" / "resnet50").mkdir()  # a model whose first run is under way
    monkeypatch.setattr("sys.argv", ["results_tables", str(tmp_path)])
    results_tables.main()
    out = capsys.readouterr().out
    assert "| cnn | titan | 2 | 0.600" in out and "titan_rank" in out
    assert (tmp_path / "single-device-table1" / "table1.csv").exists()
