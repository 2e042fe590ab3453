"""Moving code must not change results: five deterministic runs against stored records.

Each case (Titan, random selection, warm-up-loss pruning, FedAdam, a living fleet with a
trace) runs on the in-process engine and is compared with ``tests/golden/CASE/``:
``rounds.csv`` and ``clients.csv`` (every column but wall times and checkpoint sizes) and the
final model's arrays (a SHA-256 of each).

Floats are compared bit for bit on the machine the records were made on (same CPU model,
torch version and thread count, ``tests/golden/platform.json``). Elsewhere a BLAS kernel may
round differently, so floats are compared to 1e-3 relative and the model by its sums; counts,
statuses and devices stay exact everywhere.

Regenerate (only when a change *should* change results, and say why in the commit):
``FEDTITAN_REGOLD=1 pytest tests/test_golden_runs.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fedtitan as ft

GOLDEN = Path(__file__).resolve().parent / "golden"
BASE = {"simulation.engine": "local", "run.deterministic": True, "run.save_model": True,
        "data.num_clients": 6, "server.fraction": 0.5, "run.rounds": 4, "selection.local_steps": 3}
TRACE = "partition_id,t_start_s,t_end_s,available,speed_factor\n1,0,0.3,0,1\n2,0,1000,1,0.5\n"
CASES: dict[str, dict[str, object]] = {
    "titan": {"selection.method": "titan"},
    "rs": {"selection.method": "rs"},
    "warmup-loss": {"pruning.method": "warmup-loss", "pruning.ratio": 0.5},
    "fedadam": {"server.strategy": "fedadam", "server.strategy_options.eta": 0.05},
    "trace": {"fleet.dynamics": "random-walk", "fleet.trace": "TRACE"},
}
# wall times, and sizes that follow the config's JSON (a new key changes them, results don't)
SKIP = {"wall_s", "checkpoint_s", "checkpoint_bytes", "train_wall_ms", "select_wall_ms", "sync_wall_ms",
        "steps_wall_ms"}
REGOLD = os.environ.get("FEDTITAN_REGOLD") == "1"


def _platform() -> dict[str, object]:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "torch": torch.__version__, "machine": platform.machine()}


def _run(case: str, tmp: Path) -> Path:
    overrides = {**BASE, **CASES[case]}
    if overrides.get("fleet.trace") == "TRACE":
        trace = tmp / "trace.csv"
        trace.write_text(TRACE)
        overrides["fleet.trace"] = str(trace)
    out = tmp / case
    ft.run("quickstart", overrides, out, quiet=True)
    return out


def _table(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    return df.drop(columns=[c for c in df.columns if c in SKIP])


def _model(path: Path) -> dict[str, dict[str, object]]:
    with np.load(path) as z:
        return {k: {"sha256": hashlib.sha256(np.ascontiguousarray(z[k]).tobytes()).hexdigest(),
                    "sum": float(np.asarray(z[k], dtype=np.float64).sum()),
                    "abs_sum": float(np.abs(np.asarray(z[k], dtype=np.float64)).sum())} for k in z.files}


def _write(case: str, out: Path) -> None:
    folder = GOLDEN / case
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("rounds.csv", "clients.csv"):
        _table(out / name).to_csv(folder / name, index=False)
    (folder / "model.json").write_text(json.dumps(_model(out / "model.npz"), indent=1) + "\n")
    (GOLDEN / "platform.json").write_text(json.dumps(_platform(), indent=1) + "\n")


def _compare_tables(expected: pd.DataFrame, got: pd.DataFrame, exact: bool, name: str) -> None:
    # ``device`` may only gain values: cells the old wire left empty (custom profiles) fill in
    if "device" in expected.columns:
        was_empty = expected["device"].isna()
        got = got.copy()
        got.loc[was_empty.to_numpy(), "device"] = np.nan
    pd.testing.assert_frame_equal(expected, got[expected.columns.tolist()], check_exact=exact, rtol=1e-3,
                                  check_dtype=False, obj=name)
    assert set(got.columns) >= set(expected.columns), f"{name} lost columns"


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_deterministic_run_gives_its_stored_records(tmp_path: Path, case: str) -> None:
    out = _run(case, tmp_path)
    if REGOLD:
        _write(case, out)
        pytest.skip(f"golden records of {case} rewritten")
    folder = GOLDEN / case
    assert folder.exists(), f"no golden records for {case}: run with FEDTITAN_REGOLD=1"
    exact = json.loads((GOLDEN / "platform.json").read_text()) == _platform()
    for name in ("rounds.csv", "clients.csv"):
        _compare_tables(pd.read_csv(folder / name), _table(out / name), exact, f"{case}/{name}")
    expected, got = json.loads((folder / "model.json").read_text()), _model(out / "model.npz")
    assert sorted(expected) == sorted(got)
    for key, want in expected.items():
        if exact:
            assert got[key]["sha256"] == want["sha256"], f"{case}: model array {key} changed"
        else:
            for stat in ("sum", "abs_sum"):
                assert got[key][stat] == pytest.approx(want[stat], rel=1e-3, abs=1e-4), f"{case}: {key} {stat}"
