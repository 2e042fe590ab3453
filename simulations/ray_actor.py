"""The Ray actor that runs a simulation's clients: Flower's ``ClientAppActor`` (Flower 1.41 and
1.42), from a module that imports only what a client process needs.

A client process learns its actor's class from what Ray sends it, and imports the modules that
names. Flower's own class lives in ``flwr.simulation``, whose package imports the whole
simulation runtime: the server's link state and object store (SQLAlchemy, Alembic), Flower's
command line (FastAPI); about 1.5 s of CPU in each client process (measured here) for what only
a server uses. :class:`LeanClientAppActor` does what Flower's does, with Flower's client-side
errors, and is sent by reference (a plain class of this module), so a client process imports
this module, Flower's ``ClientApp`` and nothing of ``flwr.simulation``; Flower's SQL stores are
put off here too (:func:`simulations.flower_lean.defer_flower_sql`), should anything import
them. :func:`simulations.run.simulate` hands the class to Flower's Ray backend;
``FEDTITAN_RAY_PROCESSES=full``, or another Flower release, keeps Flower's."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from simulations.flower_lean import defer_flower_sql

defer_flower_sql()

import ray  # noqa: E402  (after the stand-ins)
from flwr.clientapp.client_app import ClientApp, ClientAppException, LoadClientAppError  # noqa: E402


class LeanClientAppActor:
    """What Flower's ``ClientAppActor`` does (flwr.simulation.ray_transport.ray_actor, 1.41 and
    1.42): ``run`` loads the ClientApp and passes it one message; ``terminate`` ends the actor."""

    def __init__(self, on_actor_init_fn: Callable[[], None] | None = None) -> None:
        if on_actor_init_fn:
            on_actor_init_fn()

    def run(self, client_app_fn: Callable[[], ClientApp], message: Any, cid: str,
            context: Any) -> tuple[str, Any, Any]:
        """The reply of the ClientApp to ``message``, with ``cid`` and the (updated) context; a
        ClientApp that fails to load raises its own error, any other a ``ClientAppException``."""
        try:
            app = client_app_fn()
            out_message = app(message=message, context=context)
        except LoadClientAppError:
            raise
        except Exception as ex:
            raise ClientAppException(str(ex)) from ex
        return cid, out_message, context

    def terminate(self) -> None:
        ray.actor.exit_actor()


ClientAppActor = ray.remote(LeanClientAppActor)
