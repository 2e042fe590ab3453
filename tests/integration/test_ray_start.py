"""The Ray cluster a run starts (simulations.run._ray_init): without the dashboard's head, the
autoscaler monitor, and (quiet) the log monitor; FEDTITAN_RAY_PROCESSES=full keeps Ray's own."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import psutil
import pytest

from fedtitan.config import load_config
from simulations.run import RAY_PROCESSES_ENV, _end_ray_monitor, _LeanHead, _ray_init

pytestmark = pytest.mark.slow


def _ray_processes() -> list[str]:
    """The command lines of this process's descendants (Ray's processes)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            out.append(" ".join(p.cmdline()))
        except psutil.Error:
            pass
    return out


@contextlib.contextmanager
def _own_cluster(monkeypatch: pytest.MonkeyPatch, quiet: bool, processes: str) -> Iterator[Any]:
    """Ray started here as a run starts it (``_ray_init``), with FEDTITAN_RAY_PROCESSES set; shut down after."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is running in this process")
    monkeypatch.setenv(RAY_PROCESSES_ENV, processes)
    _ray_init(load_config("quickstart", []), None, quiet)
    try:
        yield ray
    finally:
        _end_ray_monitor()
        ray.shutdown()


def _started(monkeypatch: pytest.MonkeyPatch, quiet: bool, processes: str) -> list[str]:
    with _own_cluster(monkeypatch, quiet, processes) as ray:
        @ray.remote(num_cpus=1)
        class Echo:
            def pythonpath(self) -> str:
                return os.environ.get("PYTHONPATH", "")

        # a client process starts and has the driver's path, as before
        assert os.getcwd() in ray.get(Echo.remote().pythonpath.remote()).split(os.pathsep)
        return _ray_processes()


def test_a_quiet_run_starts_ray_without_dashboard_autoscaler_and_log_monitor(monkeypatch):
    import ray._private.node as ray_node

    original = ray_node.Node
    procs = _started(monkeypatch, quiet=True, processes="lean")
    assert ray_node.Node is original  # put back once Ray is up
    joined = "\n".join(procs)
    assert "gcs_server" in joined and "raylet" in joined
    for absent in ("dashboard/dashboard.py", "autoscaler/_private/monitor.py", "log_monitor.py"):
        assert absent not in joined


def test_a_run_that_prints_keeps_the_log_monitor(monkeypatch):
    joined = "\n".join(_started(monkeypatch, quiet=False, processes="lean"))
    assert "log_monitor.py" in joined
    assert "dashboard/dashboard.py" not in joined and "autoscaler/_private/monitor.py" not in joined


def test_full_keeps_rays_own_processes(monkeypatch):
    joined = "\n".join(_started(monkeypatch, quiet=True, processes="full"))
    for present in ("dashboard/dashboard.py", "autoscaler/_private/monitor.py", "log_monitor.py"):
        assert present in joined


def test_the_lean_head_changes_only_a_head_it_starts(monkeypatch):
    """Installed and put back without Ray started; a node that is not a head keeps its params."""
    import ray._private.node as ray_node
    from ray._private.parameter import RayParams

    monkeypatch.delenv(RAY_PROCESSES_ENV, raising=False)
    original = ray_node.Node
    seen: list[RayParams] = []
    monkeypatch.setattr(original, "__init__", lambda self, ray_params, head=False, *a, **k: seen.append(ray_params))
    lean = _LeanHead(log_monitor=False)
    assert lean.install()
    try:
        assert ray_node.Node is not original and issubclass(ray_node.Node, original)
        ray_node.Node(RayParams(), head=False)
        ray_node.Node(ray_params=RayParams(), head=True)
    finally:
        lean.uninstall()
    assert ray_node.Node is original
    assert (seen[0].no_monitor, seen[0].include_log_monitor) == (False, None)
    assert (seen[1].no_monitor, seen[1].include_log_monitor) == (True, False)
    monkeypatch.setenv(RAY_PROCESSES_ENV, "full")
    assert not _LeanHead(log_monitor=False).install()
    assert ray_node.Node is original


def _client_process_view(monkeypatch: pytest.MonkeyPatch, processes: str) -> dict:
    """What a client process of a run's own cluster imported, and its job's runtime env."""
    from flwr.server.superlink.fleet.vce.backend import raybackend

    from simulations.run import _client_actor

    flowers = raybackend.ClientAppActor
    with _own_cluster(monkeypatch, True, processes) as ray:
        with _client_actor():
            actor_class = raybackend.ClientAppActor
            actor = actor_class.options(num_cpus=1).remote()

            def view(self: object) -> dict:
                import sys

                import ray as r
                names = ("sqlalchemy", "alembic", "flwr.simulation", "simulations.ray_actor")
                return {"modules": [m for m in names if m in sys.modules],
                        "runtime_env": dict(r.get_runtime_context().runtime_env), "class": type(self).__mro__[1].__name__}

            got = ray.get(actor.__ray_call__.remote(view))
        assert raybackend.ClientAppActor is flowers  # put back after the run
        return {**got, "swapped": actor_class is not flowers}


def test_a_client_process_imports_flower_without_sql_and_without_a_runtime_env(monkeypatch):
    """A run's client actors come from simulations.ray_actor: the client process imports
    nothing of Flower's simulation runtime (its SQL stores, its command line); a cluster started
    here hands its environment down, with no job runtime env (which would start each client
    process through setup_worker.py)."""
    got = _client_process_view(monkeypatch, "lean")
    assert got["swapped"] and got["class"] == "LeanClientAppActor"
    assert got["modules"] == ["simulations.ray_actor"]
    assert got["runtime_env"] == {}


def test_full_keeps_flowers_client_actor(monkeypatch):
    got = _client_process_view(monkeypatch, "full")
    assert not got["swapped"] and got["class"] == "ClientAppActor"
    assert "simulations.ray_actor" not in got["modules"] and "flwr.simulation" in got["modules"]
