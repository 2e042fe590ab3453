"""What the fleet proxy of ``fedtitan superlink`` costs; prints one JSON object.

    python -m simulations.benchmarks.fleet_proxy [--requests 300] [--rounds 2]

On loopback, with TLS on both legs as deployed (lab CA from ``fedtitan certs``):

1. the latency of one Fleet-API-sized request (``GET /health`` on a keep-alive connection)
   straight to the SuperLink and through the proxy: median and p90, and the difference;
2. a real deployment through the proxy (2 SuperNodes, ``flwr run`` of ``--rounds`` rounds of
   the quickstart preset): the requests each SuperNode sent through the proxy per round,
   by endpoint, times the added latency = the proxy's added time per client round; and the
   run's round wall times next to the same run with the SuperNodes dialling the SuperLink
   directly (the server polls for replies every few seconds, which dominates both).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from clients.deploy import plan_superlink
from clients.fleet_proxy import FleetProxy, upstream_verify
from fedtitan.certs import make_certs

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(port: int, host: str = "127.0.0.1", timeout: float = 60) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise RuntimeError(f"nothing listening on {host}:{port}")


def _latencies(urls: list[str], verify: Any, n: int) -> list[list[float]]:
    """``n`` requests to each URL, interleaved (a, b, a, b, ...) so load drift hits both alike."""
    out: list[list[float]] = [[] for _ in urls]
    clients = [httpx.Client(verify=verify) for _ in urls]
    try:
        for c, u in zip(clients, urls, strict=True):
            for _ in range(10):
                c.get(u)
        for _ in range(n):
            for i, (c, u) in enumerate(zip(clients, urls, strict=True)):
                t0 = time.perf_counter()
                c.get(u).raise_for_status()
                out[i].append((time.perf_counter() - t0) * 1e3)
    finally:
        for c in clients:
            c.close()
    return out


def _summary(ms: list[float]) -> dict[str, float]:
    q = statistics.quantiles(ms, n=10)
    return {"median_ms": round(statistics.median(ms), 3), "p90_ms": round(q[-1], 3)}


def _proxy_thread(proxy: FleetProxy, port: int, cert: str, key: str) -> tuple[threading.Thread, Any]:
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(proxy, host="127.0.0.1", port=port, ssl_certfile=cert, ssl_keyfile=key,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    return thread, server


def _deployment(tmp: Path, certs: Path, address: str, rounds: int, env: dict[str, str], tag: str) -> list[float]:
    """Register two SuperNodes dialling ``address``, run ``rounds`` rounds; round wall times."""
    home = tmp / f"flwr-{tag}"
    home.mkdir()
    control = env["FEDTITAN_BENCH_CONTROL"]
    (home / "config.toml").write_text(f'[superlink]\ndefault = "lab"\n\n[superlink.lab]\naddress = "{control}"\n'
                                      f'root-certificates = "{certs / "ca.crt"}"\n')
    e = {**env, "FLWR_HOME": str(home)}
    fed = [sys.executable, "-m", "simulations.cli"]
    nodes = []
    keys = {"proxy": (0, 1), "direct": (2, 3)}[tag]
    for pid, k in enumerate(keys):
        subprocess.run([str(BIN / "flwr"), "supernode", "register", str(certs / f"supernode-{k}.pub"), "lab"], env=e,
                       check=True, capture_output=True, timeout=60)
        nodes.append(subprocess.Popen([*fed, "supernode", "--superlink", address, "--certs", str(certs), "--key",
                                       f"supernode-{k}", "--partition-id", str(pid), "--num-partitions", "2",
                                       "--device", "rpi4", "--meter", "simulated", "--port", str(_free_port())],
                                      env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    out = tmp / f"run-{tag}"
    try:
        cfg = f'overrides="data.num_clients=2 run.rounds={rounds} server.fraction=1.0" out="{out}"'
        subprocess.run([str(BIN / "flwr"), "run", ".", "lab", "--stream", "--run-config", cfg], cwd=ROOT, env=e,
                       check=True, capture_output=True, timeout=600)
    finally:
        for p in nodes:
            p.kill()
            p.wait()
    import pandas as pd

    return [round(float(x), 3) for x in pd.read_csv(out / "rounds.csv").wall_s]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        certs = tmp / "certs"
        make_certs(certs, ["127.0.0.1"], nodes=4)
        verify = upstream_verify(str(certs / "ca.crt"))
        # 1. latency, as deployed: `fedtitan superlink` (the SuperLink and the proxy, two processes)
        c1, f1 = _free_port(), _free_port()
        sl = subprocess.Popen([sys.executable, "-m", "simulations.cli", "superlink", "--certs", str(certs), "--host",
                               "127.0.0.1", "--port", str(f1), "--control-port", str(c1), "--results-root",
                               str(tmp / "results1")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(c1)
            _wait(f1)
            direct, proxied = _latencies([f"https://127.0.0.1:{c1}/health", f"https://127.0.0.1:{f1}/health"],
                                         verify, args.requests)
        finally:
            sl.terminate()
            sl.wait(timeout=30)
        added_ms = statistics.median(proxied) - statistics.median(direct)
        # 2. requests per round: the proxy in this process, so its counters can be read
        control, fleet = _free_port(), _free_port()
        plan = plan_superlink(str(certs), False, "127.0.0.1", fleet, "127.0.0.1", control,
                              results_root=str(tmp / "results"))
        link = subprocess.Popen(plan.superlink, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait(control)
            proxy = FleetProxy(f"https://127.0.0.1:{control}", verify=verify)
            _, server = _proxy_thread(proxy, fleet, str(plan.certfile), str(plan.keyfile))
            _wait(fleet)
            env["FEDTITAN_BENCH_CONTROL"] = f"127.0.0.1:{control}"
            proxy.counts.clear()
            walls_proxy = _deployment(tmp, certs, f"127.0.0.1:{fleet}", args.rounds, env, "proxy")
            counts = dict(proxy.counts)
            walls_direct = _deployment(tmp, certs, f"127.0.0.1:{control}", args.rounds, env, "direct")
            server.should_exit = True
        finally:
            link.terminate()
            link.wait(timeout=15)
    per_node_round = sum(counts.values()) / 2 / args.rounds
    print(json.dumps({
        "health_direct": _summary(direct), "health_via_proxy": _summary(proxied),
        "added_ms_per_request": round(added_ms, 3),
        "deployment": {"supernodes": 2, "rounds": args.rounds,
                       "requests_via_proxy_by_endpoint": counts,
                       "requests_per_supernode_per_round": round(per_node_round, 1),
                       "added_s_per_client_round": round(per_node_round * added_ms / 1e3, 4),
                       "round_wall_s_via_proxy": walls_proxy, "round_wall_s_direct": walls_direct},
        "note": "requests include the SuperNode's idle polling for the whole run, so per round they over-count "
                "what a round needs",
    }, indent=2))


if __name__ == "__main__":
    main()
