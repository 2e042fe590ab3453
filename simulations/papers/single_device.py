"""Titan's single-device setting (Table 1 of the paper), at a scale this machine runs.

    python -m simulations.papers.single_device --model mobilenet_v1 --steps 1500 --seeds 3 \
        --out docs/results/single-device-table1/mobilenet_v1

One device streams a training set (v = 100 new samples per step), selects a batch of B = 10
(Titan's buffer: 30) and takes one weighted SGD step (x0.95 every 100 steps, the paper's
schedule; lr 0.1 for AlexNet, MobileNet, SqueezeNet and the small nets, 0.005 for ResNets,
as Sec. 4.1 says, unless ``--lr`` is given). ``--dataset`` is ``cifar10`` (default),
``speech-commands`` or ``uci-har``. Test accuracy on a fixed test subset (2,000 samples, or
the whole test set when smaller) every ``--eval-every`` steps.

Every step is also billed on the simulated device clock of ``--device-profile`` (default the
paper's Jetson Nano, 10 W): training on its CPU unit, selection on its GPU unit (footnote 2),
Titan pipelined (its selection overlaps the previous step's training), the baselines serial
(``--pipeline all`` pipelines them too). Writes ``curves.csv`` (tidy: dataset, model, method,
seed, step, accuracy, loss, select_ms_per_step, train_ms_per_step, coarse_forwards,
sim_time_s, sim_energy_j, hardware: what the wall times were measured on, ``cpu`` or
``cuda: <GPU name>``; the simulated clock does not depend on it), ``summary.csv`` and
``accuracy.png``. A second call with the same
``--out`` skips every (method, seed) that reached ``--steps`` and continues an unfinished one
from its last evaluation: after every ``--eval-every`` steps the run's whole state (model,
selector buffer, stream position, random generators, device clock) is saved as data, never
pickled, to ``<out>/partial/<method>-seed<seed>.npz`` (removed when the run finishes), so a
long run (a ResNet50 on a CPU) survives its process and continues bit for bit on the same
device. The partial run must have the same settings (everything but ``--steps``, ``--seeds``,
``--methods``, ``--out``, ``--data-dir``, ``--device`` and ``--threads``).

Several processes may share one ``--out`` (one per core, or per machine on a shared disk): each
takes the next run no process holds (an flock, let go when its process ends however it ends)
and merges what it finished into ``curves.csv`` under a lock on the folder.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd
import torch

from fedtitan.checkpoint import StateError, unpack, write_state
from fedtitan.compute import DeviceData, device_label, resolve_device
from fedtitan.data import DataStream, load_dataset
from fedtitan.errors import FedtitanError
from fedtitan.fileio import atomic_writer
from fedtitan.models import MODELS, build_model, takes_stem
from fedtitan.results.analysis import time_to_accuracy
from fedtitan.selection import build_selector
from fedtitan.training import StreamingConfig, evaluate, lr_at, train_streaming


class IdleShare:
    """The selecting unit's idle share per step (``--idle walk``): a seeded random walk in
    log space between ``--idle-min`` and 1 (the dynamics model of living fleets, one step per
    training step), on the ``--idle-device`` profile."""

    def __init__(self, args: argparse.Namespace, seed: int) -> None:
        from fedtitan.devices import get_profile
        from fedtitan.devices.dynamics import RandomWalkDynamics

        self.walk = RandomWalkDynamics(seed=seed, step_s=1.0, sigma=args.idle_sigma, p_leave=0.0, speed_min=1.0,
                                       speed_max=1.0, select_share_min=args.idle_min, select_share_max=1.0,
                                       bandwidth_min=1.0, bandwidth_max=1.0)
        self.profile = get_profile(args.idle_device)

    def at(self, step: int) -> Any:
        from fedtitan.devices.dynamics import Factors

        return Factors(select_share=self.walk.factors(0, float(step)).select_share).apply(self.profile)


PAPER_LR = {"alexnet": 0.1, "mobilenet_v1": 0.1, "mobilenet_v2": 0.1, "squeezenet": 0.1}
"""Sec. 4.1: "0.1 for AlexNet, MobileNet and SqueezeNet and 0.005 for other larger models".
The small nets (mlp, cnn, har_cnn, speech_cnn) are not "larger": they take 0.1 too."""


def paper_lr(model: str) -> float:
    return PAPER_LR.get(model, 0.005 if model.startswith("resnet") else 0.1)


@functools.cache
def _traits(name: str) -> tuple[bool, bool]:
    """(coarse filter, full forward over the candidates) of selector ``name``: what it is billed for."""
    sel = build_selector(name)
    return bool(getattr(sel, "coarse_filter", False)), bool(getattr(sel, "forward_candidates", True))


def device_step(method: str, profile: Any, *, forward_flops: float, block_flops: float, batch: int, velocity: int,
                buffer: int, dim: int, coarse_forwards: float | None, pipeline: str = "titan") -> tuple[float, float]:
    """One streaming step of ``method`` on ``profile``'s clock: (seconds, joules).

    The same cost model the federated clients bill (``fedtitan.devices.cost.streaming_round``):
    training B samples on the training unit; on the selecting unit, Titan's coarse filter over
    ``coarse_forwards`` samples (first block) and a full forward over its ``buffer``
    candidates, the gradient-based baselines (IS, C-IS, LL, HL, CE, OCS) a full forward over
    all v, Camel its input-space distances, RS nothing. ``pipeline``: ``titan`` overlaps only
    Titan's selection with training (its pipeline, Sec. 3.4), ``all`` every method's, ``none``
    no method's."""
    from fedtitan.devices.cost import streaming_round
    from fedtitan.selection.selectors import camel_flops

    name = method.partition(":")[0]
    coarse, forward = _traits(name)
    cost = streaming_round(
        profile, forward_flops=forward_flops, block_flops=block_flops, steps=1, batch_size=batch, velocity=velocity,
        candidates=buffer if coarse else velocity, model_bytes=0.0,
        pipelined=pipeline == "all" or (pipeline == "titan" and coarse), coarse=coarse,
        gradient_selection=forward,
        extra_select_flops=camel_flops(batch, velocity, dim) if name == "camel" else 0.0,
        coarse_samples=coarse_forwards if coarse else None)
    return cost.time_s, cost.energy_j


RUN_SETTINGS = ("model", "dataset", "velocity", "batch", "buffer", "lr", "device_profile", "pipeline", "eval_every",
                "label_noise", "feature_noise", "feature_sigma", "idle", "idle_device", "idle_min", "idle_sigma",
                "buffer_max", "stem")
"""The arguments a partial run must share with the call that continues it (the others do not
change its trajectory up to the step it reached)."""


def model_options(stem: str) -> dict[str, Any]:
    """``build_model``'s options for ``--stem`` (also as ``args.json`` recorded it): ``stem``
    when one is asked for."""
    return {} if stem == "auto" else {"stem": stem}


def partial_path(out: Path, method: str, seed: int) -> Path:
    return out / "partial" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', method)}-seed{seed}.npz"


class PartialRun:
    """One (method, seed) run's state at an evaluation step, saved so another process can go on."""

    def __init__(self, path: Path, method: str, seed: int, args: argparse.Namespace) -> None:
        self.path = path
        self.key = {"method": method, "seed": seed, **{k: getattr(args, k) for k in RUN_SETTINGS}}
        self._lock: IO[str] | None = None

    def save(self, state: dict[str, Any]) -> None:
        """As data (fedtitan.checkpoint's pickle-free format), atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(self.path) as fh:
            write_state(fh, {"key": self.key, **state})

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = unpack(self.path, what=f"partial run {self.path}")
        except StateError as exc:
            raise SystemExit(f"error: {exc}; delete the file to start this run over") from None
        state["key"].setdefault("stem", "auto")  # saved before --stem existed
        if state["key"] != self.key:
            diff = ", ".join(f"{k}={state['key'].get(k)!r} (now {v!r})" for k, v in self.key.items()
                             if state["key"].get(k) != v)
            raise SystemExit(f"error: {self.path} is a partial run with other settings: {diff}; "
                             "rerun with those settings, or delete the file to start this run over")
        return state

    def claim(self) -> bool:
        """Take this run (call under :func:`out_lock`): False while another process runs it. The
        claim is an flock on ``<partial>.lock``, let go when its process ends, however it ends."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_suffix(".lock"), "a")  # noqa: SIM115 (held for the run)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            print(f"{self.key['method']} seed {self.key['seed']}: running in another process; skipped", flush=True)
            return False
        return True

    def done(self) -> None:
        """The run finished (call under :func:`out_lock`): its partial state and claim go."""
        self.path.unlink(missing_ok=True)
        self.path.with_suffix(".lock").unlink(missing_ok=True)
        if not any(self.path.parent.iterdir()):
            self.path.parent.rmdir()

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None


@contextlib.contextmanager
def out_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s lock (an flock on the folder): one process at a time reads and rewrites its
    ``curves.csv`` or claims a run, so several processes can share one ``--out``."""
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def finished_rows(out: Path, steps: int, but: tuple[str, int] | None = None) -> list[dict]:
    """The rows of ``out/curves.csv`` whose (method, seed) reached ``steps`` (except ``but``)."""
    if not (out / "curves.csv").exists():
        return []
    prev = pd.read_csv(out / "curves.csv")
    done = finished_pairs(out, steps, prev) - {but}
    return [r for r in prev.to_dict("records") if (str(r["method"]), int(r["seed"])) in done]


def finished_pairs(out: Path, steps: int, prev: pd.DataFrame | None = None) -> set[tuple[str, int]]:
    if prev is None:
        if not (out / "curves.csv").exists():
            return set()
        prev = pd.read_csv(out / "curves.csv", usecols=["method", "seed", "step"])
    return {(str(m), int(sd)) for m, sd in prev[prev.step == steps][["method", "seed"]].itertuples(index=False)}


def run_hardware(df: pd.DataFrame) -> pd.Series:
    """Each row's ``hardware``; rows written before the column existed ran on a CPU (the flop
    counter could not run a model on a GPU until then)."""
    return df["hardware"].fillna("cpu") if "hardware" in df else pd.Series("cpu", index=df.index)


def method_summary(method: str, final: pd.DataFrame) -> dict:
    """One method's line of ``summary.csv`` from its runs' last rows. Wall times measured on
    different hardware do not average: they are the CPU runs' when the method has any, else
    those of the first hardware listed (``wall_ms_on`` says which; ``hardware`` lists all)."""
    hw = run_hardware(final)
    kinds = sorted(hw.unique())
    on = "cpu" if "cpu" in kinds else kinds[0]
    wall = final[hw == on]
    return {"method": method, "final_acc_mean": final.accuracy.mean(), "final_acc_sd": final.accuracy.std(),
            "select_ms_per_step": wall.select_ms_per_step.mean(), "train_ms_per_step": wall.train_ms_per_step.mean(),
            "wall_ms_on": on, "hardware": ", ".join(kinds)}


def run_one(ds, method: str, seed: int, args: argparse.Namespace, eval_x, eval_y,
            partial: PartialRun | None = None) -> list[dict]:
    import math

    from fedtitan.data.stream import NoiseSpec
    from fedtitan.devices import get_profile
    from fedtitan.devices.cost import auto_buffer_size
    from fedtitan.models import count_forward_flops

    torch.manual_seed(seed)
    model = build_model(args.model, ds.input_shape, ds.num_classes, **model_options(args.stem)).to(args.torch_device)
    fwd = count_forward_flops(model, ds.input_shape)
    block = count_forward_flops(model, ds.input_shape, n_blocks=1)
    dim = math.prod(ds.input_shape)
    data = DeviceData.on(ds, args.torch_device)
    noise = NoiseSpec(args.feature_noise, args.feature_sigma, args.label_noise)
    stream = DataStream(data, np.arange(len(ds.y_train)), v=args.velocity, seed=seed, client=0, noise=noise)
    # "titan:coarse=random,metric=sqeuclidean" passes options to the selector; "titan:buffer=auto"
    # sizes Titan's buffer every step to what the idle unit can score (needs --idle walk)
    name, _, opt_text = method.partition(":")
    opts: dict[str, Any] = {"buffer_size": args.buffer} if name == "titan" else {}
    auto = False
    for item in filter(None, opt_text.split(",")):
        key, _, v = item.partition("=")
        if key == "buffer" and v == "auto":
            auto = True
            continue
        if key == "buffer":
            opts["buffer_size"] = int(v)
            continue
        opts[key] = {"true": True, "false": False}.get(v, v)
    selector = build_selector(name, **opts)
    idle = IdleShare(args, seed) if args.idle == "walk" else None
    if auto and idle is None:
        raise SystemExit("titan:buffer=auto needs --idle walk (what the idle unit can score changes with it)")
    profile = get_profile(args.device_profile)
    rng = np.random.default_rng([seed, 1])
    rows = []
    step = 0
    sel_ms = train_ms = sim_s = sim_j = 0.0
    forwards: list[float] = []
    buffers: list[int] = []
    lr0 = paper_lr(args.model) if args.lr is None else args.lr
    saved = partial.load() if partial is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        selector.load_state_dict({k: v.to(args.torch_device) if isinstance(v, torch.Tensor) else v
                                  for k, v in saved["selector"].items()})
        stream.restore(saved["stream"])
        rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        if saved.get("cuda_rng") is not None and args.torch_device.type == "cuda":
            torch.cuda.set_rng_state(saved["cuda_rng"], args.torch_device)
        rows, step = saved["rows"], saved["step"]
        if step > args.steps:
            raise SystemExit(f"error: {partial.path} reached step {step}, past --steps {args.steps}; "  # type: ignore[union-attr]
                             "raise --steps, or delete the file to start this run over")
        sel_ms, train_ms, sim_s, sim_j = saved["sel_ms"], saved["train_ms"], saved["sim_s"], saved["sim_j"]
        forwards, buffers = saved["forwards"], saved["buffers"]
        print(f"{method} seed {seed}: continuing at step {step} ({partial.path})", flush=True)  # type: ignore[union-attr]
    while step < args.steps:
        chunk_steps = min(args.eval_every, args.steps - step)
        # the learning rate is constant within a chunk of eval_every <= 100 steps
        lr = lr_at(lr0, "step", step, args.steps, decay=0.95, every=100)
        k_fixed = int(opts.get("buffer_size", args.buffer)) if name == "titan" else int(args.velocity)
        if idle is None:
            cfg = StreamingConfig(steps=chunk_steps, batch_size=args.batch, velocity=args.velocity, lr=lr,
                                  pipeline=False)
            recs = train_streaming(model, stream, selector, cfg, rng)
            for r in recs:
                cf = r.info.get("coarse_forwards")
                t, j = device_step(method, profile, forward_flops=fwd, block_flops=block, batch=args.batch,
                                   velocity=args.velocity, buffer=k_fixed, dim=dim, coarse_forwards=cf,
                                   pipeline=args.pipeline)
                sim_s, sim_j = sim_s + t, sim_j + j
                if cf is not None:
                    forwards.append(float(cf))
        else:  # one step at a time: the idle share (and an auto buffer) change every step
            recs = []
            cfg = StreamingConfig(steps=1, batch_size=args.batch, velocity=args.velocity, lr=lr, pipeline=False)
            for t_step in range(step, step + chunk_steps):
                prof = idle.at(t_step)
                k = k_fixed
                if auto:
                    k = auto_buffer_size(prof, forward_flops=fwd, block_flops=block, batch_size=args.batch,
                                         velocity=args.velocity, buffer_max=args.buffer_max)
                    selector.filter.budget = k  # type: ignore[union-attr]
                (r,) = train_streaming(model, stream, selector, cfg, rng)
                recs.append(r)
                buffers.append(k)
                cf = r.info.get("coarse_forwards")
                t, j = device_step(method, prof, forward_flops=fwd, block_flops=block, batch=args.batch,
                                   velocity=args.velocity, buffer=k, dim=dim, coarse_forwards=cf, pipeline="all")
                sim_s, sim_j = sim_s + t, sim_j + j
                if cf is not None:
                    forwards.append(float(cf))
        step += chunk_steps
        sel_ms += sum(r.select_ms for r in recs)
        train_ms += sum(r.train_ms for r in recs)
        loss, acc = evaluate(model, eval_x, eval_y)
        row = {"dataset": args.dataset, "model": args.model, "method": method, "seed": seed, "step": step,
               "accuracy": acc, "loss": loss, "select_ms_per_step": sel_ms / step,
               "train_ms_per_step": train_ms / step,
               "coarse_forwards": float(np.mean(forwards)) if forwards else np.nan,
               "sim_time_s": sim_s, "sim_energy_j": sim_j, "hardware": device_label(args.torch_device)}
        if idle is not None:  # the buffer used under the walking idle share
            row.update(buffer_mean=float(np.mean(buffers)))
        rows.append(row)
        print(f"{method} seed {seed}: step {step}/{args.steps}, accuracy {acc:.3f}", flush=True)
        if partial is not None and step < args.steps:
            partial.save({
                "step": step, "rows": rows, "model": model.state_dict(), "selector": selector.state_dict(),
                "stream": stream.state(), "rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(args.torch_device) if args.torch_device.type == "cuda" else None,
                "sel_ms": sel_ms, "train_ms": train_ms, "sim_s": sim_s, "sim_j": sim_j, "forwards": forwards,
                "buffers": buffers})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--model", default="cnn")
    ap.add_argument("--methods", default="titan,rs,is,cis",
                    help="comma-free list separated by ';' when options are given, e.g. 'titan;titan:coarse=random'")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--velocity", type=int, default=100)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--buffer", type=int, default=30)
    ap.add_argument("--dataset", default="cifar10", choices=["cifar10", "speech-commands", "uci-har"])
    ap.add_argument("--stem", choices=["auto", "cifar", "imagenet"], default="auto",
                    help="the first block of alexnet, squeezenet and the ResNets: auto (ImageNet's above 64 px wide, "
                         "else the CIFAR variant's) or either by name; Table 1's ResNet34 on Speech Commands "
                         "takes imagenet")
    ap.add_argument("--lr", type=float, default=None,
                    help="initial learning rate (default: the paper's, 0.1 or 0.005 for ResNets)")
    ap.add_argument("--device-profile", default="jetson-nano-10w",
                    help="the simulated device whose clock bills every step (fedtitan devices list)")
    ap.add_argument("--pipeline", choices=["titan", "all", "none"], default="titan",
                    help="whose selection overlaps training on the device clock")
    ap.add_argument("--out", default="docs/results/single-device")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps (as compute.device)")
    ap.add_argument("--label-noise", type=float, default=0.0, help="fraction of streamed samples relabelled")
    ap.add_argument("--feature-noise", type=float, default=0.0, help="fraction with Gaussian noise on the inputs")
    ap.add_argument("--feature-sigma", type=float, default=1.0, help="sd of that noise (normalised units)")
    ap.add_argument("--idle", choices=["none", "walk"], default="none",
                    help="walk: the selecting unit's idle share follows a seeded random walk (Appendix B)")
    ap.add_argument("--idle-device", default="jetson-nano-10w", help="device profile for --idle walk")
    ap.add_argument("--idle-min", type=float, default=0.1)
    ap.add_argument("--idle-sigma", type=float, default=0.3)
    ap.add_argument("--buffer-max", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    if args.stem != "auto" and not takes_stem(args.model):
        ap.error(f"--stem {args.stem}: model {args.model} has one stem; --stem applies to "
                 f"{', '.join(n for n in MODELS if takes_stem(n))}")
    if args.eval_every > 100:
        ap.error("--eval-every must be <= 100 (the learning-rate decay period)")
    torch.set_num_threads(args.threads)
    try:
        args.torch_device = resolve_device(args.device)
    except FedtitanError as exc:
        ap.error(str(exc))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        from fedtitan.devices import get_profile

        get_profile(args.device_profile)
        ds = load_dataset(args.dataset, data_dir=args.data_dir)
    except FedtitanError as exc:
        ap.error(str(exc))
    ids = np.sort(np.random.default_rng(0).permutation(len(ds.y_test))[:2000])
    eval_x, eval_y = ds.tensor("test", ids).to(args.torch_device), ds.labels("test", ids).to(args.torch_device)
    methods = args.methods.split(";") if ";" in args.methods else args.methods.split(",")
    wanted = {(m, seed) for seed in range(args.seeds) for m in methods}
    t0 = time.perf_counter()
    for seed in range(args.seeds):
        for m in methods:
            partial = PartialRun(partial_path(out, m, seed), m, seed, args)
            with out_lock(out):  # what finished or started in other processes since
                if (m, seed) in finished_pairs(out, args.steps) or not partial.claim():
                    continue
            try:
                new = run_one(ds, m, seed, args, eval_x, eval_y, partial)
                with out_lock(out):
                    rows = [*finished_rows(out, args.steps, but=(m, seed)), *new]
                    with atomic_writer(out / "curves.csv") as fh:
                        pd.DataFrame(rows).to_csv(fh, index=False)
                    partial.done()
            finally:
                partial.release()
            n_done = len(wanted & finished_pairs(out, args.steps))
            print(f"[{n_done}/{len(wanted)}] {m} seed {seed}: acc {new[-1]['accuracy']:.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = finished_rows(out, args.steps)
    if not rows:
        print("nothing finished yet: every unfinished run is in another process", flush=True)
        return
    df = pd.DataFrame(rows)
    final = df[df.step == df.step.max()]
    summary = pd.DataFrame([method_summary(str(m), f) for m, f in final.groupby("method")])
    # steps to reach rs's mean final accuracy (the paper's target), per method (mean curve)
    rs = summary.loc[summary.method == "rs", "final_acc_mean"]
    target = float(rs.iloc[0]) if len(rs) else np.nan
    mean_curve = df.groupby(["method", "step"]).accuracy.mean().reset_index()
    reach = {}
    for m, g in mean_curve.groupby("method"):
        steps = time_to_accuracy(g, target, x="step", also=None, interpolate=False)[0]
        reach[m] = np.nan if np.isnan(steps) else int(steps)
    summary["steps_to_rs_final"] = summary.method.map(reach)
    summary.to_csv(out / "summary.csv", index=False)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(df, x="step", y="accuracy", hue="method", errorbar="sd", ax=ax)
    ax.set_title(f"{args.dataset}, single device, {args.model}, v={args.velocity}, B={args.batch}")
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=120)
    (out / "args.json").write_text(json.dumps({k: v for k, v in vars(args).items() if k != "torch_device"}, indent=2) + "\n")
    print(summary.to_string(index=False))


if __name__ == "__main__":
    main()
