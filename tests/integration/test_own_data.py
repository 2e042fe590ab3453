"""A researcher's own model on their own data, end to end: `fedtitan run` and `ft.run` train a
plugin model with Titan on an image folder, on a CSV of sensor readings with a subject column
and windowing, and on a LEAF set, each made here (local engine: in-process)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from simulations.cli import main as cli_main
from tests.data.test_formats import image_folder, leaf_file, sensor_table

pytestmark = pytest.mark.slow

SRC = Path(__file__).resolve().parents[1] / "plugins" / "fedtitan-example" / "src"
BASE = ["simulation.engine=local", "run.rounds=2", "server.fraction=1.0", "selection.local_steps=2",
        "selection.method=titan", "data.min_samples=5"]


@pytest.fixture(autouse=True)
def plugin_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(SRC))


def _run(out: Path, sets: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    args = ["run", "--quiet", "--out", str(out)]
    for s in [*BASE, *sets]:
        args += ["--set", s]
    assert cli_main(args) == 0
    rounds, clients = pd.read_csv(out / "rounds.csv"), pd.read_csv(out / "clients.csv")
    assert rounds.server_round.tolist() == [1, 2] and rounds.updated.all()
    assert (clients.selected > 0).all() and (clients.info_coarse_forwards > 0).all()  # Titan's coarse filter ran
    return rounds, clients


def test_a_vit_on_an_image_folder(tmp_path):
    root = image_folder(tmp_path / "pets", per_class=30, size=8)
    _run(tmp_path / "run", ["data.dataset=folder", f"data.path={root}", "data.partition=iid", "data.num_clients=3",
                            "model.name=fedtitan_example.models:make_vit", "model.options.dim=16"])
    part = pd.read_csv(tmp_path / "run" / "partition.csv")
    assert part.n.sum() == 72  # 90 images, 20% held out per class


def test_a_gru_on_a_csv_with_subjects_and_windows(tmp_path):
    import fedtitan as ft

    path = sensor_table(tmp_path / "sensors.csv", subjects=6, rows=120)
    r = ft.run("quickstart", {"data.dataset": "table", "data.path": str(path), "data.label_column": "activity",
                              "data.group_column": "subject", "data.window": 10, "data.window_step": 5,
                              "data.partition": "natural", "data.num_clients": 5,
                              "model.name": "fedtitan_example.models:WindowGRU", "model.options.hidden": 16,
                              **dict(s.split("=") for s in BASE)}, out=tmp_path / "run", quiet=True)
    assert r.rounds.server_round.tolist() == [1, 2]
    assert (r.clients.selected > 0).all() and (r.clients.info_coarse_forwards > 0).all()
    part = pd.read_csv(tmp_path / "run" / "partition.csv")
    assert len(part) == 5 and part.n.sum() == 5 * 6 * 3  # one client a subject; 6 runs x 3 windows each


def test_a_vit_on_a_leaf_set(tmp_path):
    path = leaf_file(tmp_path / "leaf" / "data.json", users=6, per_user=30)
    _run(tmp_path / "run", ["data.dataset=leaf", f"data.path={path}", "data.sample_shape=[1,4,4]",
                            "data.partition=natural", "data.num_clients=5",
                            "model.name=fedtitan_example.models:make_vit", "model.options.dim=16",
                            "model.options.patch=2"])


def test_a_vit_on_a_saved_hugging_face_dataset_with_a_flwr_partitioner(tmp_path):
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("flwr_datasets")
    root = image_folder(tmp_path / "pets", per_class=30, size=8, nested=False)
    datasets.load_dataset("imagefolder", data_dir=str(root)).save_to_disk(str(tmp_path / "saved"))
    _run(tmp_path / "run", ["data.dataset=hf", f"data.path={tmp_path / 'saved'}", "data.num_clients=3",
                            "data.partition=flwr:DirichletPartitioner", "data.partition_options.alpha=1.0",
                            "data.partition_options.min_partition_size=5",
                            "model.name=fedtitan_example.models:make_vit", "model.options.dim=16"])
    part = pd.read_csv(tmp_path / "run" / "partition.csv")
    assert len(part) == 3 and part.n.sum() == 72
