"""The borrowed-GPU script (simulations.gpu): prepare's plan and size check without the network,
the install step on a wheel made here, and the run step's CPU path with Ray blocked from
importing (the machine has no Ray)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from simulations import gpu

ROOT = Path(__file__).resolve().parents[2]

# A finder that makes `import ray` fail as on the GPU machine, and, at exit, the file of every
# module the process imported (the test maps them to their distributions).
SITECUSTOMIZE = '''
import atexit, importlib.abc, json, os, sys

class _NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _NoRay())

def _dump():
    files = sorted({f for m in list(sys.modules.values()) if (f := getattr(m, "__file__", None))})
    ray = [n for n in sys.modules if n == "ray" or n.startswith("ray.")]
    with open(os.path.join(os.path.dirname(__file__), f"modules-{os.getpid()}.json"), "w") as fh:
        json.dump({"files": files, "ray": ray}, fh)

atexit.register(_dump)
'''
# Imported when installed, skipped when not: torch tries dill, grpc tries grpc_health.
OPTIONAL = {"dill", "grpcio-health-checking"}


def _fake_wheel(folder: Path, name: str = "fakepkg_gpu", version: str = "0.1") -> Path:
    """A minimal pure-Python wheel whose module holds VALUE = 42."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    return wheel


def _git_tree(root: Path) -> Path:
    """A small git work tree that ignores .gpu/, as the repository does."""
    root.mkdir()
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text(".gpu/\n")
    (root / "code.py").write_text("x = 1\n" * 1000)
    return root


def _fake_pack(folder: Path, size: int = 4096) -> Path:
    (folder / "cifar10").mkdir(parents=True)
    (folder / gpu.CIFAR_PACK).write_bytes(b"\0" * size)
    return folder


# ------------------------------------------------------------------------------------ prepare


def test_the_plan_pins_this_environments_versions_and_never_carries_torch_numpy_or_ray():
    items = gpu.plan()
    names = [name for name, _, _ in items]
    assert len(names) == len(set(names))
    assert {"flwr", "pydantic", "pydantic-core"} <= set(names)
    assert not set(names) & (gpu.PROTECTED | {"ray"})
    for name, version, _ in items:
        assert version == metadata.version(name)
    # pydantic-core's pin is the one pydantic asks for (one version of each travels)
    assert f"pydantic-core=={dict((n, v) for n, v, _ in items)['pydantic-core']}" in \
        [r.replace("_", "-").split(";")[0].strip() for r in metadata.requires("pydantic") or []]


def test_the_download_asks_for_one_wheel_for_the_machines_python_and_platform(tmp_path):
    cmd = gpu.download_command("pydantic-core", "2.50.5", tmp_path)
    assert cmd[1:4] == ["-m", "pip", "download"] and cmd[-1] == "pydantic-core==2.50.5"
    for flag in ("--no-deps", "--only-binary=:all:"):
        assert flag in cmd
    assert cmd[cmd.index("--python-version") + 1] == "3.12" and cmd[cmd.index("--implementation") + 1] == "cp"
    assert cmd[cmd.index("-d") + 1] == str(tmp_path)
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"] == list(gpu.PLATFORMS)


def test_the_size_check_refuses_in_one_line_above_the_limit():
    parts = {"wheels": 18 * gpu.MIB, "data": 18 * gpu.MIB, "work tree": 20 * gpu.MIB}
    assert gpu.check_size(parts, 60) == 56 * gpu.MIB
    with pytest.raises(gpu.GpuError) as err:
        gpu.check_size({**parts, "work tree": 55 * gpu.MIB}, 60, "or make the work tree smaller")
    message = str(err.value)
    assert "\n" not in message and "91.0 MiB" in message and "over the 60 MiB" in message
    assert "work tree 55.0" in message and message.endswith("or make the work tree smaller")


def test_a_dry_run_prints_the_plan_and_pips_commands_and_fetches_nothing(tmp_path, capsys):
    data = _fake_pack(tmp_path / "data")
    dest = tmp_path / "gpu"
    assert gpu.main(["prepare", "--dry-run", "--dest", str(dest), "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    for name, version, _ in gpu.plan():
        assert f"{name}=={version}" in out
        assert " ".join(gpu.download_command(name, version, dest / gpu.WHEELS)) in out
    assert "dry run: nothing downloaded" in out and not dest.exists()


def test_prepare_keeps_the_planned_wheels_copies_the_pack_and_checks_the_size(tmp_path, capsys):
    """With every planned wheel already there nothing is downloaded; a wheel of another version
    goes, the pack is copied, and what would travel is added up against the limit."""
    root = _git_tree(tmp_path / "repo")
    dest = root / ".gpu"
    wheels = dest / gpu.WHEELS
    wheels.mkdir(parents=True)
    for name, version, _ in gpu.plan():
        (wheels / f"{name.replace('-', '_')}-{version}-py3-none-any.whl").write_bytes(b"\0" * 1000)
    (wheels / "flwr-1.0.0-py3-none-any.whl").write_bytes(b"old")
    data = _fake_pack(tmp_path / "data", 5000)
    total = gpu.prepare(dest, data, limit_mib=1, root=root)
    assert not (wheels / "flwr-1.0.0-py3-none-any.whl").exists()
    assert (dest / gpu.DATA / gpu.CIFAR_PACK).stat().st_size == 5000
    assert total == 1000 * len(gpu.plan()) + 5000 + 6000 + len(".gpu/\n")
    out = capsys.readouterr().out
    assert 'carry: [".gpu"]' in out and "python3 -m simulations.gpu run" in out
    with pytest.raises(gpu.GpuError, match=r"would carry .* over the 0.01 MiB allowed.*largest folder: code.py"):
        gpu.prepare(dest, data, limit_mib=0.01, root=root)


def test_prepare_refuses_a_carried_folder_that_git_does_not_ignore_and_a_missing_pack(tmp_path):
    root = _git_tree(tmp_path / "repo")
    data = _fake_pack(tmp_path / "data")
    with pytest.raises(gpu.GpuError, match="not ignored by git"):
        gpu.prepare(root / "carried", data, root=root)
    with pytest.raises(gpu.GpuError, match="cifar10-jpeg.npz not found; give --data-dir"):
        gpu.prepare(root / ".gpu", tmp_path, root=root)


# ------------------------------------------------------------------------------------ install


def test_without_wheels_the_install_is_skipped_with_one_line(tmp_path, capsys):
    assert gpu.install_wheels(tmp_path / "none", tmp_path / "site") == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no wheels in" in err and "skipping the install" in err
    assert not (tmp_path / "site").exists()


def test_the_carried_wheels_install_into_the_site_and_import_from_it(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _fake_wheel(wheels)
    site = tmp_path / "site"
    assert gpu.install_wheels(wheels, site) == 1
    assert sys.path[0] == str(site) and os.environ["PYTHONPATH"] == str(site)
    try:
        import fakepkg_gpu

        assert fakepkg_gpu.VALUE == 42 and metadata.version("fakepkg_gpu") == "0.1"
    finally:
        sys.modules.pop("fakepkg_gpu", None)


def test_two_versions_of_a_wheel_or_a_torch_wheel_are_refused(tmp_path):
    (tmp_path / "a-1.0-py3-none-any.whl").write_bytes(b"")
    (tmp_path / "a-2.0-py3-none-any.whl").write_bytes(b"")
    with pytest.raises(gpu.GpuError, match="two wheels of a .*keep one version"):
        gpu.install_wheels(tmp_path, tmp_path / "site")
    with pytest.raises(gpu.GpuError, match="would replace the machine's own torch"):
        gpu.check_wheels([tmp_path / "torch-2.11.0-cp312-cp312-manylinux_2_28_x86_64.whl"])
    with pytest.raises(gpu.GpuError, match="not a wheel's file name"):
        gpu.check_wheels([tmp_path / "notes.whl"])


# ------------------------------------------------------------------------------------ run


def test_the_summary_reads_round_walls_against_the_clients_own_work(tmp_path):
    """Rounds 2.. only: round walls 2 and 4 s against 1 and 2 s of client work."""
    (tmp_path / "rounds.csv").write_text("server_round,wall_s,accuracy,clients_sampled\n1,5,,2\n2,2,0.3,2\n3,4,0.5,1\n")
    (tmp_path / "clients.csv").write_text("server_round,wall_s\n1,3\n1,1\n2,0.25\n2,0.75\n3,2\n")
    (tmp_path / "summary.json").write_text(json.dumps({"interrupted": False}))
    (tmp_path / "meta.json").write_text(json.dumps({"compute": {"device": "cuda:0", "name": "NVIDIA H100"}}))
    (tmp_path / "config.json").write_text(json.dumps({"run": {"rounds": 3}}))
    out = gpu.summarize(tmp_path, 20.0, "p")
    assert out["round_wall_s_median"] == 3 and out["client_work_s_median"] == 1.5
    assert out["round_to_client_work_median"] == 2 and out["final_accuracy"] == 0.5
    assert out["rounds"] == 3 and not out["stopped_early"] and out["rounds_wall_s"] == 11
    assert out["device_name"] == "NVIDIA H100" and out["clients_per_round"] == 2


def test_a_bad_rounds_value_is_one_line_and_exit_2(capsys):
    assert gpu.main(["run", "--rounds", "0", "--wheels", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert err == "fedtitan gpu: error: --rounds 0: give at least 1\n"


def _distributions_of(files: list[str]) -> set[str]:
    """The installed distributions these module files belong to (the repository's own and the
    standard library's belong to none)."""
    owner: dict[str, str] = {}
    for dist in metadata.distributions():
        for f in dist.files or []:
            owner[os.path.realpath(str(dist.locate_file(f)))] = gpu.normalize(dist.metadata["Name"])
    return {owner[p] for p in map(os.path.realpath, files) if p in owner}


@pytest.mark.slow
def test_the_run_step_runs_the_preset_in_process_without_ray_and_prints_its_json(tmp_path, shared_data):
    """The device command's CPU path: no wheels (skipped, one line), `import ray` failing, two
    rounds of titan-fl-cifar10 on 5 clients (one a round). It prints the JSON, leaves the tables
    in --out, imports no Ray, and imports nothing that is neither carried nor on the machine."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": str(hook), "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    env.pop("OUT", None)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "simulations.gpu", "run", "--device", "cpu", "--rounds", "2",
           "--wheels", str(tmp_path / "no-wheels"), "--data-dir", str(shared_data), "--run-dir", str(tmp_path / "run"),
           "--out", str(out)]
    for s in ("data.num_clients=5", "selection.local_steps=1", "selection.velocity=20", "selection.buffer_size=10",
              "server.eval_every=1", "server.eval_samples=100"):
        cmd += ["--set", s]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "skipping the install" in res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["engine"] == "local" and result["wheels_installed"] == 0
    assert result["rounds"] == result["rounds_asked"] == 2 and not result["stopped_early"]
    assert result["clients_per_round"] == 1 and 0 <= result["final_accuracy"] <= 1
    assert result["client_work_s_median"] > 0
    # the local engine runs the clients inside the round: a round lasts at least their work
    assert result["round_to_client_work_median"] >= 1
    assert result["run_wall_s"] >= result["rounds_wall_s"] >= result["round_wall_s_median"] > 0
    for name in (*gpu.RESULT_FILES, "result.json"):
        assert (out / name).is_file(), name
    assert len((out / "rounds.csv").read_text().strip().splitlines()) == 3
    assert json.loads((out / "result.json").read_text())["final_accuracy"] == result["final_accuracy"]
    dumps = [json.loads(p.read_text()) for p in hook.glob("modules-*.json")]
    assert len(dumps) == 1, "the process's module list was not written"
    assert dumps[0]["ray"] == []
    imported = _distributions_of(dumps[0]["files"])
    carried = {gpu.normalize(n) for n, _ in gpu.CARRIED}
    assert {"flwr", "pydantic", "torch"} <= imported
    assert imported - carried - gpu.BOX_PACKAGES - OPTIONAL - {"fedtitan"} == set()  # fedtitan: the work tree
