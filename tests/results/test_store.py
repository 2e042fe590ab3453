"""Results files: atomic, shareable (the usual mode under the umask), and a full disk is one
line that says how much is safe."""

import errno
import os
import stat

import pandas as pd
import pytest

from fedtitan.fileio import DiskFullError, atomic_writer
from fedtitan.results import RunWriter


@pytest.fixture
def umask():
    def set_(mask):
        import fedtitan.fileio as fio

        fio._MODE = None  # the mode is read from the umask once per process
        return os.umask(mask)

    old = os.umask(0o022)
    os.umask(old)
    yield set_
    set_(old)


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_every_result_file_gets_the_usual_mode(tmp_path, umask, mask, mode):
    umask(mask)
    w = RunWriter(tmp_path / "run")
    w.write_config('{"run": {"seed": 0}}', 0)
    w.add_round({"server_round": 1, "accuracy": 0.5}, [{"server_round": 1, "node_id": 3}])
    w.save_arrays("model.npz", {"w": __import__("numpy").zeros(3)})
    w.finish({"rounds": 1})
    files = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert files == ["clients.csv", "config.json", "meta.json", "model.npz", "rounds.csv", "summary.json"]
    for p in (tmp_path / "run").iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == mode, p.name


def test_a_full_disk_keeps_finished_rounds_and_says_so_in_one_line(tmp_path, monkeypatch):
    w = RunWriter(tmp_path / "run")
    for r in (1, 2):
        w.add_round({"server_round": r, "accuracy": 0.1 * r}, [{"server_round": r, "node_id": 7}])
    real = os.replace

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(DiskFullError) as exc:
        w.add_round({"server_round": 3, "accuracy": 0.3}, [{"server_round": 3, "node_id": 7}])
    msg = str(exc.value)
    assert "disk is full" in msg and "2 finished rounds are safe in" in msg and "\n" not in msg
    monkeypatch.setattr(os, "replace", real)
    assert pd.read_csv(tmp_path / "run" / "rounds.csv").server_round.tolist() == [1, 2]
    assert pd.read_csv(tmp_path / "run" / "clients.csv").server_round.tolist() == [1, 2]
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp files left
    assert w.rounds[-1]["server_round"] == 2  # the failed round is not counted as written


def test_other_os_errors_pass_through(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_writer(tmp_path / "missing-dir" / "x.csv") as fh:
        fh.write(b"x")


def test_tables_grow_by_appending_and_a_new_column_rewrites_them(tmp_path):
    w = RunWriter(tmp_path / "run")
    fleet = [{"server_round": 1, "partition_id": p, "available": 1} for p in range(3)]
    w.add_round({"server_round": 1}, [{"server_round": 1, "node_id": 1, "status": "ok"}], fleet)
    path = tmp_path / "run" / "clients.csv"
    first = path.stat().st_ino
    w.add_round({"server_round": 2}, [{"server_round": 2, "node_id": 2, "status": "ok"}],
                [{**r, "server_round": 2} for r in fleet])
    assert path.stat().st_ino == first  # appended in place, not replaced
    w.add_round({"server_round": 3}, [{"server_round": 3, "node_id": 1, "status": "failed", "error": "boom, twice"}])
    clients = pd.read_csv(path)
    assert clients.server_round.tolist() == [1, 2, 3] and clients.error.isna().tolist() == [True, True, False]
    assert clients.error.iloc[-1] == "boom, twice"  # a comma inside a field stays one field
    assert pd.read_csv(tmp_path / "run" / "fleet.csv").server_round.tolist() == [1, 1, 1, 2, 2, 2]
    assert w.fleet_rows == 6 and len(w.clients) == 3


def test_a_full_disk_during_an_append_takes_the_round_back_out(tmp_path, monkeypatch):
    w = RunWriter(tmp_path / "run")
    w.add_round({"server_round": 1}, [{"server_round": 1, "node_id": 7}])
    w.add_round({"server_round": 2}, [{"server_round": 2, "node_id": 7}])
    real = os.replace

    def full(src, dst):  # clients.csv is appended, then rounds.csv cannot be replaced
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(DiskFullError):
        w.add_round({"server_round": 3}, [{"server_round": 3, "node_id": 7}, {"server_round": 3, "node_id": 8}])
    monkeypatch.setattr(os, "replace", real)
    assert pd.read_csv(tmp_path / "run" / "clients.csv").server_round.tolist() == [1, 2]
    w.add_round({"server_round": 3}, [{"server_round": 3, "node_id": 7}])
    assert pd.read_csv(tmp_path / "run" / "clients.csv").server_round.tolist() == [1, 2, 3]


def test_restore_drops_a_cut_off_last_line(tmp_path):
    w = RunWriter(tmp_path / "run")
    for r in (1, 2):
        w.add_round({"server_round": r}, [{"server_round": r, "node_id": 7, "error": ""}])
    with open(tmp_path / "run" / "clients.csv", "a") as fh:
        fh.write('3,7,"half a mess')  # a power cut in the middle of an append
    w2 = RunWriter(tmp_path / "run")
    w2.restore(2, 2, 0)
    assert pd.read_csv(tmp_path / "run" / "clients.csv").server_round.tolist() == [1, 2]


def test_rounds_csv_is_what_pandas_writes_of_every_row_after_each_change(tmp_path):
    """rounds.csv is formatted from its kept text plus the newest row; a column that appears
    late (a checkpoint's cost, an evaluation) rewrites it whole: the file always equals
    pandas' table of every row (read back: pandas writes an integer column with gaps as floats)."""
    import io

    w = RunWriter(tmp_path / "run")
    path = tmp_path / "run" / "rounds.csv"

    def same() -> None:
        pd.testing.assert_frame_equal(pd.read_csv(path), pd.read_csv(io.StringIO(pd.DataFrame(w.rounds).to_csv(index=False))))

    for rnd in range(1, 8):
        row = {"server_round": rnd, "loss": 1 / rnd, "updated": rnd % 2 == 0, "error": "a, b" if rnd == 3 else None}
        if rnd >= 4:
            row["accuracy"] = 0.1 * rnd  # a column from round 4 on
        w.add_round(row, [{"server_round": rnd, "node_id": 1}])
        same()
        if rnd % 3:
            w.update_last_round(checkpoint_s=0.5 * rnd, checkpoint_bytes=rnd)
            same()


def test_partition_tables_are_written_as_pandas_writes_them():
    """A run writes partition.csv from the label histogram without pandas; the text must be
    summary()'s to_csv, and summary() the table it always was."""
    import numpy as np

    from fedtitan.data.partition import PartitionTable, summary

    rng = np.random.default_rng(0)
    parts, labels = np.array_split(rng.permutation(1000), 100), rng.integers(0, 7, 1000)
    table = PartitionTable.of(parts, labels, 7, chunk=64)  # several chunks
    frame = summary(parts, labels, 7)
    assert table.csv() == frame.to_csv()
    assert list(frame.columns) == ["n", "classes", *(f"class_{c}" for c in range(7))]
    assert frame.index.name == "partition_id" and (frame.n == [len(p) for p in parts]).all()
    assert PartitionTable(np.zeros((0, 3), np.int64)).csv() == PartitionTable(np.zeros((0, 3), np.int64)).frame().to_csv()
