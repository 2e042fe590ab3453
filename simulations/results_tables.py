"""Print the markdown tables of docs/results.md from the result folders.

    python -m simulations.results_tables docs/results
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from fedtitan.results import analysis


def _md(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in r.values]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
                d = d[d.method != "titan:stratify=false"]
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


def sweep(root: Path, name: str) -> None:
    d = root / name
    if not (d / "index.csv").exists():
        return
    rounds, clients, params = analysis.load_sweep(d)
    by = [p for p in params if rounds[p].nunique() > 1]
    print(f"### {name}\n")
    if "selection.method" in by:
        table, target = analysis.tta_table(rounds, by)
        print(f"target accuracy = {target:.4f} (random selection's final accuracy)\n")
        print(_md(table[[*by, "final_acc_mean", "tta_s", "energy_to_target_j", "reached", "speedup_vs_rs"]]))
    else:
        print(_md(analysis.final_accuracy(rounds, by)))
        fits = analysis.cost_vs_ratio(clients)
        if len(fits):
            print()
            print(_md(fits))
    print()


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results")
    single_device(root)
    for name in ("fl-titan-cifar10", "fl-titan-cifar10-150", "pruning-cifar10", "har-selection", "har-pruning"):
        sweep(root, name)


if __name__ == "__main__":
    main()
