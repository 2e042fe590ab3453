"""Sweeps: the cartesian product of ``--grid`` values x seeds, one run folder each, resumable.

A run writes into ``.partial-RUN_ID`` and is renamed to ``RUN_ID`` only when it has finished,
so a finished run appears atomically and a killed one leaves no half result; re-running the
same command skips finished runs and resumes a cut-off one from its last checkpoint (a run
cut off before its first checkpoint is redone). ``index.csv`` lists every run
with its parameters and status and is rewritten atomically after each run.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fedtitan.checkpoint import Checkpoint
from fedtitan.config import (
    RESULT_NEUTRAL,
    Config,
    changed_settings,
    is_known_key,
    key_hint,
    load_config,
)
from fedtitan.errors import ConfigError
from fedtitan.results import atomic_write_text, prepare_dir


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    params: dict[str, str]
    seed: int
    overrides: tuple[str, ...]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``key=v1,v2,...`` items -> ordered {key: [values]}; keys validated."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise ConfigError(f"--grid {item!r} is not key=v1,v2,... (e.g. selection.method=titan,rs)")
        if not is_known_key(key):
            raise ConfigError(f"--grid: unknown config key {key!r}{key_hint(key)}")
        if key == "run.seed":
            raise ConfigError("--grid run.seed: use --seeds N instead")
        vals = [v.strip() for v in values.split(",") if v.strip()] if not key.endswith(".mix") else [values]
        if len(set(vals)) != len(vals):
            raise ConfigError(f"--grid {key}: repeated values in {vals}")
        grid[key] = vals
    return grid


def _check_same_settings(run_dir: Path, cfg: Config) -> None:
    """A finished run is only reused when it was made with the settings asked for now."""
    try:
        stored = json.loads((run_dir / "config.json").read_text())
    except (OSError, ValueError):
        return  # no readable config: nothing to compare (older runs)
    diff = changed_settings(stored, cfg, RESULT_NEUTRAL)
    if diff:
        shown = "; ".join(diff[:3]) + (f" (+{len(diff) - 3} more)" if len(diff) > 3 else "")
        raise ConfigError(f"{run_dir} was made with other settings ({shown}); resume with the same --set "
                          "values, or give a new --out")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)


def expand(grid: dict[str, list[str]], seeds: int, base_overrides: list[str], first_seed: int = 0) -> list[RunSpec]:
    """Cartesian product x seeds, in a stable order; each with its override list and id."""
    if seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {seeds}")
    keys = list(grid)
    specs = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        params = dict(zip(keys, combo, strict=True))
        for s in range(first_seed, first_seed + seeds):
            rid = "__".join([*(_slug(f"{k}={v}") for k, v in params.items()), f"seed={s}"])
            specs.append(RunSpec(rid, params, s, (*base_overrides, *(f"{k}={v}" for k, v in params.items()),
                                                  f"run.seed={s}")))
    return specs


def _write_index(root: Path, specs: list[RunSpec], status: dict[str, str], walls: dict[str, float]) -> None:
    rows = [{"run_id": s.run_id, **s.params, "seed": s.seed, "status": status.get(s.run_id, "pending"),
             "path": s.run_id, "wall_s": walls.get(s.run_id)} for s in specs]
    atomic_write_text(root / "index.csv", pd.DataFrame(rows).to_csv(index=False))


def _done(run_dir: Path) -> bool:
    """A finished run that measured something (a run where no round updated the model is redone)."""
    try:
        return not json.loads((run_dir / "summary.json").read_text()).get("failed")
    except (OSError, ValueError):
        return False


def sweep(preset: str, grid_items: list[str], seeds: int, overrides: list[str], out: str | Path,
          ray_address: str | None = None, quiet: bool = False) -> tuple[Path, list[RunSpec], int | None]:
    """Run (or resume) a sweep; returns its folder, its run list and the signal (SIGINT,
    SIGTERM) that stopped it (None when it was not stopped)."""
    from fedtitan.preflight import check_config

    grid = parse_grid(grid_items)
    specs = expand(grid, seeds, overrides)
    # validate all first, names included
    configs: dict[str, Config] = {s.run_id: check_config(load_config(preset, list(s.overrides))) for s in specs}
    from strategies.registry import check_strategy

    for cfg in configs.values():
        check_strategy(cfg)
    root = prepare_dir(out)
    status = {s.run_id: "done" if _done(root / s.run_id) else "pending" for s in specs}
    for s in specs:  # before anything in the folder changes
        if status[s.run_id] == "done":
            _check_same_settings(root / s.run_id, configs[s.run_id])
    sweep_file = root / "sweep.json"
    spec_doc = {"preset": preset, "grid": grid, "seeds": seeds, "overrides": overrides}
    if sweep_file.exists():
        old = json.loads(sweep_file.read_text())
        # a resumed sweep may add runs; record the union of what was asked
        spec_doc["history"] = [*old.get("history", []), {k: old[k] for k in ("preset", "grid", "seeds", "overrides")}]
    atomic_write_text(sweep_file, json.dumps(spec_doc, indent=2) + "\n")
    wanted = {f".partial-{s.run_id}" for s in specs if status[s.run_id] != "done"}
    for stale in root.glob(".partial-*"):  # a cut-off run of this sweep resumes from its checkpoint
        if stale.name not in wanted:
            shutil.rmtree(stale, ignore_errors=True)
    # runs of earlier invocations that are not in this grid stay listed in the index
    old_index = root / "index.csv"
    extra: list[RunSpec] = []
    walls: dict[str, float] = {}
    if old_index.exists():
        prev = pd.read_csv(old_index)
        walls = {str(r["run_id"]): float(r["wall_s"]) for _, r in prev.iterrows()
                 if pd.notna(r.get("wall_s")) and status.get(str(r["run_id"]), "done") == "done"}
        mine = {s.run_id for s in specs}
        for _, r in prev.iterrows():
            if r["run_id"] not in mine and _done(root / str(r["run_id"])):
                params = {k: str(r[k]) for k in prev.columns if k not in ("run_id", "seed", "status", "path", "wall_s")
                          and pd.notna(r[k])}
                extra.append(RunSpec(str(r["run_id"]), params, int(r["seed"]), ()))
                status[str(r["run_id"])] = "done"
    all_specs = specs + extra
    _write_index(root, all_specs, status, walls)
    todo = [s for s in specs if status[s.run_id] != "done"]
    from simulations.run import progress_bar

    prog = progress_bar("{task.fields[now]}", quiet)
    with prog:
        task = prog.add_task("sweep", total=len(specs), completed=len(specs) - len(todo), now="")

        def started(spec: RunSpec) -> None:
            prog.update(task, now=spec.run_id)

        def finished(spec: RunSpec, partial: Path, wall_s: float) -> None:
            target = root / spec.run_id
            if target.exists():
                shutil.rmtree(target)
            partial.rename(target)
            summary = json.loads((target / "summary.json").read_text())
            status[spec.run_id] = "failed" if summary.get("failed") else "done"
            if summary.get("failed"):
                prog.console.print(f"sweep: {spec.run_id} failed ({summary['failed']}); "
                                   "it is redone when the sweep is run again", markup=False)
            elif summary.get("client_rounds_failed"):
                prog.console.print(f"sweep: {spec.run_id}: {summary['client_rounds_failed']} client rounds failed "
                                   f"(first: {summary.get('first_client_error', '')}); see its clients.csv", markup=False)
            walls[spec.run_id] = wall_s
            _write_index(root, all_specs, status, walls)
            prog.update(task, advance=1)

        interrupted, stopped_by = _run_all(todo, configs, root, ray_address, started, finished)
        # A signal during a group's last run (or between runs) stops the sweep with no run cut
        # off: the runs still to go are what the message is about then.
        left = [s.run_id for s in todo if status[s.run_id] == "pending"]
        if interrupted or (stopped_by is not None and left):
            prog.update(task, stopped=True)  # its last frame shows no ETA
            prog.stop()
            where = f"during {interrupted}" if interrupted else f"with {len(left)} of {len(specs)} runs to go"
            print(f"sweep interrupted {where}; run the same command again to resume")
    return root, all_specs, stopped_by


def _shared_resources(cfg: Config) -> tuple[object, ...]:
    """What a simulation is built with: runs that agree on it can share one simulation."""
    sim = cfg.simulation
    return (sim.engine, sim.workers, sim.num_cpus, sim.num_gpus, sim.ray_address, cfg.compute.device)


def _checkpoint_to_resume(partial: Path, cfg: Config) -> Checkpoint | None:
    """The checkpoint a cut-off run of this sweep goes on from: none when the folder holds none,
    or was made with settings that change results (it is then redone from round 1)."""
    from strategies.checkpoints import find_checkpoint

    if not (partial / "config.json").is_file():
        return None
    try:
        if changed_settings((partial / "config.json").read_text(), cfg, RESULT_NEUTRAL):
            return None
    except ValueError:
        return None
    return find_checkpoint(partial)


def _run_all(todo: list[RunSpec], configs: dict[str, Config], root: Path, ray_address: str | None,
             started: Callable[[RunSpec], None],
             finished: Callable[[RunSpec, Path, float], None]) -> tuple[str | None, int | None]:
    """Run ``todo`` one after another; returns the id of the run an interrupt stopped and the
    signal that asked to stop, if any.

    Runs whose simulation settings agree run inside one Flower simulation (Ray started once,
    client processes kept warm: the start-up a run would pay again is paid once per sweep),
    whose workers play the partitions of every run; a run's clients keep their state in its
    own folder."""
    from simulations.run import check_resources, simulate
    from strategies.loops import fleet_server

    stop = threading.Event()  # set by Ctrl-C / SIGTERM (simulate): the running run ends after its round

    groups: dict[tuple[object, ...], list[RunSpec]] = {}
    for spec in todo:
        groups.setdefault(_shared_resources(configs[spec.run_id]), []).append(spec)
    for group in groups.values():
        first = configs[group[0].run_id]
        attach = bool(ray_address or first.simulation.ray_address)
        checked: set[str] = set()
        for spec in group:  # data, memory and strategy problems, before Ray starts (once per distinct setting)
            c = configs[spec.run_id]
            key = json.dumps([c.data.model_dump(), c.model.model_dump(), c.server.strategy, c.server.strategy_options,
                              c.selection.method, c.selection.options], sort_keys=True, default=str)
            if key not in checked:
                check_resources(c, attach=attach)
                checked.add(key)
        stopped: list[str] = []
        population = max(configs[s.run_id].data.num_clients for s in group)

        def server_main(grid: object, group: list[RunSpec] = group, stopped: list[str] = stopped) -> None:
            for spec in group:
                if stop.is_set():
                    stopped.append(spec.run_id)
                    return
                started(spec)
                partial = root / f".partial-{spec.run_id}"
                ckpt = _checkpoint_to_resume(partial, configs[spec.run_id])
                if ckpt is None:
                    shutil.rmtree(partial, ignore_errors=True)
                else:
                    (partial / "summary.json").unlink(missing_ok=True)
                t0 = time.perf_counter()
                server = fleet_server(grid, configs[spec.run_id], partial, resume_from=ckpt, pool=True,  # type: ignore[arg-type]
                                      stop=stop)
                summary = server.run()
                if summary.get("interrupted"):
                    stopped.append(spec.run_id)
                    return
                finished(spec, partial, time.perf_counter() - t0)

        stopped_by = simulate(server_main, first, population, ray_address, quiet=True, stop=stop)
        if stopped or stopped_by is not None:
            return (stopped[0] if stopped else None), stopped_by
    return None, None
