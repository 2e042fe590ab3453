"""Stopping what a test started, and nothing else.

Tests that launch Flower's detached helpers (a SuperLink started by ``flwr run``, the
ServerApp and ClientApp processes a SuperExec spawns) tag their environment with
``FEDTITAN_TEST_TAG``; every process they start inherits it, so cleanup finds exactly this
test's processes. Matching by name and start time instead once killed the SuperLink of a test
running beside it on the other pytest worker.
"""

from __future__ import annotations

import psutil

TAG_ENV = "FEDTITAN_TEST_TAG"


def tagged(tag: str) -> list[psutil.Process]:
    """The live processes whose environment carries ``FEDTITAN_TEST_TAG=tag``."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get(TAG_ENV) == tag:
                found.append(p)
        except psutil.Error:  # gone, a zombie, or another user's
            pass
    return found


def kill_tagged(tag: str, also: list[psutil.Process] | None = None, timeout: float = 10.0) -> None:
    """SIGKILL the processes tagged ``tag`` (and ``also``, with their descendants); wait for them."""
    victims: list[psutil.Process] = []
    for p in also or []:
        try:
            victims += [*p.children(recursive=True), p]
        except psutil.Error:
            pass
    victims += tagged(tag)
    for p in victims:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(victims, timeout=timeout)
