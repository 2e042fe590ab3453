"""Deployment helpers: the exact Flower commands for a secured lab federation.

``fedtitan superlink`` / ``fedtitan supernode`` build (and by default exec) the
``flower-superlink`` / ``flower-supernode`` command lines with TLS and SuperNode
authentication; ``--insecure`` is only used when asked for, with a warning.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from fedtitan.errors import FedtitanError


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


def superlink_command(certs: str | None, insecure: bool, host: str = "0.0.0.0", port: int = 8000,
                      database: str | None = None, auth: bool = True) -> list[str]:
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


def supernode_command(superlink: str, certs: str | None, insecure: bool, key: str | None, partition_id: int,
                      num_partitions: int, device: str | None = None, meter: str = "measured",
                      port: int = 9094) -> list[str]:
    if not 0 <= partition_id < num_partitions:
        raise FedtitanError(f"--partition-id must be in 0..{num_partitions - 1}, got {partition_id}")
    if meter not in ("measured", "simulated"):
        raise FedtitanError(f"--meter must be 'measured' or 'simulated', got {meter!r}")
    node_config = f"partition-id={partition_id} num-partitions={num_partitions} meter=\"{meter}\""
    if device:
        from fedtitan.devices import get_profile

        get_profile(device)  # a clear error now rather than on the first round
        node_config += f' device="{device}"'
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
