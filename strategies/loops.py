"""Which loop runs a run: :func:`fleet_server` builds the synchronous round loop
(:class:`strategies.server.FleetServer`) or, with ``server.mode = "async"``, the event-driven one
(:class:`strategies.async_loop.AsyncServer`) for a run folder, with its sinks, checkpoints and
client states."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from flwr.serverapp import Grid

from fedtitan.checkpoint import Checkpoint
from fedtitan.config import Config
from fedtitan.results.tracking import make_tracker
from strategies.async_loop import AsyncServer
from strategies.checkpoints import KEEP_CHECKPOINTS, Checkpointer, client_states_dir
from strategies.client_states import ClientStates
from strategies.server import AfterCollect, FleetServer
from strategies.sinks import ProgressFn, ProgressSink, Sink, TrackerSink, WriterSink


def fleet_server(grid: Grid, cfg: Config, out_dir: str | Path, progress: ProgressFn | None = None,
                 resume_from: Checkpoint | None = None, pool: bool | None = None,
                 stop: threading.Event | None = None, after_collect: Sequence[AfterCollect] = ()) -> FleetServer:
    """A run whose record is the folder ``out_dir`` (its files, checkpoints and clients'
    states), followed by ``cfg.tracking``'s tracker and ``progress`` (called with each round's
    row). Nothing is written before the server starts."""
    run_dir = Path(out_dir).expanduser()
    writer = WriterSink(run_dir, save_model=cfg.run.save_model)
    sinks: list[Sink] = [writer]
    t = cfg.tracking
    if t.backend != "none":
        sinks.append(TrackerSink(make_tracker(t.backend, t.uri, t.project, t.mode), run_dir,
                                 json.loads(cfg.to_json()), report=t.report))
    if progress is not None:
        sinks.append(ProgressSink(progress))
    token = hashlib.sha1(f"{cfg.to_json()}|{run_dir.resolve()}|{time.time_ns()}".encode()).hexdigest()[:16]
    kind = AsyncServer if cfg.server.mode == "async" else FleetServer
    return kind(grid, cfg, ClientStates(client_states_dir(run_dir), cfg.data.num_clients, KEEP_CHECKPOINTS),
                       sinks=sinks, checkpointer=Checkpointer(run_dir, cfg.run.checkpoint_every, guard=writer.safe),
                       stop=stop, resume_from=resume_from, pool=pool, after_collect=after_collect, token=token)
