"""Print the markdown tables of docs/results.md from the result folders.

    python -m simulations.papers.results_tables docs/results
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, cast

import pandas as pd

from fedtitan.errors import FedtitanError
from fedtitan.fileio import table_path
from fedtitan.results import analysis
from simulations.papers.markdown import accuracy_pm
from simulations.papers.markdown import md_table as _md


def single_device(root: Path) -> None:
    frames = []
    for name in ("single-device", "single-device-titan-variants", "single-device-titan-stratified"):
        f = root / name / "curves.csv"
        if f.exists():
            d = pd.read_csv(f)
            if name == "single-device":
                d["method"] = d["method"].replace({"titan": "titan (sqeuclidean, stale, unstratified)"})
            elif name == "single-device-titan-variants":
                d["method"] = d["method"].replace({"titan": "titan (euclidean, unstratified)",
                                                   "titan:coarse=random": "titan (random coarse)",
                                                   "titan:metric=sqeuclidean": "titan (sqeuclidean, unstratified)"})
            else:
                d["method"] = d["method"].replace({"titan": "titan (default: euclidean, stratified)"})
            frames.append(d)
    if not frames:
        return
    df = pd.concat(frames)
    last = df[df.step == df.step.max()]
    g = last.groupby("method").agg(final_acc_mean=("accuracy", "mean"), final_acc_sd=("accuracy", "std"),
                                   seeds=("seed", "nunique"), select_ms_per_step=("select_ms_per_step", "mean"),
                                   train_ms_per_step=("train_ms_per_step", "mean")).reset_index()
    rs = float(g.loc[g.method == "rs", "final_acc_mean"].iloc[0])
    curve = df.groupby(["method", "step"]).accuracy.mean().reset_index()
    g["steps_to_rs_final"] = g.method.map(
        {m: (int(c[c.accuracy >= rs].step.min()) if (c.accuracy >= rs).any() else float("nan"))
         for m, c in curve.groupby("method")})
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    sns.lineplot(df, x="step", y="accuracy", hue="method", errorbar="sd", ax=ax)
    ax.set_title("CIFAR-10, one device, small CNN, v=100, B=10, buffer 30 (3 seeds, sd bands)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(root / "single-device-all.png", dpi=120)
    print("### Single device\n")
    print(_md(g.sort_values("final_acc_mean", ascending=False)))
    print()


def _seeds(final: pd.DataFrame) -> str:
    """How many seeds the cells of a final-accuracy table average (a sweep under way has fewer in some)."""
    lo, hi = int(final.runs.min()), int(final.runs.max())
    return f"{hi} seed(s)" if lo == hi else f"{lo}–{hi} seeds (no ± where one)"


def sweep(root: Path, name: str) -> None:
    """Tables (printed) and figures (``NAME-*.png`` next to the folder) of one sweep."""
    from fedtitan.results import plots
    from fedtitan.results.report import pruning_gap

    d = root / name
    if not (d / "index.csv").exists():
        return
    try:
        rounds, clients, params = analysis.load_sweep(d)
    except FedtitanError as exc:
        print(f"### {name}\n\n({exc})\n")
        return
    by = [p for p in params if rounds[p].nunique() > 1] or list(params)  # one method, several seeds: keep it
    if not by:  # seeds only (no --grid): the sweep is one group
        rounds, by = rounds.assign(sweep=name), ["sweep"]
    methods = set(rounds["selection.method"]) if "selection.method" in by else set()
    print(f"### {name}\n")
    if "fleet.name" in by:
        fleets(root, name, rounds, clients, by)
    elif "server.strategy" in by:
        strategies(root, name, rounds, by)
    elif "server.policy" in by:
        policies(root, name, rounds, clients, by)
    elif "rs" in methods:  # a selection sweep; random selection sets the target
        table, target = analysis.tta_table(rounds, by)
        print(f"target accuracy = {target:.4f} (random selection's final accuracy)\n")
        table = table.sort_values("final_acc_mean", ascending=False)
        # selection quality apart from its cost: rounds to the target, and where a client round's
        # simulated time goes (train / select / communicate), per method
        rtt = {rid: analysis.time_to_accuracy(c.assign(virtual_time_s=c.server_round), target)[0]
               for rid, c in rounds.groupby("run_id")}
        per_run = rounds.groupby("run_id")[by].first().assign(rounds_to_target=pd.Series(rtt))
        table = table.merge(per_run.groupby(by).rounds_to_target.mean().reset_index(), on=by, how="left")
        ok = clients[clients.status == "ok"]
        cols = ["sim_train_s", "sim_select_s", "sim_comm_s", *(["buffer_size"] if "buffer_size" in ok else [])]
        phases = ok.groupby(by, dropna=False)[cols].mean().reset_index()
        table = table.merge(phases, on=by, how="left")
        table["final_acc"] = [accuracy_pm(m, c) for m, c in zip(table.final_acc_mean, table.final_acc_ci95, strict=True)]
        print(_md(table[[*by, "final_acc", "final_acc_sd", "runs", "tta_s", "energy_to_target_j", "reached",
                         "speedup_vs_rs"]]))
        print("\nper client round (simulated seconds, mean): where the time goes; rounds_to_target ignores cost\n")
        print(_md(table[[*by, "rounds_to_target", *cols]]))
        print("\nper seed, the mean accuracy over the last sixth of the rounds (a final accuracy is one evaluation), "
              "and the simulated cost of the whole run (mean over seeds)\n")
        print(_md(analysis.per_seed(rounds, by).merge(_ends(rounds, by).reset_index(), on=by)))
        if by == ["selection.method"] and "titan" in methods:
            for other in sorted(methods - {"titan"}, key=lambda m: (m != "rs", m)):
                _paired(rounds, "selection.method", "titan", other)
            if {"cis", "rs"} <= methods:  # Titan's fine stage alone vs random
                _paired(rounds, "selection.method", "cis", "rs")
        print("\n" + analysis.verdict(table, by, target))
        if "titan" in methods:
            others = table[table["selection.method"] != "titan"]
            best = others.sort_values("tta_s").iloc[0]
            t = table[table["selection.method"] == "titan"].iloc[0]
            print(f"\ntitan: {100 * (t.final_acc_mean - others.final_acc_mean.max()):+.2f} points vs the best other "
                  f"final accuracy; time to target {best.tta_s / t.tta_s:.2f}x the fastest other method "
                  f"({best['selection.method']})")
        _curves(root, name, rounds, by, target)
    else:
        pruning = {"pruning.method", "pruning.ratio"} <= set(params)  # both swept (load_sweep fills both anyway)
        final = analysis.final_accuracy(rounds, ["pruning.method", "pruning.ratio"] if pruning else by)
        if pruning:
            wide = final.assign(acc=[accuracy_pm(m, c) for m, c in zip(final.final_acc_mean, final.final_acc_ci95, strict=True)])
            wide = wide.pivot(index="pruning.ratio", columns="pruning.method", values="acc").reset_index()
            gap = pruning_gap(final)
            wide = wide.merge(gap.assign(gap_points=(gap.gap * 100).round(1)).drop(columns="gap"),
                              on="pruning.ratio", how="left")
            print(f"final accuracy, mean ± 95% CI over {_seeds(final)}; gap = warm-up-loss minus random, points\n")
            print(_md(wide.astype(object).fillna("")))
            keys = ["pruning.ratio", "pruning.method"]
            print("\nper seed, the mean accuracy over the last sixth of the rounds, and the simulated cost (mean "
                  "over seeds of the virtual time and the fleet's energy at the end)\n")
            print(_md(analysis.per_seed(rounds, keys).merge(_ends(rounds, keys).reset_index(), on=keys)
                      .sort_values(keys)))
            for rho, at in rounds.groupby("pruning.ratio"):
                for a, b in (("random-warmup", "random"),  # the warm-up epoch alone
                             ("warmup-loss", "random"), ("warmup-loss", "random-warmup"),
                             ("warmup-loss-stratified", "random-warmup"), ("warmup-loss-stratified", "warmup-loss")):
                    _paired(at, "pruning.method", a, b, f"rho {rho:g}: ")
            plots.accuracy_vs_ratio(final).savefig(root / f"{name}-accuracy-vs-rho.png", dpi=120)
        else:
            print(_md(final))
        fits = analysis.cost_vs_ratio(clients)
        if len(fits):
            print()
            print(_md(fits))
            if "seed" in clients.columns and clients.seed.nunique() > 1:  # seeds differ in partitions
                per_seed = [analysis.cost_vs_ratio(g) for _, g in clients.groupby("seed")]
                r2 = [f.r2.min() for f in per_seed if len(f)]  # a seed with one ratio so far has no fit
                if r2:
                    print(f"\nfitted per seed (one partition each, {len(r2)} with two ratios or more): "
                          f"lowest R^2 = {min(r2):.4f}")
            per_run = analysis.cost_per_run(clients)
            plots.cost_vs_ratio(per_run, fits).savefig(root / f"{name}-cost-vs-rho.png", dpi=120)
    print()


# The accuracy a sweep across fleets is read at (time and energy to it), where no arm sets one.
FLEET_TARGETS = {"fleets-pruning": 0.4}


def fleets(root: Path, name: str, rounds: pd.DataFrame, clients: pd.DataFrame, by: list[str]) -> None:
    """A sweep across named fleets: time and energy to the target per fleet and arm, the arms
    paired by seed within each fleet, and the device tiers' costs within each fleet."""
    from fedtitan.results import plots

    target = FLEET_TARGETS.get(name)
    table, target = analysis.tta_table(rounds, by, target)
    print(f"target accuracy = {target:.4f}\n")
    table["final_acc"] = [accuracy_pm(m, c) for m, c in zip(table.final_acc_mean, table.final_acc_ci95, strict=True)]
    print(_md(table[[*by, "final_acc", "final_acc_sd", "runs", "tta_s", "energy_to_target_j", "reached"]]))
    arms = [c for c in by if c not in ("fleet.name", "pruning.method", "selection.method")]
    key = "pruning.method" if "pruning.method" in by else "selection.method" if "selection.method" in by else None
    if key is not None:
        values = sorted(rounds[key].unique(), key=lambda v: (v in ("rs", "random"), v))  # the baseline second
        for (fleet, *rest), at in rounds.groupby(["fleet.name", *arms]):
            label = " ".join([str(fleet), *(f"{a} {v}" for a, v in zip(arms, rest, strict=True))]) + ": "
            for i, a in enumerate(values):
                for b in values[i + 1:]:
                    _paired(at, key, a, b, label)
    print("\nper device tier within each fleet (client rounds, mean simulated seconds and joules)\n")
    print(_md(analysis.tier_costs(clients, ["fleet.name"])))
    plots.per_fleet(rounds.assign(within=rounds[[c for c in by if c != "fleet.name"]].astype(str)
                                  .agg(" ".join, axis=1)), "within").savefig(root / f"{name}-per-fleet.png", dpi=110)


def _paired(rounds: pd.DataFrame, key: str, a: str, b: str, prefix: str = "") -> None:
    """One line: ``a`` minus ``b`` paired by seed, in accuracy points (nothing if no seed has both)."""
    g = analysis.paired_gap(rounds, key, a, b)
    if g is None:
        return

    def pts(xs: list[float]) -> str:
        return ", ".join(f"{100 * x:+.1f}" for x in xs)

    def mean(m: float, h: float) -> str:
        return f"{100 * m:+.1f}" + ("" if math.isnan(h) else f" ± {100 * h:.1f}")

    print(f"\n{prefix}{a} minus {b}, paired by seed ({', '.join(map(str, g['seeds']))}), points: final "
          f"{pts(g['final'])} (mean {mean(g['final_mean'], g['final_ci95'])}); last sixth of the rounds "
          f"{pts(g['late'])} (mean {mean(g['late_mean'], g['late_ci95'])})")


def _ends(rounds: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean over seeds of each run's virtual time and cumulative energy at its last round."""
    last = rounds.sort_values("server_round").groupby("run_id").tail(1)
    return last.groupby(by).agg(virtual_time_end_s=("virtual_time_s", "mean"), energy_end_j=("energy_cum_j", "mean"))


def _curves(root: Path, name: str, rounds: pd.DataFrame, by: list[str], target: float | None = None) -> None:
    """``NAME-accuracy-vs-time.png``: one curve per group (seeds averaged per evaluated round)."""
    from fedtitan.results import plots

    hue = rounds[by].astype(str).agg(" ".join, axis=1)
    plots.accuracy_vs_time(rounds.assign(method=hue), "method", target=target).savefig(
        root / f"{name}-accuracy-vs-time.png", dpi=120)


def strategies(root: Path, name: str, rounds: pd.DataFrame, by: list[str]) -> None:
    """Selector x aggregation strategy: final accuracy, and Titan's time to random selection's
    final accuracy under the same strategy."""

    final = analysis.final_accuracy(rounds, by)
    final["acc"] = [accuracy_pm(m, c) for m, c in zip(final.final_acc_mean, final.final_acc_ci95, strict=True)]
    wide = final.pivot(index="server.strategy", columns="selection.method", values="acc").reset_index()
    print(f"final accuracy, mean ± 95% CI over {_seeds(final)}\n")
    print(_md(wide.astype(object).fillna("")))
    rows = []
    for strategy, r in rounds.groupby("server.strategy"):
        table, target = analysis.tta_table(r, ["selection.method"])
        for _, t in table.iterrows():
            rows.append({"server.strategy": strategy, "selection.method": t["selection.method"], "target": target,
                         "tta_s": t.tta_s, "reached": f"{int(t.reached)}/{int(t.runs)}",
                         "speedup_vs_rs": t.speedup_vs_rs})
    print("\ntime to random selection's final accuracy under the same strategy (virtual s, mean of runs that got there)\n")
    print(_md(pd.DataFrame(rows)))
    _curves(root, name, rounds, by)


def policies(root: Path, name: str, rounds: pd.DataFrame, clients: pd.DataFrame, by: list[str]) -> None:
    """Deadline policies on a living fleet: accuracy, virtual time, energy, who was left out."""

    table, target = analysis.tta_table(rounds, by, baseline=("server.policy", "wait-all"))
    ends = _ends(rounds, by)
    counts = clients.groupby(by).status.value_counts(normalize=True).unstack(fill_value=0.0)
    table = table.merge(ends.reset_index(), on=by).merge(counts.add_prefix("share_").reset_index(), on=by)
    table["final_acc"] = [accuracy_pm(m, c) for m, c in zip(table.final_acc_mean, table.final_acc_ci95, strict=True)]
    share = [c for c in table.columns if c.startswith("share_")]
    print(f"target accuracy = {target:.4f} (wait-all's final accuracy); shares are of sampled client rounds\n")
    print(_md(table[[*by, "final_acc", "runs", "virtual_time_end_s", "energy_end_j", "tta_s", "speedup_vs_wait-all",
                     *share]]))
    print("\n" + analysis.verdict(table, by, target))
    _curves(root, name, rounds, by, target)


def single_device_conditions(root: Path) -> None:
    """Noisy streams and fluctuating idle compute (``single_device.py`` folders): final accuracy
    per condition and method, and the simulated pipelined clock where it was kept."""
    for name in ("single-device-noise", "single-device-idle"):
        files = sorted((root / name).glob("**/curves.csv"))
        if not files:
            continue
        frames = [pd.read_csv(f).assign(condition=f.parent.name if f.parent.name != name else "walk") for f in files]
        df = pd.concat(frames)
        last = df[df.step == df.step.max()]
        agg = {"final_acc_mean": ("accuracy", "mean"), "final_acc_sd": ("accuracy", "std"), "seeds": ("seed", "nunique")}
        agg |= {c: (c, "mean") for c in ("sim_time_s", "buffer_mean") if c in last.columns}
        g = last.groupby(["condition", "method"]).agg(**agg).reset_index()
        print(f"### {name}\n")
        print(_md(g.sort_values(["condition", "final_acc_mean"], ascending=[True, False])))
        print()


def cis_variance(root: Path) -> None:
    """``simulations.papers.cis_variance``: C-IS's exact variance on logged buffers, per training phase."""
    f = root / "cis-variance" / "buffers.csv"
    if not f.exists():
        return
    df = pd.read_csv(f).dropna(subset=["cis"])
    df["phase"] = pd.cut(df.step, bins=[-1, 99, 499, df.step.max()], labels=["steps 0-99", "100-499", "500-end"])
    g = df.assign(**{f"{k}/uniform": df[k] / df.uniform for k in ("cis", "is", "uniform_no_replacement")}).groupby(
        "phase", observed=True)[["cis/uniform", "is/uniform", "uniform_no_replacement/uniform"]].median()
    print("### cis-variance\n\nmedian ratio of the batch gradient's total variance to uniform draws, per phase "
          f"({len(df)} buffers, {df.seed.nunique()} seeds)\n")
    print(_md(g.reset_index()))
    print(f"\nC-IS below a uniform subset on {100 * (df.cis < df.uniform_no_replacement).mean():.0f}% of buffers\n")


def pruning_kept(root: Path) -> None:
    """``simulations.papers.pruning_kept``: the label mix warm-up-loss pruning keeps on each client vs a random subset."""
    from simulations.papers import pruning_kept as pk

    d = root / "pruning-kept"
    if not table_path(d, "clients.csv").exists():
        return
    clients, classes, fleet = (pd.read_csv(table_path(d, f"{n}.csv")) for n in ("clients", "classes", "fleet"))
    s = pk.summarise(clients, classes, fleet)
    print(f"### pruning-kept\n\nmean over {clients.seed.nunique()} seed(s) x {clients.client.nunique()} clients: "
          "total-variation distance of the kept label mix from the client's (tv) and of the fleet's pooled kept "
          "set from the training set; shares of the client's rare classes (under 10% of its data) and of its "
          "top class, before and after\n")
    print(_md(pd.DataFrame(s["per_rho_method"])))
    r = cast(dict[str, Any], s["spearman_share_vs_loss"])
    print(f"\nrank correlation of a class's share of a client's data with its mean warm-up loss: median "
          f"{r['median']:.2f}, negative on {r['negative_share']:.0%} of {r['clients']} clients\n")


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results")
    single_device(root)
    if (root / "single-device-table1").is_dir():  # Titan's Table 1, model by model
        from simulations.papers import table1

        print(table1.report(root / "single-device-table1"), end="\n\n")
    single_device_conditions(root)
    cis_variance(root)
    pruning_kept(root)
    for name in ("fl-titan-cifar10", "fl-titan-cifar10-150", "fl-titan-cifar10-full", "fl-strategies",
                 "fl-idle-compute", "fl-diurnal-policies", "pruning-cifar10", "pruning-cifar10-longer",
                 "pruning-cifar10-full", "har-selection", "har-pruning", "fleets-pruning"):
        sweep(root, name)


if __name__ == "__main__":
    main()
