"""Archived run folders keep their large tables gzipped (issue 42: docs/results travels to the
GPU machine, 64 MiB in all): every reader takes ``NAME.csv.gz`` wherever it took ``NAME.csv``
and reads the same frames; live runs still write plain ``.csv``."""

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pandas.testing as pdt

from fedtitan.fileio import find_tables, table_path
from fedtitan.results import analysis
from fedtitan.results.report import build_report
from fedtitan.results.views import Run, Sweep
from simulations.papers import results_tables

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "docs" / "results"
# a small archived sweep of a living fleet: clients.csv.gz and fleet.csv.gz in every run
ARCHIVED = RESULTS / "fl-idle-compute"


def _gunzip_all(folder: Path) -> None:
    """Every ``*.csv.gz`` under ``folder`` replaced by its plain ``*.csv``."""
    for g in folder.rglob("*.csv.gz"):
        g.with_suffix("").write_bytes(gzip.decompress(g.read_bytes()))
        g.unlink()


def _two_runs(dest: Path) -> Path:
    """A copy of the first two runs of :data:`ARCHIVED` (gzipped as archived) with their index."""
    index = pd.read_csv(ARCHIVED / "index.csv")
    index = index[index.status == "done"].head(2)
    dest.mkdir(parents=True)
    for p in index.path:
        shutil.copytree(ARCHIVED / str(p), dest / str(p))
    index.to_csv(dest / "index.csv", index=False)
    return dest


def test_table_path_takes_the_plain_table_then_the_gzipped_one(tmp_path):
    assert table_path(tmp_path, "clients.csv") == tmp_path / "clients.csv"  # neither: the plain name
    (tmp_path / "clients.csv.gz").write_bytes(gzip.compress(b"a\n1\n"))
    assert table_path(tmp_path, "clients.csv") == tmp_path / "clients.csv.gz"
    (tmp_path / "clients.csv").write_text("a\n2\n")  # a live run writing plain: that one
    assert table_path(tmp_path, "clients.csv") == tmp_path / "clients.csv"


def test_find_tables_gives_one_table_per_folder_in_folder_order(tmp_path):
    for d in ("b", "a/x", "c"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "b" / "fleet.csv.gz").write_bytes(gzip.compress(b"a\n1\n"))
    (tmp_path / "a" / "x" / "fleet.csv").write_text("a\n1\n")
    (tmp_path / "c" / "fleet.csv").write_text("a\n1\n")
    (tmp_path / "c" / "fleet.csv.gz").write_bytes(gzip.compress(b"a\n1\n"))
    assert find_tables(tmp_path, "fleet.csv") == [tmp_path / "a" / "x" / "fleet.csv",
                                                  tmp_path / "b" / "fleet.csv.gz", tmp_path / "c" / "fleet.csv"]


def test_the_archived_run_folders_keep_clients_and_fleet_gzipped():
    """What keeps docs/results small enough to travel: no archived run has them plain."""
    runs = [p.parent for p in RESULTS.rglob("config.json")]
    assert runs
    plain = [str(r / n) for r in runs for n in ("clients.csv", "fleet.csv") if (r / n).exists()]
    assert not plain, f"gzip these (gzip -n -9): {plain[:5]}"
    assert all((r / "clients.csv.gz").exists() for r in runs)


def test_a_gzipped_archive_reads_as_its_plain_copy(tmp_path):
    packed = _two_runs(tmp_path / "packed")
    plain = tmp_path / "plain"
    shutil.copytree(packed, plain)
    _gunzip_all(plain)
    assert not list(plain.rglob("*.gz")) and list(packed.rglob("fleet.csv.gz"))
    a, b = analysis.load_sweep(packed), analysis.load_sweep(plain)
    assert len(a[1]) > 0
    pdt.assert_frame_equal(a[0], b[0])
    pdt.assert_frame_equal(a[1], b[1])
    assert a[2] == b[2]
    run_id = next(iter(Sweep(packed).runs))
    for name in ("rounds", "clients", "fleet"):
        got = getattr(Run(packed / run_id), name)
        assert len(got) > 0, name
        pdt.assert_frame_equal(got, getattr(Run(plain / run_id), name))
    one = packed / run_id  # a single run folder
    pdt.assert_frame_equal(analysis.load_sweep(one)[1], analysis.load_sweep(plain / run_id)[1])
    html = build_report(packed)[0].read_text()
    assert "Devices over time" in html  # the fleet timeline found fleet.csv.gz


def test_results_tables_reads_gzipped_pruning_kept_tables(tmp_path, capsys):
    plain = tmp_path / "plain"
    shutil.copytree(RESULTS / "pruning-kept", plain / "pruning-kept")
    results_tables.pruning_kept(plain)
    expected = capsys.readouterr().out
    assert "### pruning-kept" in expected
    packed = tmp_path / "packed" / "pruning-kept"
    shutil.copytree(plain / "pruning-kept", packed)
    for name in ("clients.csv", "classes.csv", "fleet.csv"):
        (packed / f"{name}.gz").write_bytes(gzip.compress((packed / name).read_bytes()))
        (packed / name).unlink()
    results_tables.pruning_kept(packed.parent)
    assert capsys.readouterr().out == expected
