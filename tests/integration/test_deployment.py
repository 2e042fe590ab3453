"""A secured Flower deployment on loopback: TLS SuperLink with SuperNode authentication, two
registered SuperNodes (one measured, one simulated), one unregistered (refused)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from fedtitan.certs import make_certs
from fedtitan.cli import main as cli_main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _kill_tree(procs, t0):
    victims = []
    for p in procs:
        try:
            parent = psutil.Process(p.pid)
            for c in parent.children(recursive=True):
                c.kill()
                victims.append(c)
            parent.kill()
            victims.append(parent)
        except psutil.Error:
            pass
    for p in psutil.process_iter(["cmdline", "create_time"]):  # detached helpers started by this test
        cmd = " ".join(p.info["cmdline"] or [])
        if p.info["create_time"] >= t0 - 1 and any(k in cmd for k in ("flower-super", "flwr-serverapp", "flwr-clientapp")):
            try:
                p.kill()
                victims.append(p)
            except psutil.Error:
                pass
    psutil.wait_procs(victims, timeout=10)


def test_insecure_start_is_refused_without_flag(capsys):
    assert cli_main(["superlink", "--dry-run"]) == 2
    assert "refusing to start a SuperLink without TLS" in capsys.readouterr().err
    assert cli_main(["supernode", "--superlink", "127.0.0.1:1", "--partition-id", "0", "--num-partitions", "1",
                     "--dry-run"]) == 2


def test_tls_superlink_with_auth_measured_and_simulated_nodes(tmp_path, free_port):
    certs = tmp_path / "certs"
    make_certs(certs, ["127.0.0.1"], nodes=3)
    port = free_port()
    home = tmp_path / "flwr-home"
    home.mkdir()
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "lab"\n\n[superlink.lab]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{certs / "ca.crt"}"\n')
    env = {**os.environ, "FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    fed = [sys.executable, "-m", "fedtitan.cli"]
    procs: list[subprocess.Popen] = []
    logs = tmp_path / "logs"
    logs.mkdir()
    t0 = time.time()

    def start(name, cmd):
        p = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=open(logs / f"{name}.log", "w"), stderr=subprocess.STDOUT)
        procs.append(p)
        return p

    try:
        start("superlink", [*fed, "superlink", "--certs", str(certs), "--host", "127.0.0.1", "--port", str(port)])
        for _ in range(60):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.5)
        time.sleep(1)
        for i in (0, 1):
            reg = subprocess.run([str(BIN / "flwr"), "supernode", "register", str(certs / f"supernode-{i}.pub"), "lab"],
                                 env=env, capture_output=True, text=True, timeout=60)
            assert reg.returncode == 0 and "registered" in reg.stdout, reg.stdout + reg.stderr
        start("node0", [*fed, "supernode", "--superlink", f"127.0.0.1:{port}", "--certs", str(certs), "--key",
                        "supernode-0", "--partition-id", "0", "--num-partitions", "2", "--device", "jetson-nano-10w",
                        "--meter", "measured", "--port", str(free_port())])
        start("node1", [*fed, "supernode", "--superlink", f"127.0.0.1:{port}", "--certs", str(certs), "--key",
                        "supernode-1", "--partition-id", "1", "--num-partitions", "2", "--device", "rpi4",
                        "--meter", "simulated", "--port", str(free_port())])
        intruder = start("intruder", [*fed, "supernode", "--superlink", f"127.0.0.1:{port}", "--certs", str(certs),
                                      "--key", "supernode-2", "--partition-id", "0", "--num-partitions", "2",
                                      "--port", str(free_port())])
        assert intruder.wait(timeout=120) != 0  # an unregistered key is refused
        assert "Failed to activate SuperNode" in (logs / "intruder.log").read_text()
        out = tmp_path / "out"
        run_config = f'overrides="data.num_clients=2 run.rounds=2 server.fraction=1.0" out="{out}"'
        res = subprocess.run([str(BIN / "flwr"), "run", ".", "lab", "--stream", "--run-config", run_config],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
        clients = pd.read_csv(out / "clients.csv")
        rounds = pd.read_csv(out / "rounds.csv")
        assert rounds.server_round.tolist() == [1, 2] and (rounds.clients_ok == 2).all()
        by_pid = clients.groupby("partition_id")
        assert set(by_pid.groups) == {0, 1}
        nano = clients[clients.partition_id == 0]
        rpi = clients[clients.partition_id == 1]
        assert (nano.device == "jetson-nano-10w").all() and (nano.measured == 1).all()
        assert (rpi.device == "rpi4").all() and (rpi.measured == 0).all()
        assert (nano.wall_s > 0).all()
        # no energy counter on this machine: measured energy is reported as unavailable, not invented
        assert (nano.energy_available == 0).all() and nano.energy_j.isna().all()
        assert (rounds.measured_energy_missing == 1).all()
        # the round's clock uses measured seconds for the measured node, simulated for the other
        for rnd, g in clients.groupby("server_round"):
            expect = max(g[g.partition_id == 0].wall_s.iloc[0], g[g.partition_id == 1].sim_time_s.iloc[0])
            assert rounds.loc[rounds.server_round == rnd, "round_time_s"].iloc[0] == pytest.approx(expect)
    finally:
        _kill_tree(procs, t0)
