"""Deployment helpers: a secured lab federation.

``fedtitan superlink`` runs the SuperLink bound to loopback (all of its APIs: Fleet, Control,
Runtime) with TLS and SuperNode authentication, and in front of it, on the interface the
boards reach, a proxy that passes on the Fleet API only (:mod:`clients.fleet_proxy`): the
Control API, which the open-source SuperLink does not authenticate, stays on the server.
``fedtitan supernode`` builds (and execs) the ``flower-supernode`` command line.
``--insecure`` is only used when asked for, with a warning.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedtitan.errors import FedtitanError
from fedtitan.paths import RESULTS_ROOT_ENV  # read by the ServerApp (strategies/server_app.py)
from fedtitan.wire import (
    NODE_DEVICE,
    NODE_METER,
    NODE_NUM_PARTITIONS,
    NODE_PARTITION,
    NODE_STATE_DIR,
)


def _exe(name: str) -> str:
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if not found:
        raise FedtitanError(f"{name} not found; install flwr (pip install 'flwr[simulation]>=1.41,<1.42')")
    return found


def _need(certs: Path, *names: str) -> list[Path]:
    paths = [certs / n for n in names]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FedtitanError(f"missing {', '.join(missing)}; create them with: fedtitan certs {certs}")
    return paths


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def superlink_command(certs: str | None, insecure: bool, host: str = "127.0.0.1", port: int = 8001,
                      database: str | None = None, auth: bool = True) -> list[str]:
    """The ``flower-superlink`` command line; ``host``/``port`` is where *all* its APIs listen."""
    if certs is None and not insecure:
        raise FedtitanError("refusing to start a SuperLink without TLS: pass --certs DIR (see `fedtitan certs`) "
                            "or, on a trusted network only, --insecure")
    cmd = [_exe("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if insecure:
        print("fedtitan: WARNING: --insecure: traffic is unencrypted and SuperNodes are not authenticated",
              file=sys.stderr)
        cmd.append("--insecure")
    else:
        assert certs is not None
        ca, crt, key = _need(Path(certs), "ca.crt", "superlink.crt", "superlink.key")
        cmd += ["--ssl-ca-certfile", str(ca), "--ssl-certfile", str(crt), "--ssl-keyfile", str(key)]
        if auth:
            cmd.append("--enable-supernode-auth")
    if database:
        cmd += ["--database", database]
    return cmd


@dataclass(frozen=True)
class SuperLinkPlan:
    """A SuperLink on the operator's side (loopback by default) with all of its APIs, and the
    fleet proxy on the interface the boards reach, passing on the Fleet API only."""

    superlink: list[str]
    fleet_host: str
    fleet_port: int
    control_host: str
    control_port: int
    certfile: str | None
    keyfile: str | None
    ca_certfile: str | None
    results_root: Path
    authorized_keys: tuple[str, ...] = ()  # SuperNode keys the proxy lets through; () = no check at the door
    limits: Any = None  # clients.fleet_proxy.Limits (None: its defaults)

    @property
    def scheme(self) -> str:
        return "http" if self.certfile is None else "https"

    def describe(self) -> str:
        ctl = f"{self.control_host}:{self.control_port}"
        from clients.fleet_proxy import Limits

        lim = self.limits or Limits()
        body = (f"{lim.max_body_bytes / 2**20:g} MB" if lim.max_body_bytes else
                f"{lim.body_factor:g} x the largest object pulled, at least {lim.body_floor_bytes / 2**20:g} MB")
        door = (f"SuperNode signatures checked at the door against {', '.join(self.authorized_keys)}"
                if self.authorized_keys else "no SuperNode authentication at the door")
        return (f"SuperLink (Fleet + Control + Runtime APIs): {shlex.join(self.superlink)}\n"
                f"fleet proxy (boards dial this; Fleet API and /health only): "
                f"{self.scheme}://{_hostport(self.fleet_host, self.fleet_port)}\n"
                f"  {door}; bodies up to {body}, {lim.max_inflight_bytes / 2**20:g} MB in flight, "
                f"{lim.max_conns_per_source} connections per address, headers within {lim.header_timeout_s:g} s\n"
                f"operator (flwr supernode register / flwr run, from this host): address = \"{ctl}\"\n"
                f"results root (a run's `out` must stay inside): {self.results_root}")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def plan_superlink(certs: str | None, insecure: bool, host: str, port: int, control_host: str = "127.0.0.1",
                   control_port: int = 8001, database: str | None = None, auth: bool = True,
                   results_root: str = "results", authorized_keys: list[str] | None = None,
                   limits: Any = None) -> SuperLinkPlan:
    """The SuperLink's command and the proxy's settings. With SuperNode authentication (TLS and
    no ``--no-auth``) the proxy checks signatures against ``authorized_keys`` (files or
    folders of ``*.pub``; default the certs folder's ``supernode-*.pub``)."""
    if not host:
        raise FedtitanError("--host is required: the address of the interface the boards reach (e.g. 192.168.1.10)")
    if host in ("0.0.0.0", "::"):
        print(f"fedtitan: WARNING: --host {host} serves the Fleet API on every interface; name the boards' one if you "
              "can", file=sys.stderr)
    if (control_host, control_port) == (host, port):
        raise FedtitanError(f"--control-port {control_port} on {control_host} is the fleet port; give them different "
                            "ports (the SuperLink listens on the control address, the proxy on the fleet address)")
    if control_host not in LOOPBACK:
        print(f"fedtitan: WARNING: the Control API (register keys, submit runs) listens on {control_host}: anyone who "
              "reaches it can join the federation or run code here; keep that interface private", file=sys.stderr)
    cmd = superlink_command(certs, insecure, control_host, control_port, database, auth)
    crt = key = ca = None
    if not insecure:
        assert certs is not None
        ca_p, crt_p, key_p = _need(Path(certs), "ca.crt", "superlink.crt", "superlink.key")
        ca, crt, key = str(ca_p), str(crt_p), str(key_p)
    keys: tuple[str, ...] = ()
    if auth and not insecure:
        keys = tuple(authorized_keys or [str(Path(str(certs)))])
        from clients.fleet_proxy import NodeKeys

        try:
            NodeKeys(keys)
        except ValueError as exc:
            raise FedtitanError(str(exc)) from None
    elif authorized_keys:
        raise FedtitanError("--authorized-keys needs SuperNode authentication (TLS via --certs, without --no-auth)")
    return SuperLinkPlan(cmd, host, port, control_host, control_port, crt, key, ca,
                         Path(results_root).expanduser().resolve(), keys, limits)


def _wait_healthy(plan: SuperLinkPlan, proc: subprocess.Popen[bytes], timeout_s: float = 90.0) -> None:
    import time

    import httpx

    from clients.fleet_proxy import upstream_verify

    url = f"{plan.scheme}://{_hostport(plan.control_host, plan.control_port)}/health"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise FedtitanError(f"flower-superlink exited with status {proc.returncode} before it was ready (see its "
                                "output above)")
        try:
            if httpx.get(url, verify=upstream_verify(plan.ca_certfile), timeout=2.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise FedtitanError(f"flower-superlink did not answer on {url} within {timeout_s:.0f} s")


def run_superlink(plan: SuperLinkPlan) -> int:
    """Start the SuperLink, wait until it answers, serve the fleet proxy until interrupted
    (Ctrl-C, SIGTERM) or until the SuperLink exits; then stop both."""
    from clients.fleet_proxy import FleetProxy, NodeKeys, serve, upstream_verify

    try:
        plan.results_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FedtitanError(f"cannot create the results root {plan.results_root}: {exc.strerror}") from None
    env = {**os.environ, RESULTS_ROOT_ENV: str(plan.results_root)}
    print(plan.describe(), flush=True)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    # uvicorn shuts down on SIGINT/SIGTERM and then re-raises the signal to the handler it
    # found: make that one an exception, so the SuperLink below is always stopped too.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    proc = subprocess.Popen(plan.superlink, env=env)
    try:
        _wait_healthy(plan, proc)
        upstream = f"{plan.scheme}://{_hostport(plan.control_host, plan.control_port)}"
        proxy = FleetProxy(upstream, verify=upstream_verify(plan.ca_certfile),
                           keys=NodeKeys(plan.authorized_keys) if plan.authorized_keys else None, limits=plan.limits)
        serve(proxy, plan.fleet_host, plan.fleet_port, plan.certfile, plan.keyfile,
              should_stop=lambda: proc.poll() is not None)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 0 if proc.returncode in (0, -signal.SIGTERM, None) else int(proc.returncode)


DEFAULT_STATE_DIR = "~/.fedtitan/state"


def supernode_command(superlink: str, certs: str | None, insecure: bool, key: str | None, partition_id: int,
                      num_partitions: int, device: str | None = None, meter: str = "measured",
                      port: int = 9094, state_dir: str | None = DEFAULT_STATE_DIR) -> list[str]:
    """The ``flower-supernode`` command for one board. ``state_dir``: where the board keeps its
    client state (one folder per run, the newest rounds of it), so a board that restarts goes
    on with its stream and buffer; None sends the state to the server with every reply instead."""
    if not 0 <= partition_id < num_partitions:
        raise FedtitanError(f"--partition-id must be in 0..{num_partitions - 1}, got {partition_id}")
    if meter not in ("measured", "simulated"):
        raise FedtitanError(f"--meter must be 'measured' or 'simulated', got {meter!r}")
    node_config = f"{NODE_PARTITION}={partition_id} {NODE_NUM_PARTITIONS}={num_partitions} {NODE_METER}=\"{meter}\""
    if state_dir:
        folder = Path(state_dir).expanduser().resolve()
        if '"' in str(folder) or "\\" in str(folder):
            raise FedtitanError(f"--state-dir {folder}: a path with quotes or backslashes cannot go in a node config")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FedtitanError(f"--state-dir {folder}: cannot create it ({exc.strerror or exc})") from None
        node_config += f' {NODE_STATE_DIR}="{folder}"'
    if device:
        from fedtitan.devices import get_profile

        get_profile(device)  # a clear error now rather than on the first round
        node_config += f' {NODE_DEVICE}="{device}"'
    cmd = [_exe("flower-supernode"), "--superlink", superlink, "--node-config", node_config, "--port", str(port)]
    if insecure:
        if certs is None:
            print("fedtitan: WARNING: --insecure: traffic is unencrypted", file=sys.stderr)
        cmd.append("--insecure")
        return cmd
    if certs is None:
        raise FedtitanError("refusing to connect without TLS: pass --certs DIR (with ca.crt) or --insecure")
    (ca,) = _need(Path(certs), "ca.crt")
    cmd += ["--root-certificates", str(ca)]
    if key:
        priv = Path(key) if os.sep in key else Path(certs) / key
        (pub,) = _need(priv.parent, priv.name + ".pub")
        _need(priv.parent, priv.name)
        cmd += ["--auth-supernode-private-key", str(priv), "--auth-supernode-public-key", str(pub)]
    return cmd


def exec_or_print(cmd: list[str], dry_run: bool) -> int:
    print(shlex.join(cmd))
    if dry_run:
        return 0
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached
