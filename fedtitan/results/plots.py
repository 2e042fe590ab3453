"""Figures from tidy tables. Each function takes DataFrames and returns a matplotlib Figure;
none computes metrics (that is :mod:`fedtitan.results.analysis`)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def accuracy_vs_time(rounds: pd.DataFrame, hue: str | None, x: str = "virtual_time_s",
                     target: float | None = None) -> Figure:
    """Accuracy against the virtual clock, one line per ``hue`` value, seed band = sd.

    Seeds of one group reach a round at different virtual times, so points are averaged per
    evaluated round: x = mean time of that round over seeds, y = mean accuracy, band = sd."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    data = rounds.dropna(subset=["accuracy"])
    keys = [hue, "server_round"] if hue else ["server_round"]
    agg = data.groupby(keys)[[x, "accuracy"]].agg(["mean", "std"]).reset_index()
    for name, g in (agg.groupby(hue) if hue else [("", agg)]):
        t, m, sd = g[(x, "mean")], g[("accuracy", "mean")], g[("accuracy", "std")].fillna(0)
        (line,) = ax.plot(t, m, marker="o", markersize=3, label=str(name) if hue else None)
        ax.fill_between(t, m - sd, m + sd, color=line.get_color(), alpha=0.15, lw=0)
    ax.set_ylabel("accuracy")
    if target is not None:
        ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.3f}")
    ax.set_xlabel("virtual time (s)" if x == "virtual_time_s" else x)
    if ax.get_legend_handles_labels()[1]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def per_fleet(rounds: pd.DataFrame, hue: str | None, fleet: str = "fleet.name") -> Figure:
    """Accuracy against virtual time (top) and against cumulative energy (bottom), one column
    per fleet, one line per ``hue`` value (mean over seeds of each evaluated round)."""
    fleets = sorted(rounds[fleet].astype(str).unique())
    fig, axes = plt.subplots(2, len(fleets), figsize=(4.2 * len(fleets), 6.5), squeeze=False, sharey=True)
    data = rounds.dropna(subset=["accuracy"]).assign(**{fleet: rounds[fleet].astype(str)})
    for col, name in enumerate(fleets):
        g = data[data[fleet] == name]
        keys = [hue, "server_round"] if hue else ["server_round"]
        agg = g.groupby(keys)[["virtual_time_s", "energy_cum_j", "accuracy"]].mean().reset_index()
        for row, x in enumerate(("virtual_time_s", "energy_cum_j")):
            ax = axes[row][col]
            for label, h in (agg.groupby(hue) if hue else [("", agg)]):
                ax.plot(h[x], h["accuracy"], marker="o", markersize=2, label=str(label) if hue else None)
            ax.set_xlabel("virtual time (s)" if x == "virtual_time_s" else "energy, all devices (J)")
            if col == 0:
                ax.set_ylabel("accuracy")
        axes[0][col].set_title(name)
    if hue and axes[0][0].get_legend_handles_labels()[1]:
        axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def accuracy_vs_ratio(final: pd.DataFrame, ratio: str = "pruning.ratio", hue: str = "pruning.method") -> Figure:
    """Final accuracy (mean and 95% CI over seeds, the interval clipped to [0, 1]) against the
    pruning ratio, one line per ``hue`` value."""
    fig, ax = plt.subplots(figsize=(6, 4))
    lo, hi = final[ratio].min(), final[ratio].max()
    for name, g in final.sort_values(ratio).groupby(hue, dropna=False):
        m = g["final_acc_mean"]
        # the interval's bounds, clipped to [0, 1] (older tables carry only the half-width)
        low = g["final_acc_lo"] if "final_acc_lo" in g else (m - g["final_acc_ci95"]).clip(0, 1)
        high = g["final_acc_hi"] if "final_acc_hi" in g else (m + g["final_acc_ci95"]).clip(0, 1)
        if g[ratio].nunique() == 1 and lo < hi:  # one ratio only (full data): a reference line
            line = ax.axhline(float(m.mean()), ls="--", lw=1.2, color="grey", label=f"{name} (rho={g[ratio].iloc[0]:g})")
            if low.notna().any():
                ax.axhspan(float(low.mean()), float(high.mean()), color=line.get_color(), alpha=0.15, lw=0)
            continue
        yerr = [(m - low).fillna(0).clip(lower=0), (high - m).fillna(0).clip(lower=0)]
        ax.errorbar(g[ratio], m, yerr=yerr, marker="o", capsize=3, label=str(name))
    ax.set_xlabel("rho (fraction kept)")
    ax.set_ylabel("final test accuracy")
    ax.legend()
    fig.tight_layout()
    return fig


def gap_vs_ratio(gap: pd.DataFrame, ratio: str = "pruning.ratio") -> Figure:
    """Accuracy gap (importance minus random pruning) against rho."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.bar(gap[ratio].astype(str), gap["gap"] * 100)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("rho (fraction kept)")
    ax.set_ylabel("accuracy gap (points)")
    fig.tight_layout()
    return fig


def cost_vs_ratio(per_run: pd.DataFrame, fits: pd.DataFrame, ratio: str = "pruning.ratio",
                  hue: str = "pruning.method") -> Figure:
    """Training time and energy against rho with the fitted lines (R^2 in the legend)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric, label in ((axes[0], "train_time_s", "training time (s)"), (axes[1], "energy_j", "energy (J)")):
        for name, g in per_run.groupby(hue):
            fit = fits[(fits[hue] == name) & (fits.metric == metric)]
            pts = ax.scatter(g[ratio], g[metric], s=14, label=None if len(fit) else str(name))
            if len(fit):
                f = fit.iloc[0]
                xs = sorted(g[ratio].unique())
                ax.plot(xs, [f.slope * x + f.intercept for x in xs], color=pts.get_facecolor()[0],
                        label=f"{name} (R²={f.r2:.3f})")
        ax.set_xlabel("rho (fraction kept)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def tier_costs(tiers: pd.DataFrame, hue: str | None = None, unit: str = "client round") -> Figure:
    """Mean simulated time and energy per client round (``unit``: per update in asynchronous
    runs), per device tier."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sns.barplot(tiers, x="device", y="time_s_mean", hue=hue, ax=axes[0])
    sns.barplot(tiers, x="device", y="energy_j_mean", hue=hue, ax=axes[1])
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    axes[0].set_ylabel(f"time per {unit} (s)")
    axes[1].set_ylabel(f"energy per {unit} (J)")
    fig.tight_layout()
    return fig


# The most dots a staleness figure draws (one per update); beyond, a seeded sample (the boxes
# and counts still use every update).
STALENESS_DOTS = 3000
STATUS_COLOURS = {"ok": "tab:blue", "lost": "tab:red", "stale": "tab:orange"}  # other statuses: grey


def staleness_by_device(clients: pd.DataFrame, hue: str | None = None, max_dots: int = STALENESS_DOTS) -> Figure:
    """Asynchronous runs: the staleness of every update that reached the server (server steps
    between the model its client started from and its arrival), per device type. A box per
    device over all its updates; without ``hue`` a dot per update coloured by its status,
    with ``hue`` a box per ``hue`` value instead. Each device's label counts its updates and
    how many were ``lost`` (offline before arrival) or ``stale`` (beyond max staleness).
    Rows without a staleness (synchronous runs of a mixed sweep) are left out."""
    from matplotlib.ticker import MaxNLocator

    data = clients.dropna(subset=["staleness"]).assign(device=lambda d: d["device"].astype(str),
                                                       status=lambda d: d["status"].astype(str))
    devices = sorted(data["device"].unique())
    counts = data.groupby("device")["status"].agg(
        n="size", lost=lambda s: int((s == "lost").sum()), stale=lambda s: int((s == "stale").sum()))
    labels = [f"{d}\n{counts.n[d]} updates\n{counts.lost[d]} lost, {counts.stale[d]} stale" for d in devices]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(devices) + 1.5), 4.2))
    if hue:
        sns.boxplot(data.assign(**{hue: data[hue].astype(str)}), x="device", y="staleness", hue=hue, order=devices,
                    ax=ax, fliersize=2)
        ax.legend(fontsize=7, title=hue, title_fontsize=7)
    else:
        sns.boxplot(data, x="device", y="staleness", order=devices, ax=ax, color="#e8e8e8", showfliers=False)
        dots = data.sample(max_dots, random_state=0) if len(data) > max_dots else data
        shown = sorted(set(dots["status"]), key=lambda s: (list(STATUS_COLOURS).index(s) if s in STATUS_COLOURS
                                                            else len(STATUS_COLOURS), s))
        sns.stripplot(dots, x="device", y="staleness", hue="status", order=devices, hue_order=shown,
                      palette={s: STATUS_COLOURS.get(s, "grey") for s in shown}, jitter=0.25, size=3.5, alpha=0.7,
                      ax=ax, zorder=3)
        ax.legend(fontsize=7, title="status", title_fontsize=7)
    title = (f"{len(data):,} updates: {int(counts.lost.sum()):,} lost, {int(counts.stale.sum()):,} stale"
             + (f" (dots: a sample of {max_dots:,})" if not hue and len(data) > max_dots else ""))
    ax.set_title(title, fontsize=9)
    ax.set_xticks(range(len(devices)))
    ax.set_xticklabels(labels, fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("device type")
    ax.set_ylabel("staleness (server steps)")
    fig.tight_layout()
    return fig


# The most devices a timeline draws, one row each; larger fleets show this many, evenly spread.
TIMELINE_DEVICES = 60


def device_timeline(fleet: pd.DataFrame, value: str = "speed_factor", x: str = "virtual_time_s",
                    max_devices: int = TIMELINE_DEVICES) -> Figure:
    """Every device over virtual time (``fleet.csv``): cell colour = ``value`` while available,
    grey while offline; a hollow ring where the device was sampled, a dot where its update
    was included. Of a fleet of more than ``max_devices`` devices, that many are drawn (evenly
    spread over the partition ids; the title says so)."""
    import numpy as np
    from matplotlib.colors import Normalize

    rounds = sorted(fleet.server_round.unique())
    starts = fleet.groupby("server_round")[x].first().reindex(rounds).to_numpy(dtype=float)
    step = float(np.median(np.diff(starts))) if len(starts) > 1 else 1.0
    edges = np.append(starts, starts[-1] + max(step, 1e-9))
    pids = sorted(fleet.partition_id.unique())
    total = len(pids)
    if total > max_devices:
        pids = [pids[i] for i in np.linspace(0, total - 1, max_devices).round().astype(int)]
        fleet = fleet[fleet.partition_id.isin(pids)]
    grid = fleet.pivot(index="partition_id", columns="server_round", values=value).reindex(index=pids, columns=rounds)
    avail = fleet.pivot(index="partition_id", columns="server_round", values="available").reindex(index=pids,
                                                                                                   columns=rounds)
    shown = np.ma.masked_where(avail.to_numpy() < 0.5, grid.to_numpy(dtype=float))
    fig, ax = plt.subplots(figsize=(9, max(2.5, 0.22 * len(pids) + 1.2)))
    ax.set_facecolor("#d9d9d9")  # offline
    hi = max(1.0, float(np.nanmax(grid.to_numpy())))  # factors are relative to the device's own rates (1)
    mesh = ax.pcolormesh(edges, np.arange(len(pids) + 1) - 0.5, shown, cmap="viridis", norm=Normalize(0.0, hi),
                         shading="flat")
    fig.colorbar(mesh, ax=ax, label=value.replace("_", " ") + " (grey: offline)")
    centers = {r: (a + b) / 2 for r, a, b in zip(rounds, edges[:-1], edges[1:], strict=True)}
    row = {p: i for i, p in enumerate(pids)}
    s = fleet[fleet.sampled == 1]
    ax.scatter([centers[r] for r in s.server_round], [row[p] for p in s.partition_id], s=22, facecolors="none",
               edgecolors="white", linewidths=0.8, label="sampled")
    inc = fleet[fleet.included == 1]
    ax.scatter([centers[r] for r in inc.server_round], [row[p] for p in inc.partition_id], s=6, color="white",
               label="included")
    ax.set_yticks(range(len(pids)))
    ax.set_yticklabels([f"{p} {fleet[fleet.partition_id == p].device.iloc[0]}" for p in pids], fontsize=6)
    ax.set_xlabel("virtual time (s)")
    ax.set_ylabel("client (partition id, device)")
    if total > len(pids):
        ax.set_title(f"{len(pids)} of {total:,} devices, evenly spread", fontsize=9)
    ax.legend(loc="upper right", fontsize=7, facecolor="#666666", labelcolor="white", framealpha=0.8)
    fig.tight_layout()
    return fig


def trace_lines(table: pd.DataFrame) -> Figure:
    """A trace's factors over time, one line per device or partition (step plot)."""
    cols = [c for c in ("available", "speed_factor", "select_share", "bandwidth_factor") if c in table.columns]
    fig, axes = plt.subplots(len(cols), 1, figsize=(8, 1.8 * len(cols) + 0.5), sharex=True, squeeze=False)
    for ax, c in zip(axes[:, 0], cols, strict=True):
        for who, g in table.groupby("who"):
            g = g.sort_values("t_start_s").dropna(subset=[c])
            xs = [v for a, b in zip(g.t_start_s, g.t_end_s, strict=True) for v in (a, b)]
            ys = [v for v in g[c] for _ in (0, 1)]
            ax.plot(xs, ys, label=str(who), lw=1)
        ax.set_ylim(-0.05, max(1.05, float(table[c].max()) * 1.05))
        ax.set_ylabel(c.replace("_", " "), fontsize=8)
    axes[-1, 0].set_xlabel("virtual time (s)")
    axes[0, 0].legend(fontsize=6, ncol=4)
    fig.tight_layout()
    return fig
