"""The report and ``plot staleness`` on asynchronous runs (server.mode = async), from run folders
written by hand (the columns the async loop writes; no simulation)."""

import json
import re

import pandas as pd
import pytest
from matplotlib.figure import Figure

from fedtitan.errors import FedtitanError
from fedtitan.results import plots
from fedtitan.results.report import STALENESS_CAPTION, build_report
from fedtitan.results.views import PLOT_KINDS, Run, figure, load

DEVICES = ("rpi4", "orin-nano", "jetson-nano-10w")


def _run(folder, mode="async", seed=0, steps=4, k=3):
    """A finished run folder as fedtitan writes it: config.json, rounds.csv, clients.csv, summary.json.
    Asynchronous: ``steps`` server steps of ``k`` updates; update 4 is lost and update 7 stale."""
    folder.mkdir(parents=True)
    server = {"mode": mode, "fraction": 0.5}
    if mode == "async":
        server["async"] = {"concurrency": 6, "buffer_size": k, "dispatch_threshold": 1, "staleness": "polynomial",
                           "staleness_a": 0.5, "staleness_b": 4, "max_staleness": 2, "server_lr": 1.0}
    (folder / "config.json").write_text(json.dumps({"run": {"seed": seed, "rounds": steps}, "server": server}))
    (folder / "summary.json").write_text(json.dumps({"rounds": steps, "final_accuracy": 0.4}))
    rounds, clients = [], []
    for step in range(1, steps + 1):
        row = {"server_round": step, "accuracy": 0.1 * step, "loss": 2.0 - 0.1 * step,
               "virtual_time_s": 10.0 * step, "round_time_s": 10.0, "energy_j": 1.0, "energy_cum_j": 1.0 * step,
               "clients_sampled": k, "clients_ok": k, "clients_failed": 0, "clients_dropped": 0, "updated": True}
        for i in range(k):
            n = (step - 1) * k + i  # the update's number
            status = "lost" if mode == "async" and n == 4 else "stale" if mode == "async" and n == 7 else "ok"
            c = {"server_round": step, "node_id": n % 6 + 1, "partition_id": n % 6, "device": DEVICES[n % 3],
                 "status": status, "included": status == "ok", "sim_time_s": 1.0 + n % 3, "sim_energy_j": 2.0,
                 "num_examples": 30.0}
            if mode == "async":
                c |= {"dispatch": n + 1, "dispatched_s": 10.0 * (step - 1), "arrival_s": 10.0 * step - 1,
                      "staleness": 3 if status == "stale" else n % 3 if step > 1 else 0, "model_version": step - 1}
            clients.append(c)
        if mode == "async":
            mine = [c["staleness"] for c in clients[-k:] if c["status"] == "ok"]
            row |= {"updates_included": len(mine), "updates_dropped": k - len(mine),
                    "staleness_mean": sum(mine) / len(mine), "staleness_max": max(mine), "model_version": step}
        rounds.append(row)
    pd.DataFrame(rounds).to_csv(folder / "rounds.csv", index=False)
    pd.DataFrame(clients).to_csv(folder / "clients.csv", index=False)
    return folder


def _headings(html):
    return re.findall(r"<h2>(.*?)</h2>", html)


def test_the_report_of_an_async_run_has_the_staleness_figure(tmp_path):
    run = _run(tmp_path / "async")
    path, _ = build_report(run)
    html = path.read_text()
    heads = _headings(html)
    assert "Staleness per device type" in heads
    assert "Per device tier (per update)" in heads
    assert "This run is asynchronous (server.mode = async)" in html and "is a server step" in html
    assert STALENESS_CAPTION.split(":")[0] in html
    assert html.count("data:image/png;base64") == 3  # accuracy, tiers, staleness
    assert "<th>updates</th>" in html and "<th>client_rounds</th>" not in html


def test_the_report_of_a_sync_run_is_unchanged(tmp_path):
    run = _run(tmp_path / "sync", mode="sync")
    html = build_report(run)[0].read_text()
    assert _headings(html) == ["Final accuracy (mean, sd and 95% CI over seeds)", "Accuracy vs virtual time",
                               "Per device tier", "Configs and versions"]
    assert "staleness" not in html.lower()
    assert "asynchronous" not in html and "<th>client_rounds</th>" in html


def test_a_sweep_of_sync_and_async_runs(tmp_path):
    rows = []
    for mode in ("sync", "async"):
        for seed in (0, 1):
            rid = f"server.mode={mode}__seed={seed}"
            _run(tmp_path / rid, mode=mode, seed=seed)
            rows.append({"run_id": rid, "server.mode": mode, "seed": seed, "status": "done", "path": rid, "wall_s": 1})
    pd.DataFrame(rows).to_csv(tmp_path / "index.csv", index=False)
    html = build_report(tmp_path)[0].read_text()
    assert "Staleness per device type" in _headings(html)
    assert "Per device tier (per client round or update)" in _headings(html)
    assert "Some runs are asynchronous (server.mode = async): for them," in html
    fig, _ = figure("staleness", tmp_path)  # the sync runs' rows have no staleness: left out
    assert isinstance(fig, Figure)


def test_staleness_figure_counts_lost_and_stale_updates_per_device(tmp_path):
    clients = pd.read_csv(_run(tmp_path / "async") / "clients.csv")
    fig = plots.staleness_by_device(clients)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["jetson-nano-10w\n4 updates\n0 lost, 0 stale", "orin-nano\n4 updates\n1 lost, 1 stale",
                      "rpi4\n4 updates\n0 lost, 0 stale"]
    assert ax.get_title() == "12 updates: 1 lost, 1 stale"
    assert ax.get_ylabel() == "staleness (server steps)"
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"ok", "lost", "stale"}
    sampled = plots.staleness_by_device(clients, max_dots=5).axes[0]
    assert sampled.get_title() == "12 updates: 1 lost, 1 stale (dots: a sample of 5)"


def test_plot_staleness_kind(tmp_path):
    assert "staleness" in PLOT_KINDS
    run = _run(tmp_path / "async")
    fig, what = figure("staleness", run)
    assert isinstance(fig, Figure) and what == ""
    assert isinstance(Run(run).plot("staleness"), Figure)
    sync = _run(tmp_path / "sync", mode="sync")
    with pytest.raises(FedtitanError) as err:
        load(sync).plot("staleness")
    assert str(err.value) == f"{sync} has no staleness: it is a synchronous run (server.mode = sync)"
    assert "\n" not in str(err.value)
