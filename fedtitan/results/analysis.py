"""Tidy tables across a sweep: final accuracy with CIs, time-to-accuracy on the virtual clock,
speedups, energy to target, per-device-tier cost, and linear fits against the pruning ratio.

Inputs are the tidy frames of :func:`load_sweep`: one row per (run, round) and one row per
(run, round, client), with one column per swept parameter and ``seed``.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fedtitan.errors import FedtitanError
from fedtitan.fileio import table_path

# Settings every analysis may need, read from each run's config.json when the sweep did not vary
# them (a setting given once with --set, or left at its default), so a table can group by them
# whether or not they are grid columns.
SETTINGS = ("selection.method", "pruning.method", "pruning.ratio", "fleet.name")
RATIO, METHOD = "pruning.ratio", "pruning.method"


@lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    from fedtitan.config import Config

    return Config().model_dump(mode="json", by_alias=True)


def setting(cfg: dict[str, Any] | None, key: str) -> Any:
    """``section.name`` of a run's config.json as a table cell: its value, else the key's
    default (a run made before a key existed counts as made with its default); None without a
    config."""
    if cfg is None:
        return None
    *path, name = key.split(".")  # server.async.buffer_size: a sub-section's key

    def find(tree: Any) -> Any:
        for part in path:
            tree = tree.get(part) if isinstance(tree, dict) else None
        return tree[name] if isinstance(tree, dict) and name in tree else None

    value = find(cfg)
    if value is None:
        value = find(_defaults())
    return value if value is None or isinstance(value, (str, int, float)) else str(value)


def _num_classes(run_dir: Path) -> float:
    """The class count of the run's data, from the header of its partition.csv (NaN without one)."""
    f = run_dir / "partition.csv"
    if not f.exists():
        return math.nan
    with f.open() as fh:
        header = fh.readline().strip().split(",")
    n = sum(1 for c in header if c.startswith("class_"))
    return float(n) if n else math.nan


def load_sweep(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(rounds, clients, parameter columns) of every finished run under ``path``.

    ``path`` is a sweep folder (with ``index.csv``) or a single run folder. Besides ``run_id``,
    ``seed`` and one column per swept parameter, both frames have a column for each of
    :data:`SETTINGS` (from the run's config.json where it was not swept) and ``num_classes``
    (from its partition.csv; NaN if it has none). A run's tables may be gzipped
    (``clients.csv.gz``: the archived runs under docs/results).
    """
    root = Path(path)
    if table_path(root, "rounds.csv").exists() and not (root / "index.csv").exists():
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
        cfg_file = run_dir / "config.json"
        cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else None
        for k in params:
            if pd.isna(keys[k]) and cfg is not None:  # a grid key another call of the sweep did not vary
                keys[k] = setting(cfg, k)
        for k in SETTINGS:
            if k not in keys:
                keys[k] = setting(cfg, k)
        keys["num_classes"] = _num_classes(run_dir)
        r = pd.read_csv(table_path(run_dir, "rounds.csv")).assign(**keys)
        rounds.append(r)
        if (c := table_path(run_dir, "clients.csv")).exists():  # archived runs: clients.csv.gz
            clients.append(pd.read_csv(c).assign(**keys))
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
    out["final_acc_lo"], out["final_acc_hi"] = accuracy_interval(out.final_acc_mean, out.final_acc_ci95)
    return out


def accuracy_interval(mean: pd.Series, half: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The bounds of an accuracy's interval ``mean -/+ half``, clipped to [0, 1] (an accuracy
    cannot leave them; a t-interval over few seeds can)."""
    return (mean - half).clip(0.0, 1.0), (mean + half).clip(0.0, 1.0)


def require_ratios(rounds: pd.DataFrame, what: str = "accuracy-ratio") -> None:
    """Raise a one-line FedtitanError unless the runs have two or more ``pruning.ratio`` values."""
    values = sorted(rounds[RATIO].dropna().unique()) if RATIO in rounds.columns else []
    if len(values) < 2:
        has = f"only pruning.ratio={values[0]:g}" if values else "no pruning.ratio values"
        raise FedtitanError(f"{what} needs runs at two or more pruning.ratio values (e.g. --grid "
                            f"pruning.ratio=0.1,0.5); this sweep has {has}")


def ratio_series(varying: list[str]) -> list[str]:
    """What a figure against the pruning ratio draws one line for: the pruning method (swept
    or set once) and every other swept setting."""
    return [METHOD, *[c for c in varying if c not in (RATIO, METHOD)]]


def label(frame: pd.DataFrame, cols: list[str]) -> pd.Series:
    """The values of ``cols`` joined by spaces: one legend entry per row."""
    return frame[cols].astype(str).agg(" ".join, axis=1)


def ratio_final(rounds: pd.DataFrame, varying: list[str]) -> pd.DataFrame:
    """Final accuracy per pruning ratio and series (:func:`ratio_series`, in column
    ``series``); a one-line FedtitanError when the runs have fewer than two ratios."""
    require_ratios(rounds)
    cols = ratio_series(varying)
    final = final_accuracy(rounds, [*cols, RATIO])
    return final.assign(series=label(final, cols))


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
        per_run.append({**row, "run_id": run_id, "tta_s": t, "energy_to_target_j": e,
                        **_evaluations(curve, target)})
    pr = pd.DataFrame(per_run)
    g = pr.groupby(by, dropna=False) if by else pr.groupby(lambda _: 0)
    out = g.agg(tta_s=("tta_s", "mean"), tta_sd=("tta_s", "std"), energy_to_target_j=("energy_to_target_j", "mean"),
                reached=("tta_s", lambda s: int(s.notna().sum())), evals_to_target=("evals_to_target", "mean"),
                eval_every=("eval_every", "max")).reset_index()
    out = out.merge(fa, on=by, how="left") if by else out
    if key in out.columns:
        base = out.loc[out[key].astype(str) == value, "tta_s"]
        base_t = float(base.mean()) if len(base) else math.nan
        out["speedup_vs_" + value] = base_t / out["tta_s"]
    classes = rounds["num_classes"].dropna() if "num_classes" in rounds.columns else pd.Series(dtype=float)
    out.attrs["chance"] = 1.0 / float(classes.max()) if len(classes) else math.nan
    return out, target


def _evaluations(curve: pd.DataFrame, target: float) -> dict[str, float]:
    """Of one run: how many evaluations it took to reach ``target`` (counting the one that
    reached it; NaN if none did) and the most rounds between two evaluations (from round 0)."""
    c = curve.dropna(subset=["accuracy"]).sort_values("server_round")
    hit = np.flatnonzero(c["accuracy"].to_numpy() >= target)
    evald = np.concatenate([[0], c["server_round"].to_numpy(dtype=float)])
    return {"evals_to_target": float(hit[0] + 1) if len(hit) else math.nan,
            "eval_every": float(np.diff(evald).max()) if len(evald) > 1 else math.nan}


# A target within this factor of chance accuracy (1 / number of classes) says little.
NEAR_CHANCE = 1.5
# Reaching a target by this many evaluations or fewer (counting the one that reached it) is too
# few points to time the crossing.
FEW_EVALS = 2


def caveats(tta: pd.DataFrame, by: list[str], target: float, chance: float | None = None) -> list[str]:
    """Why a time-to-accuracy comparison may mean little, one clause each: a target at or near
    chance, a target reached within :data:`FEW_EVALS` evaluations, evaluation sparser than the
    rounds. ``chance``: 1 / number of classes (default: ``tta.attrs["chance"]``)."""
    out: list[str] = []
    chance = tta.attrs.get("chance", math.nan) if chance is None else chance
    if chance is not None and not pd.isna(chance) and target <= NEAR_CHANCE * chance:
        out.append(f"the target {target:.3f} is at or near chance ({chance:.3f} for {round(1 / chance)} classes), "
                   "so reaching it says little about learning (give a higher target with --target)")
    got = tta[tta.tta_s.notna()].sort_values("tta_s").head(2) if "tta_s" in tta.columns else tta.iloc[:0]

    def name(row: pd.Series) -> str:
        return " ".join(f"{row[c]}" for c in by) if by else "the run"

    if "evals_to_target" in got.columns:
        few = [f"{name(r)} by evaluation {r.evals_to_target:.3g}" for _, r in got.iterrows()
               if r.evals_to_target <= FEW_EVALS]
        if few:
            out.append(f"the target was reached within {FEW_EVALS} evaluations ({', '.join(few)}), too few "
                       "points on the curve to time the crossing")
    if "eval_every" in got.columns and len(got):
        sparse = float(got.eval_every.max())
        if sparse > 1:
            out.append(f"accuracy was evaluated only every {sparse:.0f} rounds (server.eval_every), so each time "
                       "to target is interpolated across that many rounds; evaluate every round "
                       "(--set server.eval_every=1) to time it")
    return out


def verdict(tta: pd.DataFrame, by: list[str], target: float, chance: float | None = None) -> str:
    """One plain sentence reading a time-to-accuracy table honestly: who reached the target
    first, by how much, and whether that difference exceeds the seed-to-seed spread; then, if
    any, why the comparison may mean little (:func:`caveats`)."""
    if not len(tta) or "tta_s" not in tta.columns:
        return ""
    text = _reading(tta, by, target)
    if tta.tta_s.isna().all():
        return text
    found = caveats(tta, by, target, chance)
    return text + (" Caveat: " + "; ".join(found) + "." if found else "")


def _reading(tta: pd.DataFrame, by: list[str], target: float) -> str:

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


def cost_per_run(clients: pd.DataFrame, method_col: str = METHOD, ratio_col: str = RATIO,
                 by: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Simulated training time and energy per run (summed over clients and rounds); ``by``:
    further columns to keep (e.g. other swept settings)."""
    return clients.groupby(["run_id", method_col, *by, ratio_col], dropna=False).agg(
        train_time_s=("sim_train_s", "sum"), energy_j=("sim_energy_j", "sum")).reset_index()


def cost_vs_ratio(clients: pd.DataFrame, method_col: str = METHOD, ratio_col: str = RATIO,
                  by: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Per pruning method (and each combination of ``by``): training time and energy (summed
    over clients and rounds, mean over seeds) against rho, with a linear fit and R^2 each."""
    if clients.empty or ratio_col not in clients.columns or method_col not in clients.columns:
        return pd.DataFrame()
    per_run = cost_per_run(clients, method_col, ratio_col, by)
    keys = [method_col, *by]
    rows = []
    for k, g in per_run.groupby(keys, dropna=False):
        if g[ratio_col].nunique() < 2:
            continue  # e.g. full data (rho = 1 only): nothing to fit
        for metric in ("train_time_s", "energy_j"):
            fit = linear_fit(g[ratio_col], g[metric])
            rows.append({**dict(zip(keys, k, strict=True)), "metric": metric, **fit})
    return pd.DataFrame(rows)
