"""Faults for tests, from this one place: a server SIGKILLed mid-round, a client process killed.

Production code checks no test flag: the round calls its ``after_collect`` hooks (see
:func:`strategies.loops.fleet_server`, which both a run's :func:`strategies.server_app.run_server`
and a sweep's runs build their server with) and the ClientApp is plain; the faults below are
installed only by tests.

- :func:`kill_at_round` -- an ``after_collect`` hook that SIGKILLs this process mid-round N,
  after the clients replied (their states are stored) and before anything of the round is
  recorded: the harshest place a crash can land.
- :func:`kill_client_mod` -- a Flower client mod that SIGKILLs the process training a
  partition in a round, once (it creates a marker file first): a Ray worker killed mid-round,
  as the out-of-memory killer does.
- ``python -m tests.faults [--kill-at-round N] [--kill-client ROUND:PARTITION:MARKER] ARGS...``
  installs them and runs the ``fedtitan`` command line with ``ARGS`` (what the subprocess tests
  in tests/integration/test_resume.py and test_tracking_run.py run). ``ARGS`` may be ``run``,
  ``resume`` or ``sweep``; in a sweep, ``--kill-at-round N`` kills the whole sweep in round N of
  the first run that reaches it.
"""

from __future__ import annotations

import functools
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedtitan.wire import CONFIG_RECORD, NODE_PARTITION, PARTITION_KEY, SERVER_ROUND_KEY


def kill_at_round(server_round: int) -> Callable[[int, list[Any]], None]:
    """An ``after_collect`` hook: SIGKILL this process once round ``server_round``'s replies are in."""

    def hook(rnd: int, results: list[Any]) -> None:
        if rnd == server_round:
            os.kill(os.getpid(), signal.SIGKILL)

    return hook


def kill_client_mod(server_round: int, partition_id: int, marker: str | Path) -> Callable[..., Any]:
    """A client mod: SIGKILL the process about to train ``partition_id`` in ``server_round``,
    the first time only (the file ``marker`` remembers it, across Ray's restarted processes)."""
    marker = str(marker)

    def mod(msg: Any, context: Any, call_next: Callable[[Any, Any], Any]) -> Any:
        rec = msg.content.config_records.get(CONFIG_RECORD)
        if rec is not None and str(rec.get(SERVER_ROUND_KEY)) == str(server_round):
            pid = rec[PARTITION_KEY] if PARTITION_KEY in rec else context.node_config[NODE_PARTITION]
            if int(pid) == partition_id and not os.path.exists(marker):
                Path(marker).touch()
                os.kill(os.getpid(), signal.SIGKILL)
        return call_next(msg, context)

    return mod


def with_train_mod(app: Any, mod: Callable[..., Any]) -> Any:
    """A ClientApp that runs ``app`` with ``mod`` before its train function (cloudpickled to
    Ray's workers with the mod inside)."""
    from flwr.clientapp import ClientApp

    faulty = ClientApp()

    def delegate(msg: Any, context: Any) -> Any:
        return app(msg, context)

    faulty.train(mods=[mod])(delegate)
    faulty.evaluate()(delegate)
    faulty.query()(delegate)
    return faulty


def install(kill_at: int | None = None, kill_client: str | None = None) -> None:
    """Put the faults where the launcher picks up the server and the ClientApp (the module
    attributes it imports when a run starts: ``strategies.server_app.run_server`` for a run,
    ``strategies.loops.fleet_server`` for each run of a sweep); ``kill_client``:
    ``ROUND:PARTITION:MARKER``."""
    import clients.client_app
    import strategies.loops
    import strategies.server_app

    if kill_at is not None:
        hooks = [kill_at_round(kill_at)]
        strategies.server_app.run_server = functools.partial(  # type: ignore[assignment]
            strategies.server_app.run_server, after_collect=hooks)
        strategies.loops.fleet_server = functools.partial(  # type: ignore[assignment]
            strategies.loops.fleet_server, after_collect=hooks)
    if kill_client is not None:
        rnd, pid, marker = kill_client.split(":", 2)
        clients.client_app.app = with_train_mod(clients.client_app.app, kill_client_mod(int(rnd), int(pid), marker))


def main(argv: list[str]) -> int:
    faults: dict[str, Any] = {}
    while argv and argv[0] in ("--kill-at-round", "--kill-client"):
        flag, value, argv = argv[0], argv[1], argv[2:]
        if flag == "--kill-at-round":
            faults["kill_at"] = int(value)
        else:
            faults["kill_client"] = value
    install(**faults)
    from simulations.cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
