"""C-IS's variance on the real buffers of a Titan run, against uniform and plain IS.

    python -m simulations.papers.cis_variance --data-dir ../shared/data --out docs/results/cis-variance

Runs Titan's single-device setting (``simulations.papers.single_device``: CIFAR-10 stream, v = 100,
B = 10, buffer 30, small CNN, the paper's lr schedule) and, every ``--log-every`` steps, keeps
the buffer C-IS draws from: its labels, per-sample last-layer gradient norms and Gram matrix
(the closed form the selector itself uses). For each logged buffer it computes the exact
total variance of the batch gradient estimate (``fedtitan.selection.cis.estimator_variances``,
checked against Monte Carlo in tests/selection/test_cis.py) under C-IS, plain IS, uniform
draws with replacement and a uniform subset, and writes ``buffers.csv`` (one row per buffer)
and ``summary.json`` (medians of the ratios to uniform, the share of buffers where C-IS wins).
A check that Titan's fine stage does what Lemma 2 promises on the data a run really sees.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from fedtitan.compute import DeviceData, resolve_device
from fedtitan.data import DataStream, load_dataset
from fedtitan.models import build_model
from fedtitan.results.store import atomic_write_text
from fedtitan.selection import build_selector, cis, selectors
from fedtitan.training import StreamingConfig, lr_at, train_streaming


def run(args: argparse.Namespace) -> pd.DataFrame:
    ds = load_dataset("cifar10", data_dir=args.data_dir)
    device = resolve_device(args.device)
    rows: list[dict[str, float]] = []
    real_draw = selectors.cis_draw
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        model = build_model("cnn", ds.input_shape, ds.num_classes).to(device)
        stream = DataStream(DeviceData.on(ds, device), np.arange(len(ds.y_train)), v=100, seed=seed, client=0)
        selector = build_selector("titan", buffer_size=args.buffer)
        rng = np.random.default_rng([seed, 1])
        state = {"step": 0}

        def logging_draw(labels, norms, gram, batch_size, rng_, weighting=True, _seed=seed, _state=state):
            if _state["step"] % args.log_every == 0:
                v = cis.estimator_variances(labels, norms, gram, batch_size)
                rows.append({"seed": _seed, "step": _state["step"], "candidates": len(labels),
                             "classes": len(np.unique(labels)), **v})
            return real_draw(labels, norms, gram, batch_size, rng_, weighting)

        selectors.cis_draw = logging_draw
        try:
            for step in range(args.steps):
                state["step"] = step
                lr = lr_at(0.1, "step", step, args.steps, decay=0.95, every=100)
                cfg = StreamingConfig(steps=1, batch_size=10, velocity=100, lr=lr, pipeline=False)
                train_streaming(model, stream, selector, cfg, rng)
        finally:
            selectors.cis_draw = real_draw
        print(f"seed {seed}: {sum(r['seed'] == seed for r in rows)} buffers logged", flush=True)
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame) -> dict[str, float]:
    ok = df.dropna(subset=["cis"])
    out: dict[str, float] = {"buffers": float(len(df)), "buffers_biased": float(len(df) - len(ok))}
    for key in ("cis", "is", "uniform_no_replacement"):
        ratio = ok[key] / ok["uniform"]
        out[f"{key}_over_uniform_median"] = float(ratio.median())
        out[f"{key}_over_uniform_q10"] = float(ratio.quantile(0.1))
        out[f"{key}_over_uniform_q90"] = float(ratio.quantile(0.9))
    out["cis_below_uniform_share"] = float((ok["cis"] < ok["uniform"]).mean())
    out["cis_below_uniform_subset_share"] = float((ok["cis"] < ok["uniform_no_replacement"]).mean())
    out["cis_below_is_share"] = float((ok["cis"] < ok["is"]).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--log-every", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--buffer", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--out", default="docs/results/cis-variance")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    df = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "buffers.csv", df.to_csv(index=False))
    summary = summarise(df)
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
