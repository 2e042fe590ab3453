"""Titan's Table 1 from the single-device runs, model by model, beside the paper's.

    python -m simulations.papers.table1 docs/results/single-device-table1

Reads every ``MODEL/curves.csv`` under the folder (written by ``simulations.papers.single_device``),
writes the combined ``curves.csv`` (columns ``dataset, model, method, seed, step, accuracy``
and the rest) and ``table1.csv``, and prints the markdown table. For each model:

* **final accuracy**: mean over seeds at the last step, with a 95% t-interval;
* **time to target on the device clock**: the target is RS's mean final accuracy (the
  paper's rule); a method's time is the simulated device time (``sim_time_s``, Jetson Nano
  profile) at the first evaluation where its mean curve reaches the target, divided by RS's.
  A method that never reaches it gets its whole run's time, marked ``>`` (the paper's rule:
  "for baselines failing to reach target accuracy, we simply present the normalized time of
  entire model training process").

``hardware`` says what each run's wall times were measured on (``cpu``, or ``cuda: <GPU>``
for runs on a lent GPU); the accuracy and the device clock do not depend on it, and
``select_ms_per_sample_here`` in ``table1.csv`` averages the CPU runs only.

Older curves written before ``single_device`` billed the device clock lack ``sim_time_s``;
it is recomputed here from the same cost model (``single_device.device_step``), with
Titan's coarse-filter forwards per step taken from the runs that recorded them at the same
v, B and buffer (they depend on the selector's settings, not on the model).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from fedtitan.results.analysis import ci95, time_to_accuracy
from simulations.papers.markdown import accuracy_pm

PAPER_METHODS = ["rs", "is", "ll", "hl", "ce", "ocs", "camel", "titan"]
_PAPER_ROWS = {  # model: (normalised time to target x8, final accuracy % x8), in PAPER_METHODS order
    "alexnet": ([1.00, 3.25, 3.98, 3.98, 3.59, 4.06, 2.07, 0.70], [71.2, 73.5, 18.2, 34.3, 71.6, 62.3, 71.3, 74.5]),
    "mobilenet_v1": ([1.00, 3.22, 3.45, 3.45, 3.41, 3.67, 1.15, 0.57], [69.2, 69.5, 17.7, 13.9, 69.6, 38.1, 68.7, 75.4]),
    "squeezenet": ([1.00, 3.96, 3.97, 3.97, 3.04, 4.06, 2.07, 0.69], [76.2, 73.0, 18.3, 45.0, 78.0, 40.7, 75.6, 79.0]),
    "resnet50": ([1.00, 2.32, 3.14, 3.14, 2.20, 2.18, 1.11, 0.66], [76.5, 78.0, 22.3, 34.9, 81.7, 27.3, 76.8, 81.1]),
    "resnet34": ([1.00, 2.04, 3.14, 3.14, 2.96, 3.19, 0.81, 0.77], [76.0, 78.7, 14.7, 58.8, 73.2, 59.4, 76.5, 79.8]),
    "mlp": ([1.00, 3.56, 6.30, 6.47, 5.28, 14.4, 12.5, 0.71], [75.5, 77.5, 45.5, 21.8, 60.9, 68.0, 75.6, 76.7]),
}
PAPER_TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    model: dict(zip(PAPER_METHODS, zip(times, accs, strict=True), strict=True))
    for model, (times, accs) in _PAPER_ROWS.items()
}
"""Table 1 of the Titan paper: (normalised time to target, final accuracy %) per model and method."""
MODEL_ORDER = ["alexnet", "mobilenet_v1", "squeezenet", "resnet50", "resnet34", "mlp"]
METHOD_ORDER = [*PAPER_METHODS, "cis"]
DATASET_OF = {"resnet34": "speech-commands", "mlp": "uci-har"}


def _args(folder: Path) -> dict:
    f = folder / "args.json"
    return json.loads(f.read_text()) if f.exists() else {}


def _backfill(df: pd.DataFrame, folder: Path, forwards: float | None) -> pd.DataFrame:
    """Add dataset, model and the device clock to curves written before they were recorded."""
    from fedtitan.data import load_dataset
    from fedtitan.devices import get_profile
    from fedtitan.models import build_model, count_forward_flops
    from simulations.papers.single_device import device_step, model_options

    a = _args(folder)
    model = a.get("model", folder.name)
    dataset = a.get("dataset", DATASET_OF.get(model, "cifar10"))
    df = df.assign(dataset=df["dataset"] if "dataset" in df else dataset,
                   model=df["model"] if "model" in df else model)
    if "sim_time_s" in df and df.sim_time_s.notna().all():
        return df
    v, b, k = int(a.get("velocity", 100)), int(a.get("batch", 10)), int(a.get("buffer", 30))
    shape = load_dataset(dataset, data_dir=a.get("data_dir")).input_shape if dataset != "cifar10" else (3, 32, 32)
    classes = {"cifar10": 10, "speech-commands": 12, "uci-har": 6}[dataset]
    net = build_model(model, shape, classes, **model_options(a.get("stem", "auto")))
    fwd, block = count_forward_flops(net, shape), count_forward_flops(net, shape, n_blocks=1)
    profile = get_profile(a.get("device_profile", "jetson-nano-10w"))
    per_step = {m: device_step(m, profile, forward_flops=fwd, block_flops=block, batch=b, velocity=v, buffer=k,
                               dim=int(np.prod(shape)), coarse_forwards=forwards if forwards else v + k - b,
                               pipeline=a.get("pipeline", "titan"))
                for m in df.method.unique()}
    missing = df.sim_time_s.isna() if "sim_time_s" in df else pd.Series(True, index=df.index)
    for col, i in (("sim_time_s", 0), ("sim_energy_j", 1)):
        filled = df.step * df.method.map(lambda m, i=i: per_step[m][i])
        df[col] = filled if col not in df else df[col].where(~missing, filled)
    return df


def combine(root: Path) -> pd.DataFrame:
    """Every model's curves as one tidy frame (and ``root/curves.csv``)."""
    files = sorted(f for f in root.glob("*/curves.csv"))
    frames = {f.parent: pd.read_csv(f) for f in files}
    recorded = [d.loc[d.method == "titan", "coarse_forwards"].dropna() for d in frames.values()
                if "coarse_forwards" in d]
    forwards = float(pd.concat(recorded).mean()) if recorded and sum(map(len, recorded)) else None
    if not frames:
        return pd.DataFrame()
    df = pd.concat([_backfill(d, folder, forwards) for folder, d in frames.items()], ignore_index=True)
    from simulations.papers.single_device import run_hardware

    df["hardware"] = run_hardware(df)
    first = ["dataset", "model", "method", "seed", "step", "accuracy"]
    df = df[first + [c for c in df.columns if c not in first]]
    df.to_csv(root / "curves.csv", index=False)
    return df


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, method): final accuracy with a 95% interval, seeds, steps, and time
    to RS's mean final accuracy on the device clock normalised by RS's."""
    rows = []
    from simulations.papers.single_device import run_hardware

    df = df.assign(hardware=run_hardware(df))
    for model, d in df.groupby("model"):
        steps = int(d.step.max())
        d = d[d.groupby(["method", "seed"]).step.transform("max") == steps]  # finished runs only
        final = d[d.step == steps]
        mean_curve = d.groupby(["method", "step"])[["accuracy", "sim_time_s"]].mean().reset_index()
        rs_final = final.loc[final.method == "rs", "accuracy"]
        target = float(rs_final.mean()) if len(rs_final) else np.nan

        def reach(m: str, mean_curve: pd.DataFrame = mean_curve, target: float = target) -> tuple[float, bool]:
            c = mean_curve[mean_curve.method == m].sort_values("step")
            t = time_to_accuracy(c, target, x="sim_time_s", also=None, interpolate=False)[0]
            return (t, True) if not np.isnan(t) else (float(c.sim_time_s.iloc[-1]), False)

        rs_time = reach("rs")[0] if len(rs_final) else np.nan
        for m, f in final.groupby("method"):
            t, ok = reach(m)
            paper = PAPER_TABLE1.get(str(model), {}).get(str(m))
            rows.append({"model": model, "dataset": d.dataset.iloc[0], "method": m, "seeds": f.seed.nunique(),
                         "steps": steps, "final_acc": f.accuracy.mean(), "final_acc_ci95": ci95(f.accuracy),
                         "target": target, "time_to_target_norm": t / rs_time, "reached": ok,
                         "time_to_target_s": t if ok else np.nan,
                         "sim_s_per_step": float(f.sim_time_s.mean() / steps),
                         "sim_w": float(f.sim_energy_j.mean() / f.sim_time_s.mean()),
                         "select_ms_per_sample_here": float(here.select_ms_per_step.mean()) / 100
                         if len(here := f[f.hardware == "cpu"]) else np.nan,
                         "hardware": ", ".join(sorted(f.hardware.unique())),
                         "paper_time_norm": paper[0] if paper else np.nan,
                         "paper_acc": paper[1] / 100 if paper else np.nan})
    t = pd.DataFrame(rows)
    if t.empty:
        return t
    t["model"] = pd.Categorical(t.model, [m for m in MODEL_ORDER if m in set(t.model)] +
                                sorted(set(t.model) - set(MODEL_ORDER)))
    t["method"] = pd.Categorical(t.method, [m for m in METHOD_ORDER if m in set(t.method)] +
                                 sorted(set(t.method) - set(METHOD_ORDER)))
    return t.sort_values(["model", "method"]).reset_index(drop=True)


def verdict(t: pd.DataFrame) -> pd.DataFrame:
    """Per model: does Titan reach RS's target faster (time < 1) and is its final accuracy the
    best or second best of the methods run, as the paper claims?"""
    out = []
    for model, g in t.groupby("model", observed=True):
        if "titan" not in set(g.method) or "rs" not in set(g.method):
            continue
        ti = g[g.method == "titan"].iloc[0]
        rank = int((g.final_acc > ti.final_acc).sum()) + 1
        rs = g[g.method == "rs"].iloc[0]
        lo = ti.final_acc - rs.final_acc
        half = float(np.hypot(np.nan_to_num(ti.final_acc_ci95), np.nan_to_num(rs.final_acc_ci95)))
        faster = bool(ti.reached and ti.time_to_target_norm < 1)
        acc_ok = rank <= 2
        word = ("reproduces" if faster and acc_ok and lo - half > 0 else
                "partly reproduces" if faster or acc_ok else "does not reproduce")
        out.append({"model": model, "titan_time_norm": ti.time_to_target_norm, "paper_titan_time": ti.paper_time_norm,
                    "titan_minus_rs": lo, "interval_half": half, "titan_rank": f"{rank} of {len(g)}",
                    "seeds": f"{int(g.seeds.min())}-{int(g.seeds.max())}" if g.seeds.min() != g.seeds.max()
                    else str(int(g.seeds.max())), "steps": int(ti.steps), "verdict": word})
    return pd.DataFrame(out)


def markdown(t: pd.DataFrame) -> str:
    """The table as docs/results.md shows it: one row per model and method, ours beside the paper's."""
    lines = ["| model | method | seeds | final acc (95% CI) | paper acc | time to target (x RS) | paper time |",
             "|---|---|---|---|---|---|---|"]
    for r in t.itertuples():
        acc = accuracy_pm(r.final_acc, r.final_acc_ci95)
        tt = f"{r.time_to_target_norm:.2f}" if r.reached else f">{r.time_to_target_norm:.2f}"
        pa = "" if pd.isna(r.paper_acc) else f"{r.paper_acc:.3f}"
        pt = "" if pd.isna(r.paper_time_norm) else f"{r.paper_time_norm:.2f}"
        lines.append(f"| {r.model} | {r.method} | {r.seeds} | {acc} | {pa} | {tt} | {pt} |")
    return "\n".join(lines)


def report(root: Path) -> str:
    """Both Table 1 tables (per method, then the verdicts) as markdown; writes ``curves.csv`` and
    ``table1.csv`` under ``root``. Empty when no model has curves yet."""
    df = combine(root)
    if df.empty:
        return ""
    t = table(df)
    t.to_csv(root / "table1.csv", index=False)
    out = markdown(t)
    v = verdict(t)
    if len(v):
        from simulations.papers.markdown import md_table

        out += "\n\n" + md_table(v)
    return out


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/single-device-table1")
    text = report(root)
    if not text:
        raise SystemExit(f"no MODEL/curves.csv under {root}; run simulations.papers.single_device first")
    print(text)


if __name__ == "__main__":
    main()
