"""Tidy tables across a sweep: final accuracy with CIs, time-to-accuracy on the virtual clock,
speedups, energy to target, per-device-tier cost, and linear fits against the pruning ratio.

Inputs are the tidy frames of :func:`load_sweep`: one row per (run, round) and one row per
(run, round, client), with one column per swept parameter and ``seed``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedtitan.errors import FedtitanError


def load_sweep(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(rounds, clients, parameter columns) of every finished run under ``path``.

    ``path`` is a sweep folder (with ``index.csv``) or a single run folder.
    """
    root = Path(path)
    if (root / "rounds.csv").exists() and not (root / "index.csv").exists():
        runs = [(root, {"run_id": root.name, "seed": json.loads((root / "config.json").read_text())["run"]["seed"]})]
        params: list[str] = []
    else:
        index = root / "index.csv"
        if not index.exists():
            raise FedtitanError(f"{root} is neither a sweep folder (index.csv) nor a run folder (rounds.csv)")
        idx = pd.read_csv(index)
        idx = idx[idx.status == "done"]
        params = [c for c in idx.columns if c not in ("run_id", "status", "path", "seed", "wall_s")]
        runs = [(root / r["path"], r.to_dict()) for _, r in idx.iterrows()]
    rounds, clients = [], []
    for run_dir, info in runs:
        keys = {k: info[k] for k in ["run_id", "seed", *params]}
        missing = [k for k in params if pd.isna(keys[k])]
        if missing and (run_dir / "config.json").exists():  # a grid key another call of the sweep did not vary
            cfg = json.loads((run_dir / "config.json").read_text())
            for k in missing:
                section, _, name = k.partition(".")
                value = cfg.get(section, {}).get(name)
                keys[k] = value if value is None or isinstance(value, (str, int, float)) else str(value)
        r = pd.read_csv(run_dir / "rounds.csv").assign(**keys)
        rounds.append(r)
        if (run_dir / "clients.csv").exists():
            clients.append(pd.read_csv(run_dir / "clients.csv").assign(**keys))
    if not rounds:
        raise FedtitanError(f"no finished runs under {root}")
    return pd.concat(rounds, ignore_index=True), pd.concat(clients, ignore_index=True) if clients else pd.DataFrame(), params


def ci95(values: pd.Series) -> float:
    """Half-width of the 95% t-interval of the mean (NaN for fewer than 2 values)."""
    v = values.dropna()
    n = len(v)
    if n < 2:
        return math.nan
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * v.std(ddof=1) / math.sqrt(n))


def final_accuracy(rounds: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Final evaluated accuracy per run, then mean / sd / 95% CI over seeds per group."""
    evald = rounds.dropna(subset=["accuracy"])
    last = evald.sort_values("server_round").groupby("run_id").tail(1)
    g = last.groupby(by, dropna=False)["accuracy"]
    out = g.agg(final_acc_mean="mean", final_acc_sd="std", runs="count").reset_index()
    out["final_acc_ci95"] = [ci95(s) for _, s in g]
    return out


def _final_and_late(rounds: pd.DataFrame, by: list[str], window: float) -> pd.DataFrame:
    """Per run: ``by``, seed, the last evaluated accuracy (``final``) and the mean evaluated
    accuracy over the last ``window`` of the rounds (``late_acc``, from ``from_round`` to
    ``to_round``), in seed order."""
    if not 0 < window <= 1:
        raise FedtitanError(f"window must be a fraction of the rounds in (0, 1], got {window}")
    evald = rounds.dropna(subset=["accuracy"]).sort_values(["run_id", "server_round"])
    last = evald.groupby("run_id").server_round.transform("max")
    first = last - (last * window).round().clip(lower=1) + 1
    late = evald[evald.server_round >= first].groupby("run_id").accuracy.mean().rename("late_acc")
    per_run = evald.groupby("run_id").agg(**{k: (k, "first") for k in [*by, "seed"]}, final=("accuracy", "last"))
    per_run["from_round"] = first.groupby(evald.run_id).first()
    per_run["to_round"] = last.groupby(evald.run_id).first()
    return per_run.join(late).sort_values("seed")


def paired_gap(rounds: pd.DataFrame, key: str, a: str, b: str, window: float = 1 / 6) -> dict[str, Any] | None:
    """``a`` minus ``b`` (values of column ``key``), paired by seed: a seed fixes the partition
    and the device draws, so the per-seed difference removes what the two runs share. Returns the
    seeds both have, the per-seed differences of the final accuracy and of the late-window mean
    (``window`` as in :func:`per_seed`), and each one's mean and 95% CI half-width (t with
    n - 1 degrees of freedom; NaN for one seed); None when no seed has both."""
    runs = _final_and_late(rounds[rounds[key].isin([a, b])], [key], window)
    wide = runs.pivot_table(index="seed", columns=key, values=["final", "late_acc"]).dropna()
    if wide.empty or a not in wide["final"] or b not in wide["final"]:
        return None
    out: dict[str, Any] = {"seeds": [int(x) for x in wide.index]}
    for col, name in (("final", "final"), ("late_acc", "late")):
        diff = wide[col][a] - wide[col][b]
        out[name] = [float(x) for x in diff]
        out[f"{name}_mean"], out[f"{name}_ci95"] = float(diff.mean()), ci95(diff)
    return out


def per_seed(rounds: pd.DataFrame, by: list[str], window: float = 1 / 6) -> pd.DataFrame:
    """Per group: each seed's final accuracy (in seed order) and the mean evaluated accuracy over
    the last ``window`` of the rounds (e.g. rounds 251-300 of 300), averaged over the group's runs.

    A final accuracy is one noisy evaluation; the late-window mean says whether a gap between two
    methods holds over the end of training or is one evaluation's luck.
    """
    per_run = _final_and_late(rounds, by, window)

    def rounds_span(g: pd.DataFrame) -> str:
        lo, hi = int(g.from_round.min()), int(g.to_round.max())
        span = f"{lo}–{hi}" if lo < hi else str(hi)
        return span if g.from_round.nunique() == 1 and g.to_round.nunique() == 1 else f"last {window:.0%}"

    out = per_run.groupby(by, dropna=False).apply(
        lambda g: pd.Series({"seeds": ", ".join(str(int(s)) for s in g.seed),
                             "final_per_seed": ", ".join(f"{a:.3f}" for a in g.final),
                             "late_acc_mean": g.late_acc.mean(),
                             "late_rounds": rounds_span(g)}), include_groups=False)
    return out.reset_index()


def time_to_accuracy(curve: pd.DataFrame, target: float, x: str = "virtual_time_s",
                     also: str | None = "energy_cum_j", interpolate: bool = True) -> tuple[float, float]:
    """First ``x`` at which accuracy reaches ``target``, linearly interpolated between the
    evaluation before and the one at/after the crossing (and ``also`` at that point). NaN if
    never reached. The curve starts from (0, 0) only if it has such a row. With
    ``interpolate=False``: ``x`` of the first evaluation at or above ``target`` (the
    single-device tables count steps and seconds so). The one time-to-target rule."""
    c = curve.dropna(subset=["accuracy"]).sort_values(x)
    acc, xs = c["accuracy"].to_numpy(), c[x].to_numpy()
    ys = c[also].to_numpy() if also else None
    hit = np.flatnonzero(acc >= target)
    if len(hit) == 0:
        return math.nan, math.nan
    i = int(hit[0])
    if i == 0 or not interpolate:
        return float(xs[i]), float(ys[i]) if ys is not None else math.nan
    a0, a1 = acc[i - 1], acc[i]
    f = (target - a0) / (a1 - a0) if a1 != a0 else 1.0
    xv = xs[i - 1] + f * (xs[i] - xs[i - 1])
    yv = ys[i - 1] + f * (ys[i] - ys[i - 1]) if ys is not None else math.nan
    return float(xv), float(yv)


def tta_table(rounds: pd.DataFrame, by: list[str], target: float | None = None,
              baseline: tuple[str, str] = ("selection.method", "rs")) -> tuple[pd.DataFrame, float]:
    """Time- and energy-to-accuracy per group (mean over seeds), speedup vs the baseline.

    Default target: the baseline's mean final accuracy (the Titan paper's choice). Groups that
    never reach it get NaN (and are counted in ``reached``)."""
    fa = final_accuracy(rounds, by)
    key, value = baseline
    if target is None:
        if key not in fa.columns or not (fa[key].astype(str) == value).any():
            raise FedtitanError(f"no {key}={value} runs to take the target from; pass a target accuracy")
        target = float(fa.loc[fa[key].astype(str) == value, "final_acc_mean"].mean())
    per_run = []
    for run_id, curve in rounds.groupby("run_id"):
        t, e = time_to_accuracy(curve, target)
        row = curve.iloc[0][by].to_dict() if by else {}
        per_run.append({**row, "run_id": run_id, "tta_s": t, "energy_to_target_j": e})
    pr = pd.DataFrame(per_run)
    g = pr.groupby(by, dropna=False) if by else pr.groupby(lambda _: 0)
    out = g.agg(tta_s=("tta_s", "mean"), tta_sd=("tta_s", "std"), energy_to_target_j=("energy_to_target_j", "mean"),
                reached=("tta_s", lambda s: int(s.notna().sum()))).reset_index()
    out = out.merge(fa, on=by, how="left") if by else out
    if key in out.columns:
        base = out.loc[out[key].astype(str) == value, "tta_s"]
        base_t = float(base.mean()) if len(base) else math.nan
        out["speedup_vs_" + value] = base_t / out["tta_s"]
    return out, target


def verdict(tta: pd.DataFrame, by: list[str], target: float) -> str:
    """One plain sentence reading a time-to-accuracy table honestly: who reached the target
    first, by how much, and whether that difference exceeds the seed-to-seed spread."""
    if not len(tta) or "tta_s" not in tta.columns:
        return ""

    def name(row: pd.Series) -> str:
        return " ".join(f"{row[c]}" for c in by) if by else "the run"

    got = tta[tta.tta_s.notna()].sort_values("tta_s")
    if got.empty:
        return f"No configuration reached the target accuracy {target:.3f} within the rounds run."
    first = got.iloc[0]

    def runs(row: pd.Series) -> int:
        return int(row.get("runs", row.get("reached", 1)) or 1)

    reached = int(first.reached)
    of = (f"mean of {reached} run{'s' if reached != 1 else ''}" if reached >= runs(first)
          else f"mean of the {reached} of {runs(first)} runs that reached it")
    head = (f"{name(first)} reached the target accuracy {target:.3f} first, after {seconds(first.tta_s)} of virtual "
            f"time ({of})")
    if len(got) == 1:
        missed = ", ".join(name(r) for _, r in tta[tta.tta_s.isna()].iterrows())
        return head + (f"; {missed} did not reach it." if missed else ".")
    second = got.iloc[1]
    diff = second.tta_s - first.tta_s
    head += f", {second.tta_s / first.tta_s:.2f}x sooner than {name(second)} ({seconds(second.tta_s)})"
    spreads = [v for v in (first.get("tta_sd"), second.get("tta_sd")) if v is not None and not pd.isna(v)]
    if len(spreads) < 2 and min(runs(first), runs(second)) >= 2:  # seeds enough, but some runs never got there
        return head + ("; not every run reached the target, so these times average only the runs that did and "
                       "have no seed-to-seed spread to compare: read the final accuracies too.")
    if runs(first) < 2 or len(spreads) < 2:
        return head + ("; with one seed per configuration there is no estimate of the seed-to-seed spread, so this "
                       "difference may be chance (run more seeds with --seeds 3).")
    spread = max(spreads)
    if diff > spread:
        return head + f"; the {seconds(diff)} difference is larger than the seed-to-seed spread (sd up to {seconds(spread)})."
    return head + (f"; the {seconds(diff)} difference is within the seed-to-seed spread (sd up to {seconds(spread)}), so "
                   "the two are not distinguishable at this number of seeds.")


def seconds(value: float) -> str:
    """Seconds of virtual time as a person reads them: whole seconds from 10 s, three figures below."""
    return f"{value:.0f} s" if abs(value) >= 10 else f"{value:.3g} s"


def tier_costs(clients: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean simulated time and energy per client round, per device tier (and group)."""
    if clients.empty:
        return pd.DataFrame()
    cols = [*by, "device"]
    return (clients.groupby(cols, dropna=False)
            .agg(client_rounds=("sim_time_s", "size"), time_s_mean=("sim_time_s", "mean"),
                 energy_j_mean=("sim_energy_j", "mean"), energy_j_total=("sim_energy_j", "sum"))
            .reset_index())


def linear_fit(x: np.ndarray | pd.Series, y: np.ndarray | pd.Series) -> dict[str, float]:
    """Least-squares ``y = slope * x + intercept`` with R^2."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(xa) & np.isfinite(ya)
    xa, ya = xa[ok], ya[ok]
    if len(xa) < 2 or np.ptp(xa) == 0:
        return {"slope": math.nan, "intercept": math.nan, "r2": math.nan, "n": float(len(xa))}
    slope, intercept = np.polyfit(xa, ya, 1)
    pred = slope * xa + intercept
    ss_res = float(((ya - pred) ** 2).sum())
    ss_tot = float(((ya - ya.mean()) ** 2).sum())
    return {"slope": float(slope), "intercept": float(intercept),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0, "n": float(len(xa))}


def cost_per_run(clients: pd.DataFrame, method_col: str = "pruning.method",
                 ratio_col: str = "pruning.ratio") -> pd.DataFrame:
    """Simulated training time and energy per run (summed over clients and rounds)."""
    return clients.groupby(["run_id", method_col, ratio_col]).agg(
        train_time_s=("sim_train_s", "sum"), energy_j=("sim_energy_j", "sum")).reset_index()


def cost_vs_ratio(clients: pd.DataFrame, method_col: str = "pruning.method",
                  ratio_col: str = "pruning.ratio") -> pd.DataFrame:
    """Per pruning method: training time and energy (summed over clients and rounds, mean over
    seeds) against rho, with a linear fit and R^2 each."""
    if clients.empty or ratio_col not in clients.columns:
        return pd.DataFrame()
    per_run = cost_per_run(clients, method_col, ratio_col)
    rows = []
    for m, g in per_run.groupby(method_col):
        if g[ratio_col].nunique() < 2:
            continue  # e.g. full data (rho = 1 only): nothing to fit
        for metric in ("train_time_s", "energy_j"):
            fit = linear_fit(g[ratio_col], g[metric])
            rows.append({method_col: m, "metric": metric, **fit})
    return pd.DataFrame(rows)
