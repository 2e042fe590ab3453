"""`fedtitan data download` against a local file server on 127.0.0.1 serving small fixtures in
each dataset's official format: checksums, resuming, the conversions, and the loaders reading
what was written."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import struct
import tarfile
import threading
import wave
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fedtitan.data import download as dl
from fedtitan.data import load_dataset
from fedtitan.errors import DataError
from simulations.cli import main as cli_main


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the fixture folder; honours Range (206) unless the server says not to, and can
    cut a response short to simulate a dropped connection."""

    def log_message(self, *a):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        path = Path(self.server.root) / self.path.lstrip("/")  # type: ignore[attr-defined]
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        self.server.requests.append((path.name, rng))  # type: ignore[attr-defined]  # before the body: the client may finish first
        if rng and self.server.ranges:  # type: ignore[attr-defined]
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = self.server.cut.pop(path.name, None)  # type: ignore[attr-defined]
        self.wfile.write(body[:cut] if cut else body)


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.root, srv.ranges, srv.cut, srv.requests = str(root), True, {}, []  # type: ignore[attr-defined]
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv, root, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def _md5(b: bytes) -> str:
    return hashlib.md5(b).hexdigest()  # noqa: S324


def _serve(monkeypatch, root: Path, base: str, name: str, files: dict[str, bytes], checked: bool = True):
    sources = []
    for target, data in files.items():
        (root / Path(target).name).write_bytes(data)
        sources.append(dl.Source((f"{base}/{Path(target).name}",), target, _md5(data) if checked else None))
    monkeypatch.setitem(dl.SOURCES, name, sources)


def _cifar_tarball() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
            d = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(range(10)) * 2}
            raw = pickle.dumps(d)
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return buf.getvalue()


def test_cifar10_checked_placed_and_loadable(server, monkeypatch, tmp_path, capsys):
    srv, root, base = server
    _serve(monkeypatch, root, base, "cifar10", {"cifar-10-python.tar.gz": _cifar_tarball()})
    assert cli_main(["data", "download", "cifar10", "--to", str(tmp_path / "data"), "--quiet"]) == 0
    assert "MD5 verified" in capsys.readouterr().out
    ds = load_dataset("cifar10", data_dir=tmp_path / "data")
    assert ds.x_train.shape == (100, 3, 32, 32) and len(ds.y_test) == 20
    assert not list((tmp_path / "data").glob("*.part"))


def test_an_interrupted_download_resumes_with_a_range_request(server, monkeypatch, tmp_path):
    srv, root, base = server
    blob = _cifar_tarball()
    _serve(monkeypatch, root, base, "cifar10", {"cifar-10-python.tar.gz": blob})
    srv.cut["cifar-10-python.tar.gz"] = len(blob) // 3  # the connection drops a third of the way
    with pytest.raises(DataError, match="connection closed after"):
        dl.download("cifar10", tmp_path, quiet=True)
    part = tmp_path / "cifar-10-python.tar.gz.part"
    assert part.stat().st_size == len(blob) // 3
    dl.download("cifar10", tmp_path, quiet=True)
    assert srv.requests[-1] == ("cifar-10-python.tar.gz", f"bytes={len(blob) // 3}-")
    assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == blob and not part.exists()


def test_a_server_without_ranges_restarts_cleanly(server, monkeypatch, tmp_path):
    srv, root, base = server
    blob = _cifar_tarball()
    _serve(monkeypatch, root, base, "cifar10", {"cifar-10-python.tar.gz": blob})
    srv.ranges = False
    (tmp_path / "cifar-10-python.tar.gz.part").write_bytes(b"stale bytes from an older attempt")
    dl.download("cifar10", tmp_path, quiet=True)
    assert (tmp_path / "cifar-10-python.tar.gz").read_bytes() == blob


def test_a_wrong_checksum_keeps_nothing_and_says_so(server, monkeypatch, tmp_path, capsys):
    srv, root, base = server
    (root / "cifar-10-python.tar.gz").write_bytes(b"not the real file")
    monkeypatch.setitem(dl.SOURCES, "cifar10", [dl.Source((f"{base}/cifar-10-python.tar.gz",), "cifar-10-python.tar.gz",
                                                          "c58f30108f718f92721af3b95e74349a")])
    assert cli_main(["data", "download", "cifar10", "--to", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "expected c58f30108f718f92721af3b95e74349a" in err and len(err.splitlines()) == 1
    assert not list(tmp_path.glob("cifar-10-python.tar.gz*"))


def test_unreachable_source_is_one_line_and_a_typo_gets_a_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(dl.SOURCES, "mnist", [dl.Source(("http://127.0.0.1:9/none.gz",), "mnist/none.gz", None)])
    assert cli_main(["data", "download", "mnist", "--to", str(tmp_path), "--quiet"]) == 2
    assert "could not download none.gz" in capsys.readouterr().err
    assert cli_main(["data", "download", "cifar", "--to", str(tmp_path)]) == 2
    assert "did you mean 'cifar10'" in capsys.readouterr().err


def _idx(arr: np.ndarray) -> bytes:
    head = struct.pack(">BBBB", 0, 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
    return gzip.compress(head + arr.astype(np.uint8).tobytes())


def test_mnist_idx_files(server, monkeypatch, tmp_path):
    srv, root, base = server
    rng = np.random.default_rng(1)
    files = {"mnist/train-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (30, 28, 28))),
             "mnist/train-labels-idx1-ubyte.gz": _idx(np.arange(30) % 10),
             "mnist/t10k-images-idx3-ubyte.gz": _idx(rng.integers(0, 256, (10, 28, 28))),
             "mnist/t10k-labels-idx1-ubyte.gz": _idx(np.arange(10))}
    _serve(monkeypatch, root, base, "mnist", files)
    dl.download("mnist", tmp_path, quiet=True)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and len(ds.y_test) == 10


def _uci_har_zip() -> bytes:
    inner = io.BytesIO()
    rng = np.random.default_rng(2)
    with zipfile.ZipFile(inner, "w") as z:
        for split, n, subj in (("train", 12, [1, 3, 5]), ("test", 6, [2, 4])):
            for k in ("body_acc", "body_gyro", "total_acc"):
                for a in "xyz":
                    rows = "\n".join(" ".join(f"{v:.6e}" for v in rng.normal(size=128)) for _ in range(n))
                    z.writestr(f"UCI HAR Dataset/{split}/Inertial Signals/{k}_{a}_{split}.txt", rows + "\n")
            z.writestr(f"UCI HAR Dataset/{split}/y_{split}.txt", "\n".join(str(1 + i % 6) for i in range(n)) + "\n")
            z.writestr(f"UCI HAR Dataset/{split}/subject_{split}.txt",
                       "\n".join(str(subj[i % len(subj)]) for i in range(n)) + "\n")
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("UCI HAR Dataset.zip", inner.getvalue())
        z.writestr("UCI HAR Dataset.names", "readme")
    return outer.getvalue()


def test_uci_har_nested_zip_is_unpacked_to_the_official_layout(server, monkeypatch, tmp_path, capsys):
    srv, root, base = server
    _serve(monkeypatch, root, base, "uci-har", {"uci-har.zip": _uci_har_zip()}, checked=False)
    dl.download("uci-har", tmp_path)
    assert "SHA-256" in capsys.readouterr().out  # no published checksum: say what arrived
    ds = load_dataset("uci-har", data_dir=tmp_path)
    assert ds.x_train.shape == (12, 9, 128) and len(ds.y_test) == 6 and ds.num_classes == 6


def _wav(seconds: float, freq: float) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def test_speech_commands_become_log_mel_images(server, monkeypatch, tmp_path):
    srv, root, base = server
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        members = {f"{w}/{spk}_nohash_{i}.wav": _wav(1.0, 300 + 100 * j)
                   for j, w in enumerate(("yes", "no", "house")) for spk in ("a1b2", "c3d4", "e5f6") for i in range(2)}
        members["_background_noise_/white_noise.wav"] = _wav(3.0, 50)
        members["_background_noise_/README.md"] = b"noise"
        for name, data in members.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    _serve(monkeypatch, root, base, "speech-commands", {"speech_commands_v0.02.tar.gz": buf.getvalue()})
    dl.download("speech-commands", tmp_path, quiet=True)
    ds = load_dataset("speech-commands", data_dir=tmp_path)
    assert ds.input_shape == (1, 98, 40) and ds.num_classes == 12
    y = np.concatenate([ds.y_train, ds.y_test])
    assert sorted(np.bincount(y, minlength=12)[[0, 1, 10, 11]].tolist()) == [3, 6, 6, 6]  # yes, no, unknown, 3 s of noise
    assert 0 < ds.x_train.mean() < 255


def _png(value: int) -> bytes:
    from PIL import Image

    arr = np.full((128, 128), 255, dtype=np.uint8)
    arr[40:90, 50 + value % 20:70 + value % 20] = value % 200  # a dark stroke on white
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_femnist_from_nist_sd19_grouped_by_writer_like_leaf(server, monkeypatch, tmp_path):
    srv, root, base = server
    by_class, by_write = io.BytesIO(), io.BytesIO()
    with zipfile.ZipFile(by_class, "w") as zc, zipfile.ZipFile(by_write, "w") as zw:
        k = 0
        for writer in ("f0000_14", "f0001_41"):
            for hexcode in ("30", "41", "61"):  # '0', 'A', 'a'
                for _ in range(10):
                    png = _png(k)
                    k += 1
                    zc.writestr(f"by_class/{hexcode}/hsf_0/hsf_0_{k:05d}.png", png)
                    zw.writestr(f"by_write/hsf_0/{writer}/c{writer}/c{writer}_{k:05d}.png", png)
        zc.writestr("by_class/30/train_30/train_30_00000.png", _png(9999))  # LEAF skips non-hsf folders
    _serve(monkeypatch, root, base, "femnist", {"nist-sd19/by_class.zip": by_class.getvalue(),
                                                "nist-sd19/by_write.zip": by_write.getvalue()}, checked=False)
    dl.download("femnist", tmp_path, quiet=True)
    ds = load_dataset("femnist", data_dir=tmp_path)
    y = np.concatenate([ds.y_train, ds.y_test])
    assert sorted(set(y.tolist())) == [0, 10, 36]  # digit 0, upper A, lower a
    assert len(y) == 60 and len(ds.y_test) == 6  # 10% of each writer's 30 samples held out
    assert ds.x_train.shape[1:] == (1, 28, 28) and ds.x_train.max() > 0  # strokes are bright, background 0
    assert set(np.unique(ds.groups_train)) == {"f0000_14", "f0001_41"}


def test_not_found_errors_name_the_download_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDTITAN_DATA", str(tmp_path / "nothing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataError, match="fedtitan data download cifar10"):
        load_dataset("cifar10", data_dir=tmp_path / "empty")
