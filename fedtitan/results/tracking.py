"""Experiment trackers: MLflow, TensorBoard or Weights & Biases, fed by the server as rounds land.

``tracking.backend`` picks one (``none`` by default). Every backend gets the same four things:

- the flattened config (``run.seed``, ``selection.method``, ...) as parameters, at the start;
- each round's row of ``rounds.csv`` (accuracy, loss, virtual time, energy, clients) at step =
  server round, as the round is written to disk;
- per-device-tier costs at the end (``analysis.tier_costs`` of ``clients.csv``: client rounds,
  mean simulated time and energy per tier) and the run's summary;
- the run's files (``rounds.csv``, ``clients.csv``, ``summary.json``, ``config.json``) and,
  with ``tracking.report`` (default), the run's ``report.html``.

A tracker never stops a run: a tracker that fails mid-run logs one warning and is switched
off; the run folder stays the record. A missing extra is a one-line error before anything
starts, naming the ``pip install`` that fixes it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtitan.errors import ConfigError

if TYPE_CHECKING:  # tables are made by the caller: a run's start does without pandas
    import pandas as pd

log = logging.getLogger(__name__)

BACKENDS = ("none", "mlflow", "tensorboard", "wandb")
_MODULES = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}
_FILES = ("config.json", "meta.json", "rounds.csv", "clients.csv", "fleet.csv", "summary.json", "report.html")


def check_backend(backend: str, uri: str | None = None) -> None:
    """One line naming the extra to install when the backend's package is missing, and one
    for an MLflow file store that the installed MLflow refuses (MLflow 3 wants a database)."""
    module = _MODULES.get(backend)
    if module is not None and importlib.util.find_spec(module) is None:
        raise ConfigError(f"tracking.backend={backend} needs the {backend} package: "
                          f"pip install 'fedtitan[{backend}]' (or pip install {module})")
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if backend == "mlflow" and uri and (uri.startswith("file:") or "://" not in uri):
        from mlflow import environment_variables as env

        allow = getattr(env, "MLFLOW_ALLOW_FILE_STORE", None)
        if allow is not None and not allow.get():
            raise ConfigError(f"tracking.uri={uri} is an MLflow file store, which this MLflow refuses unless "
                              "MLFLOW_ALLOW_FILE_STORE=true is set; use sqlite:///DIR/mlflow.db (the default "
                              "is one beside the run folder) or set that variable")


def flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"run": {"seed": 0}}`` -> ``{"run.seed": 0}``; lists and None become strings."""
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    """The finite numeric entries of a row (trackers take numbers; NaN means 'not measured')."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if isinstance(value, bool):
            out[key] = float(value)
        elif isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


class Tracker:
    """Base tracker: does nothing. Subclasses implement the ``_`` hooks; the public methods
    turn a failing tracker off with one warning instead of stopping the run."""

    name = "none"

    def __init__(self) -> None:
        self.alive = True

    def _guard(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        if not self.alive:
            return
        try:
            fn(*args)
        except Exception as exc:  # a tracker must never lose a run
            self.alive = False
            log.warning("tracking (%s) stopped at %s: %s; the run goes on and its folder keeps everything",
                        self.name, what, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def start(self, run_dir: Path, config: dict[str, Any], run_name: str) -> None:
        self._guard("start", self._start, run_dir, config, run_name)

    def log_round(self, step: int, row: dict[str, Any]) -> None:
        self._guard(f"round {step}", self._log_round, step, _scalars(row))

    def finish(self, run_dir: Path, summary: dict[str, Any], tiers: pd.DataFrame) -> None:
        self._guard("finish", self._finish, run_dir, summary, tiers)

    def resume_info(self) -> dict[str, Any]:
        """What a checkpoint keeps so that a resumed run continues this tracker's run."""
        return {"backend": self.name, **(self._resume_info() if self.alive else {})}

    def resume(self, run_dir: Path, config: dict[str, Any], run_name: str, info: dict[str, Any], step: int) -> None:
        """Continue the tracker run ``info`` names after round ``step`` (a new one if it names none)."""
        if info.get("backend") != self.name or len(info) < 2:
            if self.name != "none":
                log.warning("tracking (%s): the checkpoint names no %s run to continue; starting a new one",
                            self.name, self.name)
            self.start(run_dir, config, run_name)
            return
        self._guard("resume", self._resume, run_dir, config, run_name, info, step)

    def _resume_info(self) -> dict[str, Any]:
        return {}

    def _resume(self, run_dir: Path, config: dict[str, Any], run_name: str, info: dict[str, Any], step: int) -> None:
        self._start(run_dir, config, run_name)

    def _start(self, run_dir: Path, config: dict[str, Any], run_name: str) -> None:
        pass

    def _log_round(self, step: int, metrics: dict[str, float]) -> None:
        pass

    def _finish(self, run_dir: Path, summary: dict[str, Any], tiers: pd.DataFrame) -> None:
        pass


def _tier_metrics(tiers: pd.DataFrame) -> dict[str, float]:
    out: dict[str, float] = {}
    for _, r in tiers.iterrows():
        for col in ("client_rounds", "time_s_mean", "energy_j_mean", "energy_j_total"):
            value = float(r[col])
            device = r["device"] if isinstance(r["device"], str) and r["device"] else "unknown"
            if math.isfinite(value):
                out[f"tier/{device}/{col}"] = value
    return out


def _files(run_dir: Path) -> list[Path]:
    return [run_dir / f for f in _FILES if (run_dir / f).is_file()]


class MlflowTracker(Tracker):
    """One MLflow run per fedtitan run, in experiment ``tracking.project``. ``tracking.uri``
    is any MLflow tracking URI (``http://host:5000``, ``sqlite:///path/mlflow.db``, a ``file:``
    store). Unset (and no ``MLFLOW_TRACKING_URI``), runs go to ``mlflow.db`` beside the run
    folder (a sweep's runs share their sweep folder's database) with artifacts in
    ``mlartifacts/`` there: ``mlflow ui --backend-store-uri sqlite:///<that folder>/mlflow.db``."""

    name = "mlflow"

    def __init__(self, uri: str | None, project: str) -> None:
        super().__init__()
        self.uri, self.project = uri or os.environ.get("MLFLOW_TRACKING_URI"), project
        self.run_id = ""
        self.client: Any = None

    def _start(self, run_dir: Path, config: dict[str, Any], run_name: str) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        artifacts = None
        if self.uri is None:
            home = run_dir.resolve().parent
            self.uri = f"sqlite:///{home / 'mlflow.db'}"
            artifacts = (home / "mlartifacts").as_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        exp = self.client.get_experiment_by_name(self.project)
        exp_id = (exp.experiment_id if exp is not None
                  else self.client.create_experiment(self.project, artifact_location=artifacts))
        run = self.client.create_run(exp_id, run_name=run_name,
                                     tags={"fedtitan.run_dir": str(run_dir.resolve().parent / run_name)})
        self.run_id = run.info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def _resume_info(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "uri": self.uri}

    def _resume(self, run_dir: Path, config: dict[str, Any], run_name: str, info: dict[str, Any], step: int) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = str(info.get("uri") or self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id = str(info["run_id"])
        self.client.get_run(self.run_id)  # it must exist
        self.client.update_run(self.run_id, status="RUNNING")

    def _log_round(self, step: int, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def _finish(self, run_dir: Path, summary: dict[str, Any], tiers: pd.DataFrame) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        final = {f"final/{k}": v for k, v in _scalars(summary).items()} | _tier_metrics(tiers)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, 0) for k, v in final.items()])
        if not tiers.empty:
            self.client.log_table(self.run_id, tiers, "tiers.json")
        for path in _files(run_dir):
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "KILLED" if summary.get("interrupted") else "FINISHED")


def _after_existing_events(logdir: Path) -> None:
    """Wait until a new TensorBoard event file sorts after the folder's existing ones.

    TensorBoard reads a folder's event files in name order, and a name starts with the whole
    second the file was opened (``events.out.tfevents.SECONDS.HOST.PID...``): a run resumed in
    the same second as the cut would otherwise sort by process id, and its rounds could be read
    before the earlier ones. Waits at most a second."""
    import time

    stamps = [int(part) for f in logdir.glob("events.out.tfevents.*")
              if len(parts := f.name.split(".")) > 3 and (part := parts[3]).isdigit()]
    if stamps:
        wait = max(stamps) + 1 - time.time()
        if wait > 0:
            time.sleep(wait)


class TensorboardTracker(Tracker):
    """Event files under ``tracking.uri`` (default ``<run dir>/tensorboard``), one sub-folder
    per run: scalars per round, the config and tier table as text, final values as hparams."""

    name = "tensorboard"

    def __init__(self, uri: str | None) -> None:
        super().__init__()
        self.root = uri
        self.writer: Any = None

    def _start(self, run_dir: Path, config: dict[str, Any], run_name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(self.root) / run_name if self.root else run_dir / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.logdir))
        self.config = flatten(config)
        rows = "\n".join(f"| {k} | {v} |" for k, v in self.config.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + rows, 0)

    def _resume_info(self) -> dict[str, Any]:
        return {"logdir": str(self.logdir)}

    def _resume(self, run_dir: Path, config: dict[str, Any], run_name: str, info: dict[str, Any], step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # same folder; events of rounds after the checkpoint (logged before the cut) are purged
        self.logdir = Path(str(info["logdir"]))
        _after_existing_events(self.logdir)
        self.writer = SummaryWriter(log_dir=str(self.logdir), purge_step=step + 1)
        self.config = flatten(config)

    def _log_round(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"round/{key}", value, step)
        self.writer.flush()

    def _finish(self, run_dir: Path, summary: dict[str, Any], tiers: pd.DataFrame) -> None:
        step = int(summary.get("rounds", 0))
        for key, value in _tier_metrics(tiers).items():
            self.writer.add_scalar(key, value, step)
        if not tiers.empty:
            self.writer.add_text("tiers", "```\n" + tiers.to_string(index=False) + "\n```", step)
        self.writer.add_text("summary", "```\n" + json.dumps(summary, indent=2, default=str) + "\n```", step)
        report = run_dir / "report.html"
        if report.is_file():
            self.writer.add_text("report", f"report: {report.resolve()}", step)
        hparams = {k: v for k, v in self.config.items() if isinstance(v, (bool, int, float, str))}
        self.writer.add_hparams(hparams, {f"final/{k}": v for k, v in _scalars(summary).items()}, run_name=".")
        self.writer.close()


class WandbTracker(Tracker):
    """A W&B run in project ``tracking.project``; ``tracking.mode`` = offline (default: files
    under ``tracking.uri`` or the run dir, ``wandb sync`` uploads them later) or online."""

    name = "wandb"

    def __init__(self, uri: str | None, project: str, mode: str) -> None:
        super().__init__()
        self.dir, self.project, self.mode = uri, project, mode
        self.run: Any = None

    def _start(self, run_dir: Path, config: dict[str, Any], run_name: str) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        wdir = Path(self.dir) if self.dir else run_dir
        wdir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, name=run_name, config=config, dir=str(wdir), mode=self.mode,  # type: ignore[arg-type]
                              reinit="create_new", settings=wandb.Settings(console="off", silent=True))
        self.wdir = wdir

    def _resume_info(self) -> dict[str, Any]:
        return {"id": self.run.id, "dir": str(self.wdir)}

    def _resume(self, run_dir: Path, config: dict[str, Any], run_name: str, info: dict[str, Any], step: int) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        self.wdir = Path(str(info.get("dir") or run_dir))
        self.wdir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=self.project, id=str(info["id"]), resume="allow", name=run_name, config=config,
                              dir=str(self.wdir), mode=self.mode,  # type: ignore[arg-type]
                              reinit="create_new", settings=wandb.Settings(console="off", silent=True))

    def _log_round(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step)

    def _finish(self, run_dir: Path, summary: dict[str, Any], tiers: pd.DataFrame) -> None:
        import wandb

        self.run.summary.update({f"final/{k}": v for k, v in _scalars(summary).items()} | _tier_metrics(tiers))
        extra: dict[str, Any] = {}
        if not tiers.empty:
            extra["tiers"] = wandb.Table(dataframe=tiers)
        report = run_dir / "report.html"
        if report.is_file():
            extra["report"] = wandb.Html(report.read_text())
        if extra:
            self.run.log(extra)
        artifact = wandb.Artifact(f"run-{self.run.id}", type="fedtitan-run")
        for path in _files(run_dir):
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)
        self.run.finish(exit_code=1 if summary.get("interrupted") else 0)


def make_tracker(backend: str, uri: str | None = None, project: str = "fedtitan", mode: str = "offline") -> Tracker:
    """The tracker for ``tracking.backend`` (the base class, a no-op, for ``none``)."""
    if backend not in BACKENDS:
        raise ConfigError(f"tracking.backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    check_backend(backend, uri)
    if backend == "mlflow":
        return MlflowTracker(uri, project)
    if backend == "tensorboard":
        return TensorboardTracker(uri)
    if backend == "wandb":
        return WandbTracker(uri, project, mode)
    return Tracker()
