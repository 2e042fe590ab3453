"""Run directories: resolved config, versions, and tidy CSV tables written atomically."""

from __future__ import annotations

import contextlib
import json
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from fedtitan.errors import FedtitanError
from fedtitan.fileio import DiskFullError, atomic_writer


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_writer`)."""
    with atomic_writer(path) as fh:
        fh.write(text.encode())


def prepare_dir(out: str | Path) -> Path:
    """Create the output folder and prove it is writable, before any work starts."""
    path = Path(out).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise FedtitanError(f"cannot write to output directory {path}: {exc.strerror or exc}; "
                            "choose another --out") from None
    return path


RECORDED_PACKAGES = ("fedtitan", "torch", "numpy", "pandas", "flwr", "ray")


def versions() -> dict[str, str]:
    """Installed versions of what shaped a run (read from package metadata: the library
    imports neither Flower nor Ray)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def git_commit() -> str | None:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return res.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class RunWriter:
    """Keeps ``rounds.csv`` and ``clients.csv`` of one run up to date, atomically, per round."""

    def __init__(self, out: str | Path) -> None:
        self.dir = prepare_dir(out)
        self.rounds: list[dict[str, Any]] = []
        self.clients: list[dict[str, Any]] = []
        self.fleet: list[dict[str, Any]] = []

    def write_config(self, config_json: str, seed: int, extra: dict[str, Any] | None = None) -> None:
        with self.safe():
            self._write_config(config_json, seed, extra)

    def _write_config(self, config_json: str, seed: int, extra: dict[str, Any] | None) -> None:
        atomic_write_text(self.dir / "config.json", json.dumps(json.loads(config_json), indent=2) + "\n")
        meta = {"seed": seed, "versions": versions(), "git_commit": git_commit(), "host": platform.node(),
                **(extra or {})}
        atomic_write_text(self.dir / "meta.json", json.dumps(meta, indent=2) + "\n")

    def write_partition(self, table: pd.DataFrame) -> None:
        """Per-client sample counts and label histogram (``fedtitan.data.summary``)."""
        with self.safe():
            atomic_write_text(self.dir / "partition.csv", table.to_csv())

    def add_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]],
                  fleet_rows: list[dict[str, Any]] | None = None) -> None:
        """Append a round; clients.csv (and fleet.csv: every device's state, with living
        fleets) first, then rounds.csv, each replaced atomically, so rounds.csv never lists a
        round whose clients are not on disk."""
        clients = self.clients + client_rows
        fleet = self.fleet + (fleet_rows or [])
        with self.safe():
            atomic_write_text(self.dir / "clients.csv", pd.DataFrame(clients).to_csv(index=False))
            if fleet_rows is not None:
                atomic_write_text(self.dir / "fleet.csv", pd.DataFrame(fleet).to_csv(index=False))
            atomic_write_text(self.dir / "rounds.csv", pd.DataFrame([*self.rounds, row]).to_csv(index=False))
        self.rounds.append(row)
        self.clients = clients
        self.fleet = fleet

    def update_last_round(self, **fields: Any) -> None:
        """Set ``fields`` of the newest round (e.g. its checkpoint cost) and rewrite rounds.csv."""
        self.rounds[-1].update(fields)
        with self.safe():
            atomic_write_text(self.dir / "rounds.csv", pd.DataFrame(self.rounds).to_csv(index=False))

    def restore(self, rounds: int, clients: int, fleet: int) -> None:
        """Take back the first ``rounds`` / ``clients`` / ``fleet`` rows of the tables on disk
        (what a checkpoint recorded; rows written after it are dropped, on disk too)."""
        from fedtitan.errors import FedtitanError

        tables = []
        for name, n in (("rounds.csv", rounds), ("clients.csv", clients), ("fleet.csv", fleet)):
            path = self.dir / name
            rows: list[dict[str, Any]] = []
            if n:
                try:
                    rows = pd.read_csv(path).to_dict("records")
                except (OSError, ValueError) as exc:
                    raise FedtitanError(f"cannot resume: {path} is unreadable ({exc})") from None
                if len(rows) < n:
                    raise FedtitanError(f"cannot resume: {path} has {len(rows)} rows but the checkpoint recorded {n}")
            tables.append((path, rows[:n]))
        with self.safe():
            for path, rows in tables:
                if rows:
                    atomic_write_text(path, pd.DataFrame(rows).to_csv(index=False))
                elif path.name != "rounds.csv":
                    path.unlink(missing_ok=True)
        (_, self.rounds), (_, self.clients), (_, self.fleet) = tables

    def save_arrays(self, name: str, arrays: dict[str, Any]) -> Path:
        """``name`` (e.g. model.npz) holding named numpy arrays, written atomically."""
        import numpy as np

        path = self.dir / name
        with self.safe(), atomic_writer(path) as fh:
            np.savez(fh, **arrays)
        return path

    @contextlib.contextmanager
    def safe(self) -> Iterator[None]:
        """A full disk is one line saying where and how many rounds are safe."""
        try:
            yield
        except DiskFullError as exc:
            raise DiskFullError(f"{exc}; {len(self.rounds)} finished rounds are safe in {self.dir} (rounds.csv, "
                                f"clients.csv); free some space and `fedtitan resume {self.dir}` continues from "
                                "its last checkpoint (a sweep resumes its runs)") from None


    def finish(self, summary: dict[str, Any]) -> None:
        with self.safe():
            atomic_write_text(self.dir / "summary.json", json.dumps(summary, indent=2, default=float) + "\n")
