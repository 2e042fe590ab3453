"""Run and sweep folders as Python objects: their settings, tables, reports and figures.

    from fedtitan.results.views import Run, Sweep, load

    run = load("runs/qs")          # a Run (a folder with config.json) or a Sweep (index.csv)
    run.rounds                     # one row per round (pandas)
    run.plot()                     # accuracy against virtual time (a matplotlib Figure)

They read what a run wrote (``fedtitan.results``) and launch nothing; ``fedtitan.run`` and
``fedtitan.sweep`` (the launcher, :mod:`simulations.api`) return them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtitan.errors import FedtitanError
from fedtitan.fileio import table_path

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from fedtitan.config import Config

__all__ = ["PLOT_KINDS", "Run", "Sweep", "figure", "load"]

PLOT_KINDS = ("accuracy-time", "accuracy-ratio", "tiers", "partition", "staleness")


def load(path: str | Path) -> Run | Sweep:
    """The run or sweep in ``path`` (a folder with ``rounds.csv``, or with ``index.csv``)."""
    p = Path(path)
    if (p / "index.csv").exists():
        return Sweep(p)
    if (p / "config.json").exists():
        return Run(p)
    if not p.exists():
        raise FedtitanError(f"{p} does not exist")
    raise FedtitanError(f"{p} is neither a fedtitan run folder (config.json) nor a sweep folder (index.csv)")


def figure(kind: str, path: str | Path, target: float | None = None) -> tuple[Figure, str]:
    """The figure ``fedtitan plot KIND`` draws for a run or sweep folder, and what it shows
    beyond the kind (the run whose partition a ``partition`` heatmap draws; else "")."""
    from fedtitan.results import analysis, plots

    if kind not in PLOT_KINDS:
        raise FedtitanError(f"unknown plot kind {kind!r}; choose one of {', '.join(PLOT_KINDS)}")
    if kind == "partition":
        from fedtitan.data.partition import heatmap
        from fedtitan.results.report import first_partition

        part = first_partition(Path(path))
        if part is None:
            raise FedtitanError(f"no partition.csv under {path} (runs of older fedtitan versions lack it; "
                                "`fedtitan data summary ... --heatmap` draws one from the data settings)")
        return heatmap(part[1]), f"partition of {part[0]}"
    rounds, clients, params = analysis.load_sweep(path)
    varying = [p for p in params if rounds[p].nunique() > 1]
    if kind == "accuracy-time":
        hue = None
        if varying:
            rounds = rounds.assign(group=rounds[varying].astype(str).agg(" ".join, axis=1))
            hue = "group"
        return plots.accuracy_vs_time(rounds, hue, target=target), ""
    if kind == "tiers":
        from fedtitan.results.report import PER, server_mode

        return plots.tier_costs(analysis.tier_costs(clients, []), unit=PER[server_mode(rounds)]), ""
    if kind == "staleness":
        from fedtitan.results.report import has_staleness, staleness_figure

        if not has_staleness(clients):
            p = Path(path)
            if (p / "index.csv").exists():
                raise FedtitanError(f"{path} has no staleness: none of its runs is asynchronous (server.mode = async)")
            if json.loads((p / "config.json").read_text()).get("server", {}).get("mode") == "async":
                raise FedtitanError(f"{path} has no staleness yet: no update of this asynchronous run has arrived")
            raise FedtitanError(f"{path} has no staleness: it is a synchronous run (server.mode = sync)")
        return staleness_figure(clients, varying), ""
    return plots.accuracy_vs_ratio(analysis.ratio_final(rounds, varying), hue="series"), ""


def _report(path: Path, target: float | None, out: str | Path | None) -> Path:
    from fedtitan.results.report import build_report

    return build_report(path, target, out)[0]


def _csv(folder: Path, name: str) -> pd.DataFrame:
    """The folder's table ``name``, plain or gzipped (archived runs), or an empty frame."""
    import pandas as pd

    path = table_path(folder, name)
    return pd.read_csv(path) if path.exists() else pd.DataFrame()


class Run:
    """One run folder: its settings, summary and tables, read when first used.

    Attributes:
        path: the folder.
        config: the run's settings (a :class:`~fedtitan.config.Config`).
        summary: ``summary.json`` as a dict (final accuracy, rounds, virtual time in s,
            energy in J, ...); empty while the run has not finished.
        rounds: one row per round (``rounds.csv``: accuracy, loss, ``virtual_time_s``,
            ``energy_cum_j``, ...).
        clients: one row per (round, client) (``clients.csv``: device, status, simulated
            seconds and joules per phase, ...).
        fleet: the device timeline of living fleets (``fleet.csv``; empty otherwise).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "config.json").exists():
            raise FedtitanError(f"{self.path} is not a fedtitan run folder (no config.json)")

    def __repr__(self) -> str:
        s = self.summary
        if not s:
            return f"Run({str(self.path)!r}, unfinished)"
        if not self.finished:
            return f"Run({str(self.path)!r}, {'failed' if s.get('failed') else 'interrupted'} after {s.get('rounds')} rounds)"
        acc = s.get("final_accuracy")
        acc_text = f"{acc:.4f}" if isinstance(acc, float) and not math.isnan(acc) else "-"
        return f"Run({str(self.path)!r}, {s.get('rounds')} rounds, final accuracy {acc_text})"

    def _repr_html_(self) -> str:
        import html

        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" if isinstance(v, float) else
                       f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in self.summary.items() if not isinstance(v, (dict, list)))
        return f"<b>fedtitan run</b> <code>{html.escape(str(self.path))}</code><table>{rows}</table>"

    @cached_property
    def config(self) -> Config:
        from fedtitan.config import validate

        return validate(json.loads((self.path / "config.json").read_text()))

    @property
    def summary(self) -> dict[str, Any]:
        f = self.path / "summary.json"
        return json.loads(f.read_text()) if f.exists() else {}

    @property
    def finished(self) -> bool:
        """Whether every round is done (or the run stopped at its target accuracy); False for a
        run cut off, interrupted or failed (:func:`resume` goes on with the first two)."""
        s = self.summary
        return bool(s) and not s.get("interrupted") and not s.get("failed")

    @cached_property
    def rounds(self) -> pd.DataFrame:
        return _csv(self.path, "rounds.csv")

    @cached_property
    def clients(self) -> pd.DataFrame:
        return _csv(self.path, "clients.csv")

    @cached_property
    def fleet(self) -> pd.DataFrame:
        return _csv(self.path, "fleet.csv")

    def refresh(self) -> Run:
        """Forget the tables read so far (to watch a run another process is writing)."""
        for name in ("rounds", "clients", "fleet"):
            self.__dict__.pop(name, None)
        return self

    def report(self, target: float | None = None, out: str | Path | None = None) -> Path:
        """Write the HTML report (``report.html`` in the folder, or ``out``) and return its path.
        ``target``: the accuracy for time-to-accuracy (default: none for a single run)."""
        return _report(self.path, target, out)

    def plot(self, kind: str = "accuracy-time", target: float | None = None) -> Figure:
        """The figure ``fedtitan plot KIND`` draws: ``accuracy-time`` (accuracy against virtual
        seconds, a dashed line at ``target``), ``tiers`` (seconds and joules per device tier),
        ``partition`` (labels per client) or, for an asynchronous run, ``staleness`` (staleness
        of its updates per device type)."""
        return figure(kind, self.path, target)[0]


class Sweep:
    """One sweep folder: its index, its runs and the analysis tables across them.

    Attributes:
        path: the folder.
        index: ``index.csv``: one row per run (``run_id``, the swept settings, ``seed``,
            ``status`` done/pending/failed, ``wall_s``).
        params: the swept settings (column names of ``index`` and of the tables).
        runs: the finished runs, ``{run_id: Run}``.
        rounds / clients: every finished run's ``rounds.csv`` / ``clients.csv`` in one table,
            with ``run_id``, ``seed`` and a column per swept setting.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not (self.path / "index.csv").exists():
            raise FedtitanError(f"{self.path} is not a fedtitan sweep folder (no index.csv)")

    def __repr__(self) -> str:
        idx = self.index
        done = int((idx.status == "done").sum())
        return f"Sweep({str(self.path)!r}, {done} of {len(idx)} runs done, swept: {', '.join(self.params) or '-'})"

    def _repr_html_(self) -> str:
        import html

        return f"<b>fedtitan sweep</b> <code>{html.escape(str(self.path))}</code>" + self.index.to_html(index=False)

    @property
    def index(self) -> pd.DataFrame:
        import pandas as pd

        return pd.read_csv(self.path / "index.csv")

    @property
    def params(self) -> list[str]:
        return [c for c in self.index.columns if c not in ("run_id", "status", "path", "seed", "wall_s")]

    @property
    def runs(self) -> dict[str, Run]:
        idx = self.index
        return {str(r.run_id): Run(self.path / str(r.path)) for r in idx[idx.status == "done"].itertuples()}

    @cached_property
    def _tables(self) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
        from fedtitan.results import analysis

        return analysis.load_sweep(self.path)

    @property
    def rounds(self) -> pd.DataFrame:
        return self._tables[0]

    @property
    def clients(self) -> pd.DataFrame:
        return self._tables[1]

    def refresh(self) -> Sweep:
        """Forget the tables read so far (runs finished since are read on the next use)."""
        self.__dict__.pop("_tables", None)
        return self

    def _by(self, by: Sequence[str] | None) -> list[str]:
        varying = [p for p in self._tables[2] if self.rounds[p].nunique(dropna=False) > 1]
        chosen = list(by) if by is not None else varying
        unknown = [b for b in chosen if b not in self.rounds.columns]
        if unknown:
            raise FedtitanError(f"{unknown[0]!r} is not a column of this sweep; swept: {', '.join(varying) or '-'}")
        return chosen

    def final_accuracy(self, by: Sequence[str] | None = None) -> pd.DataFrame:
        """Final accuracy per configuration (``by``: default every swept setting): mean, sd, 95%
        CI half-width over seeds and the number of runs."""
        from fedtitan.results import analysis

        cols = self._by(by)
        if not cols:
            return analysis.final_accuracy(self.rounds.assign(all="all"), ["all"])
        return analysis.final_accuracy(self.rounds, cols)

    def time_to_accuracy(self, target: float | None = None, by: Sequence[str] | None = None,
                         baseline: tuple[str, str] = ("selection.method", "rs")) -> pd.DataFrame:
        """Virtual seconds and joules to reach ``target`` per configuration (mean over seeds),
        and the speed-up against ``baseline`` (default: random selection, whose mean final
        accuracy is also the default target, as in the Titan paper). ``attrs["target"]`` holds
        the target used and ``attrs["verdict"]`` one sentence reading the table."""
        from fedtitan.results import analysis

        cols = self._by(by)
        table, used = analysis.tta_table(self.rounds, cols, target, baseline)
        table.attrs["target"] = used
        table.attrs["verdict"] = analysis.verdict(table, cols, used)
        return table

    def paired(self, key: str, a: str, b: str, window: float = 1 / 6) -> pd.DataFrame:
        """``a`` minus ``b`` for setting ``key`` (e.g. ``"selection.method", "titan", "rs"``),
        paired by seed: per seed the difference of final accuracy and of the mean accuracy over
        the last ``window`` of rounds, then their mean and 95% CI. Other swept settings each get
        their own rows."""
        import pandas as pd

        from fedtitan.results import analysis

        if key not in self.rounds.columns:
            raise FedtitanError(f"{key!r} is not a swept setting of this sweep; swept: {', '.join(self.params) or '-'}")
        values = {str(v) for v in self.rounds[key].unique()}
        for v in (a, b):
            if str(v) not in values:
                raise FedtitanError(f"{key} has no runs with value {v!r}; it has {', '.join(sorted(values))}")
        rounds = self.rounds.assign(**{key: self.rounds[key].astype(str)})
        others = [c for c in self._by(None) if c != key]
        groups = rounds.groupby(others, dropna=False) if others else [((), rounds)]
        rows = []
        for gkey, g in groups:
            gap = analysis.paired_gap(g, key, str(a), str(b), window)
            if gap is None:
                continue
            labels = dict(zip(others, gkey if isinstance(gkey, tuple) else (gkey,), strict=True))
            rows.append({**labels, "comparison": f"{a} - {b}", "seeds": len(gap["seeds"]),
                         "final_diff_mean": gap["final_mean"], "final_diff_ci95": gap["final_ci95"],
                         "late_diff_mean": gap["late_mean"], "late_diff_ci95": gap["late_ci95"]})
        return pd.DataFrame(rows)

    def report(self, target: float | None = None, out: str | Path | None = None) -> Path:
        """Write the sweep's HTML report (``report.html``) and return its path."""
        return _report(self.path, target, out)

    def plot(self, kind: str = "accuracy-time", target: float | None = None) -> Figure:
        """As :meth:`Run.plot`, across the sweep's runs (one line per configuration, sd bands
        over seeds), plus ``accuracy-ratio`` for sweeps over ``pruning.ratio``."""
        return figure(kind, self.path, target)[0]
