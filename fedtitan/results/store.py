"""Run directories: resolved config, versions, and tidy CSV tables written atomically."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import platform
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fedtitan.errors import FedtitanError
from fedtitan.fileio import DiskFullError, append_bytes, atomic_writer


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


def csv_text(rows: list[dict[str, Any]], columns: list[str] | None = None, header: bool = True) -> str:
    """``pd.DataFrame(rows, columns=columns).to_csv(index=False, header=header)``, written by
    hand: the same values read back for what a run records (numbers, text, booleans, None and
    NaN as empty; an integer column with gaps stays integers, where pandas writes floats),
    without pandas' fixed cost (a few ms a call, three calls a round: a tenth of a small
    model's round). Columns: ``columns``, else every key in the order first met."""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\n")
    if header:
        out.writerow(columns)
    cells = _cell
    out.writerows([cells(r.get(c)) for c in columns] for r in rows)
    return buf.getvalue()


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (float, np.floating)):
        return repr(float(v))
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV table, up to its last complete line (a disk that filled up or a power
    cut during an append can leave part of a line)."""
    if not path.exists():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    import pandas as pd

    return pd.read_csv(io.StringIO(text)).to_dict("records") if text.strip() else []


class RunWriter:
    """Keeps ``rounds.csv``, ``clients.csv`` and ``fleet.csv`` of one run up to date per round.

    clients.csv and fleet.csv grow by appending a round's rows in one write (rewriting them
    whole each round cost O(rounds x clients): 0.1 s a round after 300 rounds of 10 clients,
    0.7 s with a living fleet of 50 devices); they are rewritten only when a row brings a
    column the file lacks. rounds.csv (one row a round) is replaced atomically."""

    def __init__(self, out: str | Path) -> None:
        self.dir = prepare_dir(out)
        self.rounds: list[dict[str, Any]] = []
        # rounds.csv's text up to its last row, kept: (rows in it, their columns, the text); a
        # round's rewrite then formats its newest row, not the run's (O(rounds) a round)
        self._rounds_head: tuple[int, list[str], str] = (0, [], "")
        self.clients: list[dict[str, Any]] = []
        self.fleet_rows = 0  # fleet.csv's rows (every device every round: not kept in memory)
        self._columns: dict[str, list[str]] = {}  # the header of each appended table on disk

    def write_config(self, config_json: str, seed: int, extra: dict[str, Any] | None = None) -> None:
        with self.safe():
            self._write_config(config_json, seed, extra)

    def _write_config(self, config_json: str, seed: int, extra: dict[str, Any] | None) -> None:
        atomic_write_text(self.dir / "config.json", json.dumps(json.loads(config_json), indent=2) + "\n")
        meta = {"seed": seed, "versions": versions(), "git_commit": git_commit(), "host": platform.node(),
                **(extra or {})}
        atomic_write_text(self.dir / "meta.json", json.dumps(meta, indent=2) + "\n")

    def write_partition(self, table: Any) -> None:
        """Per-client sample counts and label histogram: ``fedtitan.data.summary``'s table, or
        anything with its text as ``csv()`` (:class:`fedtitan.data.partition.PartitionTable`)."""
        text = table.csv() if callable(getattr(table, "csv", None)) else table.to_csv()
        with self.safe():
            atomic_write_text(self.dir / "partition.csv", text)

    def add_round(self, row: dict[str, Any], client_rows: list[dict[str, Any]],
                  fleet_rows: list[dict[str, Any]] | None = None) -> None:
        """Append a round; clients.csv (and fleet.csv: every device's state, with living
        fleets) first, then rounds.csv, each replaced atomically, so rounds.csv never lists a
        round whose clients are not on disk."""
        clients = self.clients + client_rows
        tables = [self.dir / "clients.csv", self.dir / "fleet.csv"]
        sizes = [p.stat().st_size if p.exists() else None for p in tables]
        with self.safe():
            try:
                self._append("clients.csv", client_rows, lambda: clients)
                if fleet_rows:
                    self._append("fleet.csv", fleet_rows, lambda: [*read_rows(self.dir / "fleet.csv"), *fleet_rows])
                atomic_write_text(self.dir / "rounds.csv", self._rounds_csv([*self.rounds, row]))
            except BaseException:  # the round is not written: take its rows back out of the tables
                for path, size in zip(tables, sizes, strict=True):
                    with contextlib.suppress(OSError):
                        if size is None:
                            path.unlink(missing_ok=True)
                        elif path.stat().st_size != size:
                            os.truncate(path, size)
                            self._columns.pop(path.name, None)  # rewritten whole next time, to be sure
                raise
        self.rounds.append(row)
        self.clients = clients
        self.fleet_rows += len(fleet_rows or [])

    def _append(self, name: str, rows: list[dict[str, Any]], everything: Any) -> None:
        """Add ``rows`` to table ``name``: one append, or (a new file, a new column) the whole
        table, ``everything()``, replaced atomically."""
        if not rows:
            return
        path = self.dir / name
        columns = self._columns.get(name)
        if columns is None or not path.exists() or any(k not in columns for r in rows for k in r):
            table = everything()
            columns = list(dict.fromkeys(k for r in table for k in r))
            atomic_write_text(path, csv_text(table, columns))
            self._columns[name] = columns
            return
        append_bytes(path, csv_text(rows, columns, header=False).encode())

    def _rounds_csv(self, rows: list[dict[str, Any]]) -> str:
        """``csv_text(rows)``, from the kept text of all rows but the last: only rows added
        since are formatted, unless a column appeared (then all of it, once)."""
        n, columns, head = self._rounds_head
        known = set(columns)
        new = [k for k in dict.fromkeys(k for r in rows[n:] for k in r) if k not in known]
        if new or n > len(rows) - 1 or not columns:
            n, columns = 0, list(dict.fromkeys(k for r in rows for k in r))
            head = csv_text([], columns)
        if n < len(rows) - 1:
            head += csv_text(rows[n:-1], columns, header=False)
            n = len(rows) - 1
        self._rounds_head = (n, columns, head)
        return head + csv_text(rows[-1:], columns, header=False)

    def update_last_round(self, **fields: Any) -> None:
        """Set ``fields`` of the newest round (e.g. its checkpoint cost) and rewrite rounds.csv."""
        self.rounds[-1].update(fields)
        with self.safe():
            atomic_write_text(self.dir / "rounds.csv", self._rounds_csv(self.rounds))

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
                    rows = read_rows(path)
                except (OSError, ValueError) as exc:
                    raise FedtitanError(f"cannot resume: {path} is unreadable ({exc})") from None
                if len(rows) < n:
                    raise FedtitanError(f"cannot resume: {path} has {len(rows)} rows but the checkpoint recorded {n}")
            tables.append((path, rows[:n]))
        with self.safe():
            for path, rows in tables:
                if rows:
                    atomic_write_text(path, csv_text(rows))
                elif path.name != "rounds.csv":
                    path.unlink(missing_ok=True)
        (_, self.rounds), (_, self.clients), (_, fleet_kept) = tables
        self._rounds_head = (0, [], "")
        self.fleet_rows = len(fleet_kept)
        self._columns = {}  # the next append rewrites each table once, with its header

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
