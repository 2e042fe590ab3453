"""Where a run's rows go: the sinks a round loop is handed, instead of writing files itself.

A sink is told when the run starts (or goes on from a checkpoint), gets each round's rows,
the checkpoint's cost once it is known, and the run's summary at the end. What a sink needs to
go on after a crash it gives to the checkpoint (:meth:`Sink.checkpoint_state`) and takes back
from it on :meth:`Sink.start`. The run folder (:class:`WriterSink`), the experiment tracker
(:class:`TrackerSink`) and a progress display (:class:`ProgressSink`) are sinks; a test
collects rows with :class:`ListSink`.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from fedtitan.checkpoint import Checkpoint
from fedtitan.results import RunWriter
from fedtitan.results.tracking import Tracker
from strategies.history import History

if TYPE_CHECKING:
    from fedtitan.data.partition import PartitionTable

log = logging.getLogger("fedtitan")
ProgressFn = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RunStart:
    """What a sink learns when the run starts: its config (JSON), seed, compute set-up and
    partition table, and the checkpoint it goes on from (None: a fresh run)."""

    config_json: str
    seed: int
    compute: dict[str, Any]
    partition: PartitionTable
    resume_from: Checkpoint | None = None


@dataclass(frozen=True)
class RoundRows:
    """A round's rows: rounds.csv's ``row``, clients.csv's ``clients``, fleet.csv's ``fleet``
    (living fleets only)."""

    server_round: int
    row: dict[str, Any]
    clients: list[dict[str, Any]]
    fleet: list[dict[str, Any]] | None = None


@dataclass(frozen=True)
class RunEnd:
    """The run's summary, every row it recorded and its final model."""

    summary: dict[str, Any]
    history: History
    model: dict[str, np.ndarray]


class Sink(Protocol):
    def start(self, run: RunStart) -> History | None:
        """The run starts (or goes on from ``run.resume_from``); a sink that keeps the run's
        record gives back the rows recorded before the checkpoint, others None."""
        ...

    def add_round(self, rows: RoundRows) -> None: ...

    def update_round(self, fields: dict[str, Any]) -> None:
        """Fields of the newest round known after its row (its checkpoint's cost)."""
        ...

    def checkpoint_state(self) -> dict[str, Any]:
        """What this sink needs back to go on from a checkpoint (keys of the checkpoint's state)."""
        ...

    def finish(self, end: RunEnd) -> None: ...


class ListSink:
    """Keeps every row in memory (tests, notebooks)."""

    def __init__(self) -> None:
        self.rounds: list[RoundRows] = []
        self.summary: dict[str, Any] | None = None

    def start(self, run: RunStart) -> History | None:
        return None

    def add_round(self, rows: RoundRows) -> None:
        self.rounds.append(rows)

    def update_round(self, fields: dict[str, Any]) -> None:
        return None

    def checkpoint_state(self) -> dict[str, Any]:
        return {}

    def finish(self, end: RunEnd) -> None:
        self.summary = end.summary


class ProgressSink(ListSink):
    """Calls ``progress(row)`` with each round's row (a progress display)."""

    def __init__(self, progress: ProgressFn) -> None:
        super().__init__()
        self.progress = progress

    def add_round(self, rows: RoundRows) -> None:
        self.progress(rows.row)


class WriterSink:
    """The run folder: config.json, meta.json, partition.csv, rounds/clients/fleet.csv, the
    model and summary.json (:class:`fedtitan.results.RunWriter`). Nothing is written before
    :meth:`start`."""

    def __init__(self, out_dir: str | Path, save_model: bool = False) -> None:
        self.out_dir, self.save_model = Path(out_dir), save_model
        self._writer: RunWriter | None = None

    @property
    def writer(self) -> RunWriter:
        if self._writer is None:
            self._writer = RunWriter(self.out_dir)
        return self._writer

    def start(self, run: RunStart) -> History:
        w = self.writer
        resumed = resumed_history(w.dir) + ([run.resume_from.server_round] if run.resume_from else [])
        w.write_config(run.config_json, run.seed,
                       extra={"compute": run.compute, **({"resumed_from_rounds": resumed} if resumed else {})})
        w.write_partition(run.partition)
        if run.resume_from is not None:
            rows = run.resume_from.state["rows"]
            w.restore(int(rows["rounds"]), int(rows["clients"]), int(rows["fleet"]))
        return History(w.rounds, w.clients)

    def add_round(self, rows: RoundRows) -> None:
        self.writer.add_round(rows.row, rows.clients, rows.fleet)

    def update_round(self, fields: dict[str, Any]) -> None:
        self.writer.update_last_round(**fields)

    def checkpoint_state(self) -> dict[str, Any]:
        w = self.writer
        return {"rows": {"rounds": len(w.rounds), "clients": len(w.clients), "fleet": w.fleet_rows}}

    def safe(self) -> contextlib.AbstractContextManager[None]:
        """A full disk is one line saying where and how many rounds are safe."""
        return self.writer.safe()

    def finish(self, end: RunEnd) -> None:
        if self.save_model:
            self.writer.save_arrays("model.npz", end.model)
        self.writer.finish(end.summary)


class TrackerSink:
    """An experiment tracker (MLflow, TensorBoard, W&B) following the run in ``run_dir``;
    ``report``: build report.html for it at the end."""

    def __init__(self, tracker: Tracker, run_dir: Path, config: dict[str, Any], report: bool = False) -> None:
        self.tracker, self.run_dir, self.config, self.report = tracker, run_dir, config, report

    def start(self, run: RunStart) -> History | None:
        name = self.run_dir.name.removeprefix(".partial-")
        if run.resume_from is not None:
            self.tracker.resume(self.run_dir, self.config, name, dict(run.resume_from.state.get("tracker") or {}),
                                run.resume_from.server_round)
        else:
            self.tracker.start(self.run_dir, self.config, name)
        return None

    def add_round(self, rows: RoundRows) -> None:
        self.tracker.log_round(rows.server_round, rows.row)

    def update_round(self, fields: dict[str, Any]) -> None:
        return None

    def checkpoint_state(self) -> dict[str, Any]:
        return {"tracker": self.tracker.resume_info()}

    def finish(self, end: RunEnd) -> None:
        """The tracker's last entries: tier costs, the summary, the run's files and report."""
        if self.report and end.history.rounds:
            try:
                from fedtitan.results.report import build_report

                build_report(self.run_dir)
            except Exception as exc:  # the report is a convenience; the run's files are the record
                log.warning("tracking: no report.html for %s (%s)", self.run_dir, exc)
        import pandas as pd

        from fedtitan.results.analysis import tier_costs

        clients = pd.DataFrame(end.history.clients)
        self.tracker.finish(self.run_dir, end.summary,
                            tier_costs(clients, []) if "device" in clients else pd.DataFrame())


class Sinks:
    """Several sinks as one, called in order."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    def start(self, run: RunStart) -> History:
        kept = [h for s in self.sinks if (h := s.start(run)) is not None]
        return kept[0] if kept else History()

    def add_round(self, rows: RoundRows) -> None:
        for s in self.sinks:
            s.add_round(rows)

    def update_round(self, fields: dict[str, Any]) -> None:
        for s in self.sinks:
            s.update_round(fields)

    def checkpoint_state(self) -> dict[str, Any]:
        return {k: v for s in self.sinks for k, v in s.checkpoint_state().items()}

    def finish(self, end: RunEnd) -> None:
        for s in self.sinks:
            s.finish(end)


def resumed_history(run_dir: Path) -> list[int]:
    """The rounds a run folder was resumed from before (meta.json's ``resumed_from_rounds``)."""
    try:
        return [int(r) for r in json.loads((run_dir / "meta.json").read_text()).get("resumed_from_rounds", [])]
    except (OSError, ValueError, TypeError):
        return []
