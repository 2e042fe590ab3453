"""Flower's entry points to fedtitan's server: the ServerApp ``flwr run`` starts, and :func:`run_server`.

The round loop is :mod:`strategies.server`; its parts are in the modules beside it
(messages, dispatch, sampling, client states, evaluation, rows, history, sinks, checkpoints).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedtitan.checkpoint import Checkpoint
from fedtitan.config import Config, load_config
from fedtitan.errors import FedtitanError
from fedtitan.paths import RESULTS_ROOT_ENV, inside_root
from fedtitan.preflight import check_config
from strategies.checkpoints import resume_config
from strategies.loops import fleet_server
from strategies.server import AfterCollect
from strategies.sinks import ProgressFn


def run_server(grid: Grid, cfg: Config, out_dir: str | Path, progress: ProgressFn | None = None,
               resume_from: Checkpoint | None = None, pool: bool | None = None,
               stop: threading.Event | None = None, after_collect: Sequence[AfterCollect] = ()) -> dict[str, Any]:
    """One run on ``grid``, recorded in ``out_dir``; its summary. ``pool``: its nodes are
    simulation workers that play any partition (True), real SuperNodes with a partition each
    (False), or ask them (None). ``stop``: set it (e.g. on Ctrl-C) to end the run after the
    current round (the summary then says ``interrupted``). ``after_collect``: called with
    (round, results) once a round's replies are in (tests' faults, tests/faults.py)."""
    if resume_from is not None:  # the run is unfinished again until it ends
        (Path(out_dir) / "summary.json").unlink(missing_ok=True)
    return fleet_server(grid, cfg, out_dir, progress, resume_from, pool, stop, after_collect).run()


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run .``: reads ``preset`` / ``overrides`` / ``out`` from the run config;
    ``resume=true`` continues the run in ``out`` from its last checkpoint (``overrides`` may then
    extend ``run.rounds``).

    Under ``fedtitan superlink`` the output must stay inside its ``--results-root``."""
    rc = context.run_config
    ckpt = None
    try:
        overrides = [o for o in str(rc.get("overrides", "")).split() if o]
        resume = str(rc.get("resume", "false")).lower() in ("true", "1", "yes")
        if resume and not str(rc.get("out", "")):
            raise FedtitanError("resume=true needs out=RUN_DIR (the folder of the run to continue)")
        out: str | Path = str(rc.get("out", ""))
        root = os.environ.get(RESULTS_ROOT_ENV)
        if root and out:
            out = inside_root(root, out)
        if resume:
            cfg, ckpt = resume_config(out, overrides)
            if ckpt is None:
                print(f"fedtitan: {out} has finished all its rounds; extend it with overrides=\"run.rounds=N\"",
                      file=sys.stderr, flush=True)
                return
        else:
            cfg = check_config(load_config(str(rc.get("preset", "quickstart")), overrides))
        if not out:
            out = f"runs/{cfg.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
            if root:
                out = inside_root(root, out)
    except FedtitanError as exc:
        # one line in the run's log (`flwr run --stream`, `flwr log`); raising an ordinary
        # exception lets Flower mark the run failed with this message as its detail
        print(f"fedtitan: error: {exc}", file=sys.stderr, flush=True)
        raise
    run_server(grid, cfg, out, resume_from=ckpt)
