"""fedtitan from Python: launch, watch and analyse runs and sweeps (notebooks included).

    import fedtitan as ft

    run = ft.run("quickstart", overrides={"run.rounds": 5}, out="runs/qs")
    run.rounds                      # one row per round (pandas)
    run.plot()                      # accuracy against virtual time (a matplotlib Figure)

    sw = ft.sweep("quickstart", grid={"selection.method": ["titan", "rs"]}, seeds=2, out="sweeps/qs")
    sw.final_accuracy()             # mean, sd and 95% CI over seeds, per configuration
    sw.paired("selection.method", "titan", "rs")

    ft.load("sweeps/qs")            # a Run or a Sweep from a folder
    ft.resume("runs/qs")            # go on from the last checkpoint

This is the launcher's Python face (``import fedtitan as ft`` forwards ``ft.run``,
``ft.sweep``, ``ft.resume``, ``ft.load``, ``ft.Run``, ``ft.Sweep`` and ``ft.short_errors``
here); the views of finished runs (:class:`Run`, :class:`Sweep`, :func:`load`) live in
:mod:`fedtitan.results.views`. Everything here does what the ``fedtitan`` command does (``run``, ``sweep``, ``resume``,
``report``, ``plot``) and writes the same folders, so a run started here can be resumed from
a shell and the other way round. Importing this module imports neither Flower nor Ray: they
load when a simulation starts.

Errors are :class:`~fedtitan.errors.FedtitanError` with a one-line message (a bad key, a
missing dataset, a folder that is not a run). In IPython and Jupyter they print as that one
line, without a traceback (:func:`short_errors` turns this off). Ctrl-C (or the notebook's
interrupt button) stops a run after its current round, keeps the finished rounds and their
checkpoint, shuts Ray down and then raises ``KeyboardInterrupt``; :func:`resume` goes on.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedtitan.errors import FedtitanError
from fedtitan.results.views import Run, Sweep, load

if TYPE_CHECKING:
    from fedtitan.config import Config

__all__ = ["Run", "Sweep", "load", "resume", "run", "short_errors", "sweep"]

Overrides = Mapping[str, Any] | Sequence[str] | None


def _toml(value: Any) -> str:
    """A Python value as the right-hand side of ``key=value`` (what ``--set`` takes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) if not isinstance(v, str) else json.dumps(v) for v in value) + "]"
    if value is None:
        raise FedtitanError("an override cannot be None; leave the key out to keep the preset's value")
    return str(value)


def _override_list(overrides: Overrides) -> list[str]:
    """``{"run.rounds": 3}`` or ``["run.rounds=3"]`` -> ``["run.rounds=3"]``."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise FedtitanError(f"overrides must be a dict or a list of 'key=value' strings, got the string {overrides!r}")
    if isinstance(overrides, Mapping):
        return [f"{k}={_toml(v)}" for k, v in overrides.items()]
    items = [str(o) for o in overrides]
    bad = [o for o in items if "=" not in o]
    if bad:
        raise FedtitanError(f"override {bad[0]!r} is not key=value (e.g. 'run.rounds=3')")
    return items


def _grid_items(grid: Mapping[str, Iterable[Any]] | Sequence[str] | None) -> list[str]:
    """``{"selection.method": ["titan", "rs"]}`` -> ``["selection.method=titan,rs"]`` (``--grid``)."""
    if grid is None:
        return []
    if isinstance(grid, str):
        raise FedtitanError(f"grid must be a dict of lists or a list of 'key=v1,v2' strings, got {grid!r}")
    if not isinstance(grid, Mapping):
        return [str(g) for g in grid]
    items = []
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise FedtitanError(f"grid[{key!r}] must be a list of values, e.g. [{_toml(values)!r}], got {values!r}")
        cells = []
        for v in values:
            if isinstance(v, Mapping):  # a device mix: name:fraction,...
                cells.append(",".join(f"{k}:{f}" for k, f in v.items()))
            else:
                cells.append(_toml(v))
        items.append(f"{key}={','.join(cells)}")
    return items


def _config(preset: str | Config, overrides: Overrides) -> Config:
    from fedtitan.config import Config, apply_overrides, load_config, validate

    if isinstance(preset, Config):
        return validate(apply_overrides(preset.model_dump(mode="json", by_alias=True), _override_list(overrides)))
    if not isinstance(preset, str):
        raise FedtitanError(f"preset must be a preset name, a TOML path or a Config, got {type(preset).__name__}")
    return load_config(preset, _override_list(overrides))


def _stamp(name: str) -> str:
    return f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _interrupted(what: str) -> None:
    """After a clean stop: say where the results are, then stop the caller as Ctrl-C would."""
    print(what, file=sys.stderr)
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------------
# launching


def run(preset: str | Config = "quickstart", overrides: Overrides = None, out: str | Path | None = None, *,
        quiet: bool = False, ray_address: str | None = None) -> Run:
    """Simulate one federated run and return it.

    Args:
        preset: a preset name (``fedtitan.config.preset_names()``), a TOML file, or a
            :class:`~fedtitan.config.Config` you built or loaded.
        overrides: settings on top of the preset, as ``{"run.rounds": 5, "selection.method":
            "rs"}`` or ``["run.rounds=5"]`` (the same keys as ``fedtitan run --set``).
        out: the run folder (created); default ``runs/NAME-YYYYmmdd-HHMMSS``.
        quiet: no progress bar and no Ray log lines.
        ray_address: attach to a running Ray cluster (``ray://host:10001`` or ``auto``).

    Returns:
        the finished :class:`Run`.

    Raises:
        FedtitanError: bad settings, missing data or a run that failed (one line; the rounds
            that finished stay in ``out``).
        KeyboardInterrupt: after Ctrl-C stopped the run cleanly (finished rounds kept;
            :func:`resume` goes on).
    """
    cfg = _config(preset, overrides)
    folder = Path(out) if out is not None else Path("runs") / _stamp(cfg.run.name)
    from simulations.run import run as _run

    summary = _run(cfg, folder, ray_address=ray_address, quiet=quiet)
    return _finish(folder, summary)


def resume(path: str | Path, overrides: Overrides = None, *, quiet: bool = False,
           ray_address: str | None = None) -> Run:
    """Go on with the cut-off run in ``path`` from its last checkpoint, with its own settings.

    ``overrides`` may raise ``run.rounds`` to extend a finished run, or change settings that do
    not change results (trackers, progress). A run that already finished comes back as it is.
    Raises as :func:`run` does."""
    from simulations.run import resume as _resume

    summary = _resume(path, _override_list(overrides), ray_address=ray_address, quiet=quiet)
    if summary.get("already_finished"):
        return Run(path)
    return _finish(Path(path), summary)


def _finish(folder: Path, summary: dict[str, Any]) -> Run:
    if summary.get("failed"):
        raise FedtitanError(f"run failed: {summary['failed']}; its rounds are in {folder}")
    if summary.get("interrupted"):
        _interrupted(f"fedtitan: interrupted after {summary.get('rounds')} rounds; they are in {folder} "
                     f"(fedtitan.resume({str(folder)!r}) goes on)")
    return Run(folder)


def sweep(preset: str = "quickstart", grid: Mapping[str, Iterable[Any]] | Sequence[str] | None = None,
          seeds: int = 1, overrides: Overrides = None, out: str | Path | None = None, *, quiet: bool = False,
          ray_address: str | None = None) -> Sweep:
    """Run (or resume) a grid of runs x seeds and return the sweep.

    Args:
        preset: a preset name or TOML file.
        grid: the settings to vary, ``{"selection.method": ["titan", "rs"], "pruning.ratio":
            [0.2, 0.5]}`` (or ``["selection.method=titan,rs"]`` as ``--grid`` takes).
        seeds: seeds per configuration (``run.seed`` = 0 .. seeds-1).
        overrides: settings shared by every run (as in :func:`run`).
        out: the sweep folder; calling again with the same folder resumes it (finished runs
            are kept, a cut-off run goes on from its checkpoint).
        quiet: no progress bar.
        ray_address: attach to a running Ray cluster.

    Returns:
        the :class:`Sweep` (its finished runs; failed ones are listed in ``index`` and redone
        by the next call).

    Raises:
        FedtitanError: bad grid or settings (checked for every run before any starts).
        KeyboardInterrupt: after Ctrl-C stopped the sweep cleanly (call again to resume).
    """
    from fedtitan.config import load_config

    name = load_config(preset, _override_list(overrides)).run.name if out is None else ""
    folder = Path(out) if out is not None else Path("sweeps") / _stamp(Path(name).stem)
    from simulations.sweep import sweep as _sweep

    root, _, stopped_by = _sweep(preset, _grid_items(grid), seeds, _override_list(overrides), folder, ray_address=ray_address,
                     quiet=quiet)
    if stopped_by is not None:
        _interrupted(f"fedtitan: sweep interrupted; its finished runs are in {root} (call fedtitan.sweep with the "
                     "same arguments to resume)")
    return Sweep(root)


# ---------------------------------------------------------------------------------------------
# IPython: fedtitan's errors as the one line they are

_SHORT = {"on": False}


def short_errors(on: bool = True) -> None:
    """In IPython/Jupyter, show a :class:`FedtitanError` as its one-line message instead of a
    traceback (on by default once this module is imported in IPython)."""
    ipython = sys.modules.get("IPython")  # not imported: not inside IPython
    ip = ipython.get_ipython() if ipython is not None else None
    if ip is None:
        return
    if on:
        def handler(shell: Any, etype: type, value: BaseException, tb: Any, tb_offset: Any = None) -> None:
            print(f"{etype.__name__}: {value}", file=sys.stderr)

        ip.set_custom_exc((FedtitanError,), handler)
    else:
        ip.set_custom_exc((), None)
    _SHORT["on"] = on


short_errors(True)
