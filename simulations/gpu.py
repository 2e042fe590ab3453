"""The federated run on a borrowed GPU machine (issue 42): prepare here, run there.

    python -m simulations.gpu prepare [--dry-run] [--data-dir DIR] [--limit-mib 60]
    python3 -m simulations.gpu run [--rounds N] [--set key=value ...] [--device cuda] [--out DIR]

The machine (x86-64, Python 3.12, CUDA torch, numpy, pandas, scikit-learn, rich and more;
neither Flower, Ray nor pydantic; no network) receives the git work tree and at most 8
ignored paths, 64 MiB in all. Ray does not fit, so the run uses ``simulation.engine =
local`` (every client in this process, no Ray).

``prepare`` (here, where pip reaches the package registry) downloads into ``.gpu/wheels``
the Python 3.12 manylinux x86-64 wheels of what the in-process engine imports and the
machine lacks (:data:`CARRIED`, at the versions installed here, each without its
dependencies), copies the CIFAR-10 pack into ``.gpu/data/cifar10``, adds up what would
travel (the work tree, tracked and untracked-not-ignored files, plus ``.gpu``), refuses in
one line above ``--limit-mib`` and prints the device command.

``run`` (there, from the repository root) installs the carried wheels into ``/tmp/site``
(``pip install --no-index --no-deps --target``; torch, numpy and the rest stay the
machine's own), runs the ``titan-fl-cifar10`` preset with ``simulation.engine=local
compute.device=cuda data.data_dir=.gpu/data``, copies the run's tables to ``$OUT`` (when
set) and prints one JSON object: the run's wall time, the median round wall time, the
client work per round as the clients measured it (``clients.csv`` ``wall_s``, summed over a
round's clients: :func:`simulations.benchmarks.checkpoint.client_work_s`), their ratio, the
final accuracy and the device. Without wheels (a machine that has Flower and pydantic, or
the CPU test) the install is skipped with one line saying so.

This module imports only the standard library (and ``fedtitan.errors``) at the top: ``run``
starts on a machine where Flower and pydantic are importable only after its install step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedtitan.errors import FedtitanError

ROOT = Path(__file__).resolve().parents[1]
CARRIED_DIR = ".gpu"  # ignored by git (.gitignore); the one path the device call carries
GPU_DIR = ROOT / CARRIED_DIR
WHEELS = "wheels"
DATA = "data"
CIFAR_PACK = Path("cifar10") / "cifar10-jpeg.npz"
PRESET = "titan-fl-cifar10"
SITE = "/tmp/site"
MIB = 2**20
# the device tool takes 64 MiB with the work tree; what is left covers files added after prepare
LIMIT_MIB = 60.0
# the machine's Python and platform tags (pip matches a manylinux_2_N tag exactly)
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
# the command's limit there is 10 minutes; past this the run stops after its current round
# (as on SIGTERM), so its finished rounds and the JSON still come back
TIME_LIMIT_S = 540.0
# the run's files copied to --out ($OUT): the device tool brings back at most 8 files
RESULT_FILES = ("rounds.csv", "clients.csv", "summary.json", "meta.json", "config.json")

# What the in-process engine imports that the machine does not have, found by importing: a
# local-engine run with Ray blocked from importing (tests/simulations/test_gpu_script.py runs
# one and fails when it imports a distribution that is neither here nor on the machine).
# Each is carried at the version installed where prepare runs, without its dependencies:
# flwr's others (Ray, FastAPI, SQLAlchemy, uvicorn, ...) are not imported in-process.
CARRIED: tuple[tuple[str, str], ...] = (
    ("flwr", "Flower: the messages, records and app the local engine runs"),
    ("pydantic", "fedtitan's configuration"),
    ("pydantic-core", "pydantic's core"),
    ("annotated-types", "pydantic"),
    ("typing-inspection", "pydantic"),
    ("cryptography", "flwr.common (secure aggregation's symmetric encryption)"),
    ("cffi", "cryptography"),
    ("pycryptodome", "flwr.common (Shamir's secret sharing)"),
    ("iterators", "flwr's simulation engine"),
    # on the machine, but in versions nobody has read there; one too old fails at import
    ("protobuf", "flwr's generated code refuses a runtime older than 5.29"),
    ("grpcio", "flwr's generated code refuses grpcio older than 1.70"),
    ("typing-extensions", "pydantic 2.14 needs 4.16 or later"),
)
# Never carried: the machine's CUDA builds must stay the ones imported.
PROTECTED = frozenset({"torch", "numpy", "triton", "torchvision", "torchaudio"})

# The machine's Python packages (the device tool's KINDS.md, read on such a machine on
# 2026-11-17): what the in-process engine imports from these is not carried.
BOX_PACKAGES = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless opt-einsum opt-einsum-fx optax optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil py-cpuinfo pyarrow pybind11 pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning
pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentence-transformers sentencepiece setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers
toolz torch torch-geometric torchaudio torchdiffeq torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash
yarl zipp
""".split())


class GpuError(FedtitanError):
    """A prepare or run step that cannot go on (one line: what is wrong, what would be right)."""


def normalize(name: str) -> str:
    """A distribution's name as PEP 503 compares it (``Pydantic_Core`` -> ``pydantic-core``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---------------------------------------------------------------------------------------------
# prepare (here)


def plan() -> list[tuple[str, str, str]]:
    """(name, version, why) of each carried wheel, at the versions installed in this Python."""
    from importlib import metadata

    out = []
    for name, why in CARRIED:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise GpuError(f"{name} is not installed in this Python ({sys.executable}), so its version cannot be "
                           "pinned; run prepare from the project's environment (. .venv/bin/activate)") from None
        out.append((normalize(name), version, why))
    return out


def download_command(name: str, version: str, dest: Path, python_version: str = PYTHON_VERSION) -> list[str]:
    """pip's download of one wheel for the machine (its Python, CPython, manylinux x86-64), no dependencies."""
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
            python_version, "--implementation", "cp", *platforms, "-d", str(dest), f"{name}=={version}"]


def wheel_name(path: Path) -> tuple[str, str]:
    """(normalized name, version) from a wheel's file name (``pydantic_core-2.50.5-cp312-...whl``)."""
    parts = path.name[: -len(".whl")].split("-")
    if not path.name.endswith(".whl") or len(parts) < 5:
        raise GpuError(f"{path} is not a wheel's file name (NAME-VERSION-PYTHON-ABI-PLATFORM.whl); remove it")
    return normalize(parts[0]), parts[1]


def check_wheels(wheels: Iterable[Path]) -> list[Path]:
    """The wheels, sorted, refused in one line when a name comes twice (two versions stop pip's
    install) or a wheel would replace the machine's own torch or numpy."""
    seen: dict[str, Path] = {}
    for w in sorted(wheels):
        name, _ = wheel_name(w)
        if name in PROTECTED:
            raise GpuError(f"{w.name} would replace the machine's own {name} (its CUDA build); remove it from {w.parent}")
        if name in seen:
            raise GpuError(f"two wheels of {name} in {w.parent} ({seen[name].name}, {w.name}); keep one version")
        seen[name] = w
    return list(seen.values())


def work_tree_files(root: Path = ROOT) -> dict[str, int]:
    """What the device tool sends besides the carried paths, file by file (bytes): tracked
    files and untracked files that git does not ignore."""
    try:
        res = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise GpuError(f"cannot list the work tree of {root} with git ({exc}); prepare runs in the repository's git "
                       "checkout, the tree the device tool sends") from None
    sizes = {}
    for name in set(res.stdout.decode().split("\0")) - {""}:
        path = root / name
        if path.is_file() or path.is_symlink():
            sizes[name] = path.lstat().st_size
    return sizes


def largest_folder(files: Mapping[str, int], depth: int = 2) -> tuple[str, int]:
    """The folder (its first ``depth`` path parts) that holds the most of ``files``' bytes."""
    folders: dict[str, int] = {}
    for name, size in files.items():
        key = "/".join(name.split("/")[:depth]) if name.count("/") >= depth else name.split("/")[0]
        folders[key] = folders.get(key, 0) + size
    return max(folders.items(), key=lambda kv: kv[1]) if folders else ("", 0)


def folder_bytes(path: Path) -> int:
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def check_size(parts: Mapping[str, int], limit_mib: float = LIMIT_MIB, note: str = "") -> int:
    """The total of ``parts`` (bytes), refused in one line above ``limit_mib`` (``note`` ends it)."""
    total = sum(parts.values())
    if total > limit_mib * MIB:
        detail = ", ".join(f"{k} {v / MIB:.1f}" for k, v in parts.items())
        raise GpuError(f"the device run would carry {total / MIB:.1f} MiB ({detail}), over the {limit_mib:g} MiB "
                       "allowed (the device tool takes 64 MiB with the work tree); carry fewer wheels or less data"
                       + (f", {note}" if note else ""))
    return total


def _ignored(path: Path, root: Path) -> bool:
    res = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", str(path)], capture_output=True)
    return res.returncode == 0


def device_command(rounds: int | None = None, carried: str = CARRIED_DIR) -> str:
    """The command the device call runs from the repository's root (``carried``: the carried folder)."""
    where = "" if carried == CARRIED_DIR else f" --wheels {carried}/{WHEELS} --data-dir {carried}/{DATA}"
    return f"PYTHONUNBUFFERED=1 python3 -m simulations.gpu run{where}" + (f" --rounds {rounds}" if rounds else "")


def prepare(dest: Path, data_dir: Path | None, limit_mib: float = LIMIT_MIB, dry_run: bool = False,
            python_version: str = PYTHON_VERSION, root: Path = ROOT) -> int:
    """Fill ``dest`` (``.gpu``) with the wheels and the CIFAR-10 pack; print what would travel
    and the device command. Returns the bytes that would travel (0 on a dry run)."""
    if data_dir is None:
        raise GpuError("no data folder: give --data-dir DIR (the folder holding cifar10/cifar10-jpeg.npz) or set "
                       "FEDTITAN_SHARED_DATA")
    pack = data_dir / CIFAR_PACK
    if not pack.is_file():
        raise GpuError(f"{pack} not found; give --data-dir the folder that holds {CIFAR_PACK}")
    wheels = dest / WHEELS
    items = plan()
    print(f"wheels for CPython {python_version}, manylinux x86-64, into {wheels} (each without its dependencies):")
    for name, version, why in items:
        print(f"  {name}=={version}  ({why})")
    print(f"data: {pack} ({pack.stat().st_size / MIB:.1f} MiB) -> {dest / DATA / CIFAR_PACK}")
    if dry_run:
        for name, version, _ in items:
            print("  " + " ".join(download_command(name, version, wheels, python_version)))
        tree = sum(work_tree_files(root).values())
        print(f"dry run: nothing downloaded or copied; the work tree alone is {tree / MIB:.1f} MiB")
        return 0
    wheels.mkdir(parents=True, exist_ok=True)
    if dest.resolve().is_relative_to(root.resolve()) and not _ignored(dest, root):
        raise GpuError(f"{dest} is not ignored by git, so it would travel twice; add '{dest.name}/' to .gitignore")
    wanted = {name: version for name, version, _ in items}
    for w in sorted(wheels.glob("*.whl")):
        name, version = wheel_name(w)
        if wanted.get(name) != version:  # another version, or no longer carried: pip's install takes one of each
            print(f"  removing {w.name} (not in the plan: {name}=={wanted.get(name, 'not carried')})")
            w.unlink()
    have = {wheel_name(w)[0] for w in wheels.glob("*.whl")}
    for name, version, _ in items:
        if name in have:
            continue
        res = subprocess.run(download_command(name, version, wheels, python_version), capture_output=True, text=True)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise GpuError(f"pip could not download {name}=={version} for CPython {python_version} manylinux x86-64: "
                           f"{last}")
    check_wheels(wheels.glob("*.whl"))
    target = dest / DATA / CIFAR_PACK
    if not (target.is_file() and target.stat().st_size == pack.stat().st_size):
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(pack, target)
    files = work_tree_files(root)
    parts = {"wheels": folder_bytes(wheels), "data": folder_bytes(dest / DATA), "work tree": sum(files.values())}
    folder, size = largest_folder(files)
    total = check_size(parts, limit_mib, f"or make the work tree smaller (its largest folder: {folder}, "
                                         f"{size / MIB:.1f} MiB)")
    print("would travel: " + ", ".join(f"{k} {v / MIB:.1f} MiB" for k, v in parts.items())
          + f"; {total / MIB:.1f} MiB in all (limit {limit_mib:g})")
    if not dest.resolve().is_relative_to(root.resolve()):
        print(f"{dest} is outside the repository, so no device call carries it; prepare into .gpu for that")
        return total
    carried = dest.resolve().relative_to(root.resolve()).as_posix()
    print("device run (the device tool's run):")
    print(f"  carry: {json.dumps([carried])}")
    print(f"  command: {device_command(None, carried)}")
    print(f"  a short check first: {device_command(20, carried)}")
    print("  timeout_s: 600 (the run stops itself after its current round past "
          f"{TIME_LIMIT_S:.0f} s, so its JSON comes back)")
    return total


# ---------------------------------------------------------------------------------------------
# run (there)


def install_wheels(wheels: Path, site: Path) -> int:
    """Install every wheel in ``wheels`` into ``site`` and put ``site`` first on the import path.
    Returns how many; with none there, says so in one line and installs nothing."""
    found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
    if not found:
        print(f"fedtitan gpu: no wheels in {wheels}: skipping the install, using this Python's own packages "
              "(run `python -m simulations.gpu prepare` where pip reaches the registry, for a machine without "
              "Flower and pydantic)", file=sys.stderr, flush=True)
        return 0
    found = check_wheels(found)
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--upgrade", "--target", str(site), *map(str, found)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise GpuError(f"installing the {len(found)} wheels of {wheels} into {site} failed: {last}")
    import importlib

    sys.path.insert(0, str(site))
    importlib.invalidate_caches()
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    print(f"fedtitan gpu: installed {len(found)} wheels into {site}", file=sys.stderr, flush=True)
    return len(found)


def _after_first(values: Any) -> Any:
    """Rounds 2.. (round 1 warms up kernels, allocators and caches), or all when there is one."""
    return values.iloc[1:] if len(values) > 1 else values


def summarize(run_dir: Path, run_wall_s: float, preset: str) -> dict[str, Any]:
    """The JSON the run step prints, from the run folder's tables."""
    import math

    import pandas as pd

    from simulations.benchmarks.checkpoint import client_work_s

    rounds = pd.read_csv(run_dir / "rounds.csv").set_index("server_round").sort_index()
    work = client_work_s(pd.read_csv(run_dir / "clients.csv")).reindex(rounds.index, fill_value=0.0)
    summary = json.loads((run_dir / "summary.json").read_text())
    meta = json.loads((run_dir / "meta.json").read_text())
    asked = json.loads((run_dir / "config.json").read_text())["run"]["rounds"]
    compute = meta.get("compute", {})
    wall, work = _after_first(rounds.wall_s), _after_first(work)
    ratio = (wall / work.where(work > 0)).dropna()
    accuracy = rounds.accuracy.dropna()

    def r(x: float) -> float | None:
        return None if math.isnan(x) else round(float(x), 4)

    return {
        "preset": preset, "engine": "local", "device": compute.get("device"), "device_name": compute.get("name"),
        "torch": compute.get("torch"), "cuda": compute.get("cuda"), "rounds": int(len(rounds)), "rounds_asked": asked,
        "stopped_early": bool(summary.get("interrupted")) or len(rounds) < asked,
        "clients_per_round": int(rounds.clients_sampled.median()),
        "run_wall_s": round(run_wall_s, 2), "rounds_wall_s": round(float(rounds.wall_s.sum()), 2),
        "round_wall_s_median": r(wall.median()), "client_work_s_median": r(work.median()),
        "round_to_client_work_median": r(ratio.median()) if len(ratio) else None,
        "final_accuracy": r(accuracy.iloc[-1]) if len(accuracy) else None,
        "goal": "300 rounds of titan-fl-cifar10 in under 5 minutes on an H100 (issue 42)",
    }


def simulate(preset: str, overrides: Sequence[str], run_dir: Path, time_limit_s: float) -> tuple[float, int | None]:
    """Run ``preset`` with ``overrides`` into ``run_dir`` in this process; past ``time_limit_s``
    (0: none) the run is asked to stop after its current round, as SIGTERM does. Returns the
    run's wall time and the signal that stopped it (None when none did)."""
    for key, value in (("FLWR_TELEMETRY_ENABLED", "0"), ("FLWR_DISABLE_UPDATE_CHECK", "1"),
                       ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")):
        os.environ.setdefault(key, value)
    try:
        from fedtitan.config import load_config
        from simulations.run import run
    except ImportError as exc:
        raise GpuError(f"cannot import {exc.name or exc} ({exc}); carry its wheel: run `python -m simulations.gpu "
                       "prepare` where pip reaches the registry and name .gpu in the device call's carry") from None
    cfg = load_config(preset, list(overrides))
    timer = None
    if time_limit_s > 0:
        timer = threading.Timer(time_limit_s, lambda: os.kill(os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()
    t0 = time.perf_counter()
    try:
        summary = run(cfg, run_dir, quiet=True)
    finally:
        if timer is not None:
            timer.cancel()
    return time.perf_counter() - t0, summary.get("stopped_by")


def run_step(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    installed = install_wheels(Path(args.wheels), Path(args.site))
    data_dir = args.data_dir
    if data_dir is None:
        carried = GPU_DIR / DATA
        data_dir = str(carried) if (carried / CIFAR_PACK).is_file() else os.environ.get("FEDTITAN_SHARED_DATA")
    overrides = ["simulation.engine=local", f"compute.device={args.device}",
                 *([f"data.data_dir={data_dir}"] if data_dir else []),
                 *([f"run.rounds={args.rounds}"] if args.rounds else []), *args.set]
    run_dir = Path(args.run_dir) if args.run_dir else ROOT / "runs" / f"gpu-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"fedtitan gpu: {args.preset} with {' '.join(overrides)} -> {run_dir}", file=sys.stderr, flush=True)
    wall, stopped_by = simulate(args.preset, overrides, run_dir, args.time_limit)
    result = summarize(run_dir, wall, args.preset)
    result.update(stopped_by=stopped_by, script_wall_s=round(time.perf_counter() - t0, 2), wheels_installed=installed,
                  run_dir=str(run_dir))
    (run_dir / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    out = args.out or os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        for name in (*RESULT_FILES, "result.json"):
            if (run_dir / name).exists():
                shutil.copy2(run_dir / name, Path(out) / name)
    return result


# ---------------------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m simulations.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="step", required=True)
    p = sub.add_parser("prepare", help="here: download the wheels, copy the data, check the size")
    p.add_argument("--dest", default=str(GPU_DIR), help="the carried folder (default .gpu, ignored by git)")
    p.add_argument("--data-dir", default=os.environ.get("FEDTITAN_SHARED_DATA"),
                   help="the folder holding cifar10/cifar10-jpeg.npz (default $FEDTITAN_SHARED_DATA)")
    p.add_argument("--limit-mib", type=float, default=LIMIT_MIB, help="refuse above this many MiB in all")
    p.add_argument("--python-version", default=PYTHON_VERSION, help="the machine's Python (default 3.12)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and pip's commands; fetch and copy nothing")
    r = sub.add_parser("run", help="there: install the carried wheels, run the preset, print one JSON object")
    r.add_argument("--preset", default=PRESET)
    r.add_argument("--rounds", type=int, help="run.rounds (default: the preset's, 300)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any setting, as fedtitan run's")
    r.add_argument("--device", default="cuda", help="compute.device (default cuda; cpu for a check here)")
    r.add_argument("--data-dir", help="data.data_dir (default .gpu/data when prepared, else $FEDTITAN_SHARED_DATA)")
    r.add_argument("--wheels", default=str(GPU_DIR / WHEELS), help="the carried wheels (default .gpu/wheels)")
    r.add_argument("--site", default=SITE, help=f"where they are installed (default {SITE})")
    r.add_argument("--run-dir", help="the run folder (default runs/gpu-YYYYmmdd-HHMMSS)")
    r.add_argument("--out", help="copy the run's tables and result.json here (default $OUT when set)")
    r.add_argument("--time-limit", type=float, default=TIME_LIMIT_S,
                   help=f"seconds after which the run stops after its current round (default {TIME_LIMIT_S:g}; 0: none)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.step == "prepare":
            prepare(Path(args.dest), Path(args.data_dir) if args.data_dir else None, args.limit_mib, args.dry_run,
                    args.python_version)
        else:
            if args.rounds is not None and args.rounds < 1:
                raise GpuError(f"--rounds {args.rounds}: give at least 1")
            print(json.dumps(run_step(args)))
    except FedtitanError as exc:
        print(f"fedtitan gpu: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
