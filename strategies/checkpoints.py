"""A run's checkpoints: writing one after a round, and finding the one a cut-off run goes on from.

A checkpoint is the run's state as data (``fedtitan.checkpoint``): the model, the strategy's
state, the clocks, the RNGs, the clients' state rounds and what each sink needs back. It lives
in ``RUN_DIR/checkpoints`` (the clients' states in ``checkpoints/clients``); the newest
:data:`KEEP_CHECKPOINTS` are kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fedtitan.checkpoint import Checkpoint, CheckpointStore, StateError, unpack
from fedtitan.config import Config
from fedtitan.errors import FedtitanError
from strategies.client_states import missing_state

log = logging.getLogger("fedtitan")
CHECKPOINTS = "checkpoints"  # a run's checkpoints and its clients' states, inside the run folder
CLIENT_STATES = "clients"  # inside CHECKPOINTS
KEEP_CHECKPOINTS = 2
RESUME_MAY_CHANGE = ("run.rounds",)  # beside the result-neutral settings (fedtitan.config.RESULT_NEUTRAL)


def client_states_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / CLIENT_STATES


class Checkpointer:
    """Saves a checkpoint every ``every`` rounds (and after the last one) in ``run_dir``;
    ``guard``: a context that turns a full disk into a message saying what is safe."""

    def __init__(self, run_dir: str | Path, every: int,
                 guard: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext) -> None:
        self.store = CheckpointStore(Path(run_dir) / CHECKPOINTS, keep=KEEP_CHECKPOINTS)
        self.every, self.guard = every, guard

    def due(self, server_round: int, last: bool) -> bool:
        """Whether round ``server_round`` ends with a checkpoint (``last``: the run ends after it)."""
        return self.every > 0 and (last or server_round % self.every == 0)

    def encode(self, server_round: int, state: dict[str, Any]) -> bytes:
        return self.store.encode(server_round, state)

    def save(self, server_round: int, blob: bytes) -> None:
        with self.guard():
            self.store.save(server_round, blob)

    def older_client_rounds(self, server_round: int) -> list[np.ndarray]:
        return older_client_rounds(self.store, server_round)


def older_client_rounds(store: CheckpointStore, server_round: int) -> list[np.ndarray]:
    """The client-state rounds that the checkpoints older than ``server_round`` refer to (their
    client states must stay on disk while they do)."""
    out = []
    for r in store.rounds():
        if r < server_round:
            try:
                out.append(np.asarray(unpack(store.path(r), "checkpoint")["client_rounds"], dtype=np.int64))
            except (StateError, KeyError, TypeError):
                continue
    return out[-(KEEP_CHECKPOINTS - 1):] if KEEP_CHECKPOINTS > 1 else []


def find_checkpoint(run_dir: str | Path) -> Checkpoint | None:
    """The newest valid checkpoint of a run folder whose client states are all on disk (a
    corrupt, truncated or incomplete one is refused with one warning line, the previous one used)."""
    run_dir = Path(run_dir)
    store = CheckpointStore(run_dir / CHECKPOINTS, keep=KEEP_CHECKPOINTS)
    at_most: int | None = None
    while True:
        ckpt = store.latest(at_most)
        if ckpt is None:
            return None
        gone = missing_state(client_states_dir(run_dir), np.asarray(ckpt.state.get("client_rounds", []), dtype=np.int64))
        if gone is None:
            return ckpt
        log.warning("checkpoint %s refers to client states that are missing (partition %d, round %d); "
                    "using the previous checkpoint", ckpt.path, *gone)
        at_most = ckpt.server_round - 1


def resume_config(run_dir: str | Path, overrides: list[str] | None = None) -> tuple[Config, Checkpoint | None]:
    """The config a cut-off run goes on with (its own config.json plus ``overrides``, of which
    only ``run.rounds`` and settings that do not change results may differ) and the checkpoint
    it goes on from (None when the run already finished every round). Every name the config gives
    is checked (``fedtitan.preflight.check_config``). One-line errors."""
    from fedtitan.config import RESULT_NEUTRAL, apply_overrides, changed_settings, validate
    from fedtitan.preflight import check_config

    run_dir = Path(run_dir)
    try:
        stored = json.loads((run_dir / "config.json").read_text())
    except FileNotFoundError:
        raise FedtitanError(f"{run_dir} is not a fedtitan run folder (no config.json)") from None
    except (OSError, ValueError) as exc:
        raise FedtitanError(f"cannot read {run_dir / 'config.json'}: {exc}") from None
    cfg = check_config(validate(apply_overrides(json.loads(json.dumps(stored)), list(overrides or []))))
    changed = changed_settings(stored, cfg, (*RESULT_NEUTRAL, *RESUME_MAY_CHANGE))
    if changed:
        raise FedtitanError(f"cannot resume {run_dir} with {changed[0]}: that setting changes what the run computes "
                            "(only run.rounds, to extend a run, and "
                            f"{', '.join(k + '*' if k.endswith('.') else k for k in RESULT_NEUTRAL)} may change); "
                            "start a new run with another --out")
    ckpt = find_checkpoint(run_dir)
    if ckpt is None:
        every = int(stored.get("run", {}).get("checkpoint_every", 1))
        why = "it was made with run.checkpoint_every=0" if every == 0 else "it ended before its first checkpoint"
        raise FedtitanError(f"no valid checkpoint in {run_dir / CHECKPOINTS} ({why}); start it again with fedtitan run")
    if cfg.run.rounds < ckpt.server_round:
        raise FedtitanError(f"run.rounds={cfg.run.rounds} but {run_dir} has already finished {ckpt.server_round} rounds; "
                            f"give run.rounds > {ckpt.server_round} to extend it")
    finished = (run_dir / "summary.json").is_file() and (
        ckpt.server_round >= cfg.run.rounds or ckpt.state.get("target_reached_round") is not None)
    return cfg, None if finished else ckpt
