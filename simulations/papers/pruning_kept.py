"""Which samples warm-up-loss pruning keeps on non-IID clients, against a random subset.

    python -m simulations.papers.pruning_kept --data-dir ../shared/data --seeds 2 --out docs/results/pruning-kept

An ablation behind docs/results.md's reading of the full-training-set pruning study. For each
seed it builds the sweep's round-1 state exactly as a run of the ``pruning-cifar10`` preset does
(the seed's global model, Dirichlet alpha = 0.5 partitions of the full CIFAR-10 training set over
15 clients), runs each client's warm-up epoch of Algorithm 1 from the global model
(``fedtitan.training.static.warmup_scores``, the code a client runs), keeps the top rho of the
warm-up losses and a random rho, and measures how far each kept subset's label mix is from the
client's own (:func:`label_shift`) and from the whole training set once the clients' kept
subsets are pooled. Writes ``clients.csv`` (one row per seed, client, rho and method),
``classes.csv`` (mean warm-up loss per client and class) and prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from fedtitan.config import load_config
from fedtitan.errors import FedtitanError
from fedtitan.results.store import atomic_write_text
from fedtitan.selection.pruning import prune
from fedtitan.training.setup import setup_for
from fedtitan.training.static import StaticConfig, warmup_scores


def label_shift(labels: np.ndarray, kept: np.ndarray, num_classes: int, rare: float = 0.1) -> dict[str, float]:
    """How a kept subset's label mix differs from the set it was drawn from.

    ``labels``: the client's labels; ``kept``: positions into them. Returns the total-variation
    distance between the two label distributions (0: same mix, 1: disjoint), the number of
    classes present in each, and the share of the set and of the kept subset that comes from the
    client's rare classes (each under ``rare`` of its data) and from its most common class.
    """
    if len(labels) == 0 or len(kept) == 0:
        raise FedtitanError("label_shift needs a non-empty set and a non-empty kept subset")
    p = np.bincount(labels, minlength=num_classes) / len(labels)
    q = np.bincount(labels[kept], minlength=num_classes) / len(kept)
    rare_c = (p > 0) & (p < rare)
    top = int(np.argmax(p))
    return {"tv": 0.5 * float(np.abs(p - q).sum()), "classes": int((p > 0).sum()), "classes_kept": int((q > 0).sum()),
            "rare_share": float(p[rare_c].sum()), "rare_share_kept": float(q[rare_c].sum()),
            "top_share": float(p[top]), "top_share_kept": float(q[top])}


def run(args: argparse.Namespace) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rows, class_rows, fleet = [], [], []
    for seed in range(args.seeds):
        cfg = load_config("pruning-cifar10", [f"data.data_dir={args.data_dir}", f"run.seed={seed}",
                                              *([f"data.max_train={args.max_train}"] if args.max_train else [])])
        setup = setup_for(cfg)
        p, ds = cfg.pruning, setup.dataset
        scfg = StaticConfig(epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, optimizer=p.optimizer,
                            schedule=p.schedule)
        initial = copy.deepcopy(setup.model.state_dict())
        kept_all: dict[tuple[float, str], list[np.ndarray]] = {}
        for pid, idx in enumerate(setup.parts):
            setup.model.load_state_dict(initial)
            rng = np.random.default_rng([seed, pid])
            iters = max(1, math.ceil(p.warmup_epochs * len(idx) / p.batch_size))
            scores, _ = warmup_scores(setup.model, setup.data, idx, iters, scfg, rng, p.unseen)
            labels = ds.y_train[idx]
            for c in np.unique(labels):
                class_rows.append({"seed": seed, "client": pid, "label": int(c),
                                   "share": float((labels == c).mean()), "mean_score": float(scores[labels == c].mean())})
            for rho in args.ratios:
                for method in ("warmup-loss", "random"):
                    kept = prune(method, len(idx), rho, scores=scores, rng=np.random.default_rng([seed, pid, 1]))
                    kept_all.setdefault((rho, method), []).append(idx[kept])
                    rows.append({"seed": seed, "client": pid, "n": len(idx), "rho": rho, "method": method,
                                 **label_shift(labels, kept, ds.num_classes)})
            print(f"seed {seed}: client {pid + 1}/{len(setup.parts)} scored", file=sys.stderr, flush=True)
        whole = np.bincount(ds.y_train, minlength=ds.num_classes) / len(ds.y_train)
        for (rho, method), parts in kept_all.items():
            pooled = np.bincount(ds.y_train[np.concatenate(parts)], minlength=ds.num_classes)
            fleet.append({"seed": seed, "rho": rho, "method": method,
                          "tv_pooled_vs_training_set": 0.5 * float(np.abs(pooled / pooled.sum() - whole).sum())})
    return pd.DataFrame(rows), pd.DataFrame(class_rows), pd.DataFrame(fleet)


def summarise(clients: pd.DataFrame, classes: pd.DataFrame, fleet: pd.DataFrame) -> dict[str, object]:
    """Means over seeds and clients per (rho, method); the within-client rank correlation of a
    class's share of the client's data with its mean warm-up loss (negative: rarer classes score higher)."""
    per = clients.groupby(["rho", "method"]).agg(
        tv=("tv", "mean"), classes=("classes", "mean"), classes_kept=("classes_kept", "mean"),
        rare_share=("rare_share", "mean"), rare_share_kept=("rare_share_kept", "mean"),
        top_share=("top_share", "mean"), top_share_kept=("top_share_kept", "mean"))
    per = per.join(fleet.groupby(["rho", "method"]).tv_pooled_vs_training_set.mean()).reset_index()
    rho_c = [stats.spearmanr(g.share, g.mean_score).statistic for _, g in classes.groupby(["seed", "client"])
             if g.share.nunique() > 1]
    return {"per_rho_method": per.round(4).to_dict("records"),
            "spearman_share_vs_loss": {"median": float(np.nanmedian(rho_c)),
                                       "negative_share": float(np.mean(np.asarray(rho_c) < 0)), "clients": len(rho_c)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data-dir", required=True, help="folder with the packed datasets (../shared/data)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.2, 0.5])
    ap.add_argument("--max-train", type=int, default=None, help="a stratified subset of the training set (tests)")
    ap.add_argument("--out", type=Path, default=None, help="folder for clients.csv, classes.csv, summary.json")
    args = ap.parse_args(argv)
    if args.seeds < 1 or not all(0 < r <= 1 for r in args.ratios):
        ap.error("--seeds must be at least 1 and every --ratios value in (0, 1]")
    try:
        clients, classes, fleet = run(args)
    except FedtitanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(clients, classes, fleet)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "clients.csv", clients.to_csv(index=False))
        atomic_write_text(args.out / "classes.csv", classes.to_csv(index=False))
        atomic_write_text(args.out / "fleet.csv", fleet.to_csv(index=False))
        atomic_write_text(args.out / "summary.json", json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
