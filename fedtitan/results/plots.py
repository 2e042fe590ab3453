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
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_vs_ratio(final: pd.DataFrame, ratio: str = "pruning.ratio", hue: str = "pruning.method") -> Figure:
    """Final accuracy (mean ± 95% CI over seeds) against the pruning ratio."""
    fig, ax = plt.subplots(figsize=(6, 4))
    lo, hi = final[ratio].min(), final[ratio].max()
    for name, g in final.sort_values(ratio).groupby(hue):
        if g[ratio].nunique() == 1 and lo < hi:  # one ratio only (full data): a reference line
            m, ci = float(g["final_acc_mean"].mean()), float(g["final_acc_ci95"].fillna(0).mean())
            line = ax.axhline(m, ls="--", lw=1.2, color="grey", label=f"{name} (rho={g[ratio].iloc[0]:g})")
            ax.axhspan(m - ci, m + ci, color=line.get_color(), alpha=0.15, lw=0)
            continue
        ax.errorbar(g[ratio], g["final_acc_mean"], yerr=g["final_acc_ci95"].fillna(0), marker="o", capsize=3,
                    label=str(name))
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


def tier_costs(tiers: pd.DataFrame, hue: str | None = None) -> Figure:
    """Mean simulated time and energy per client round, per device tier."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sns.barplot(tiers, x="device", y="time_s_mean", hue=hue, ax=axes[0])
    sns.barplot(tiers, x="device", y="energy_j_mean", hue=hue, ax=axes[1])
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    axes[0].set_ylabel("time per client round (s)")
    axes[1].set_ylabel("energy per client round (J)")
    fig.tight_layout()
    return fig
