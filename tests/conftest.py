"""Shared fixtures: locate ../shared/data without hard-coded absolute paths."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # two workers on two cores: one torch thread each (the unit tests run in 47 s, against 123 s
    # with each worker's default threads fighting over the cores and 80 s without workers)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    env = os.environ.get("FEDTITAN_SHARED_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(ROOT.parent / "shared" / "data")
    for c in candidates:
        if (c / "README.md").exists() or (c / "cifar10").exists():
            return c
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data()
    if path is None:
        pytest.skip("../shared/data not found (set FEDTITAN_SHARED_DATA)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep decoded-data caches out of the user's home, but share them across one test session."""
    monkeypatch.setenv("FEDTITAN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture
def free_port() -> Callable[[], int]:
    """A function returning a TCP port on 127.0.0.1 that was free when asked."""

    def pick() -> int:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])

    return pick


# Slow tests that start no Ray instance and no SuperLink: they may run beside anything.
IN_PROCESS = {"test_single_device.py", "test_central_cifar.py", "test_server_round.py"}
# Files of in-process cases where only the tests named so start Ray
RAY_ONLY = {"test_resume.py": ("test_ray_", "test_a_ray_", "test_a_sweep_"),
            "test_async_run.py": ("test_an_async_sweep_",)}


def xdist_group(item: pytest.Item) -> str | None:
    """The worker group of a test under ``pytest -n`` (``--dist loadgroup``): the deployment's
    tests (SuperLink, SuperNodes, a flood) share one worker, and every other slow test shares
    another, so no two Ray instances start at once (``ray.init()`` may attach to a running one,
    and a test that counts Ray's processes must see only its own). Unit tests go anywhere.
    Tests that start processes stop only their own (tests/processes.py): the flood test once
    failed in CI because the other deployment test's cleanup, on the other worker, killed its
    SuperLink."""
    if "slow" not in item.keywords:
        return None
    name = item.path.name
    if name == "test_deployment.py":
        return "deploy"
    if name in RAY_ONLY and not item.name.startswith(RAY_ONLY[name]):
        return None
    return None if name in IN_PROCESS else "ray"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``gpu`` tests run where CUDA is visible and skip cleanly elsewhere; slow tests get their
    worker group (:func:`xdist_group`)."""
    import torch

    for item in items:
        group = xdist_group(item)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device visible")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
