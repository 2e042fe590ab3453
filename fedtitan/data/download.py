"""``fedtitan data download NAME``: datasets from their official sources, for users with a network.

Every file is fetched into ``NAME.part`` (resumable: an interrupted download continues with
an HTTP range request where the server allows it), checked, then renamed; a progress bar
shows bytes, speed and time left. Checked how:

* by the checksum the source or a well-known loader publishes, where there is one
  (CIFAR-10 and MNIST: torchvision's MD5s; Speech Commands: torchaudio's MD5);
* otherwise (UCI HAR, NIST SD19 for FEMNIST, which publish none) by the archive's own
  CRCs and the files the loader needs; the SHA-256 received is printed so a lab can pin it.

What lands where ``load_dataset(NAME, data_dir=DIR)`` looks:

| name | source | result in DIR |
|---|---|---|
| cifar10 | the official python tarball | ``cifar-10-python.tar.gz`` |
| mnist | the four official idx files (a mirror first: the original site often refuses scripts) | ``mnist/*.gz`` |
| uci-har | the UCI repository zip (it holds a zip) | ``UCI HAR Dataset/`` |
| speech-commands | ``speech_commands_v0.02.tar.gz``, converted to 98x40 log-mel images | ``speech-commands/speech-commands-spectrogram.npz`` |
| femnist | NIST SD19 ``by_class.zip`` + ``by_write.zip``, grouped by writer as LEAF does | ``femnist/femnist.npz`` |
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedtitan.errors import DataError, did_you_mean


@dataclass(frozen=True)
class Source:
    urls: tuple[str, ...]  # tried in order
    filename: str
    md5: str | None = None


SOURCES: dict[str, list[Source]] = {
    "cifar10": [Source(("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",), "cifar-10-python.tar.gz",
                       "c58f30108f718f92721af3b95e74349a")],
    "mnist": [Source((f"https://ossci-datasets.s3.amazonaws.com/mnist/{f}", f"https://yann.lecun.com/exdb/mnist/{f}"),
                     f"mnist/{f}", md5) for f, md5 in (
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"))],
    "uci-har": [Source(("https://archive.ics.uci.edu/static/public/240/human+activity+recognition+using+smartphones.zip",),
                       "uci-har.zip")],
    "speech-commands": [Source(("https://storage.googleapis.com/download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
                                "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"),
                               "speech_commands_v0.02.tar.gz", "6b74f3901214cb2c2934e98196829835")],
    "femnist": [Source((f"https://s3.amazonaws.com/nist-srd/SD19/{f}",), f"nist-sd19/{f}") for f in
                ("by_class.zip", "by_write.zip")],
}
DATASETS = tuple(SOURCES)
CHUNK = 1 << 20


def _progress(quiet: bool) -> Any:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                    TimeRemainingColumn(), disable=quiet)


def fetch(urls: tuple[str, ...], target: Path, md5: str | None, quiet: bool = False) -> Path:
    """Download to ``target`` (via ``target.part``, resumed with a range request if it exists),
    verify ``md5`` if given; try the next URL when one fails. Returns ``target``."""
    if target.exists() and (md5 is None or _md5(target) == md5):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        try:
            _fetch_one(url, target.with_name(target.name + ".part"), quiet)
        except (urllib.error.URLError, OSError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', None) or exc}")
            continue
        part = target.with_name(target.name + ".part")
        if md5 is not None and (got := _md5(part)) != md5:
            part.unlink(missing_ok=True)
            raise DataError(f"{url} arrived with MD5 {got}, expected {md5}: the download is corrupt or the file "
                            f"changed upstream; nothing was kept, run the command again")
        os.replace(part, target)
        return target
    raise DataError(f"could not download {target.name} ({'; '.join(errors)}); check the network, or fetch it by hand "
                    f"into {target.parent}")


def _fetch_one(url: str, part: Path, quiet: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "fedtitan-data-download"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=60)  # noqa: S310 - the URLs are the fixed sources above
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # already complete
            return
        raise
    with resp:
        resumed = have and resp.status == 206
        total = resp.headers.get("Content-Length")
        size = int(total) + (have if resumed else 0) if total else None
        with _progress(quiet) as prog, open(part, "ab" if resumed else "wb") as fh:
            task = prog.add_task(part.name.removesuffix(".part"), total=size, completed=have if resumed else 0)
            while chunk := resp.read(CHUNK):
                fh.write(chunk)
                prog.advance(task, len(chunk))
    if size is not None and part.stat().st_size != size:
        raise OSError(f"connection closed after {part.stat().st_size} of {size} bytes (run again to resume)")


def _md5(path: Path) -> str:
    h = hashlib.md5()  # noqa: S324 - the sources publish MD5s; this is an integrity check, not security
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _zip(path: Path) -> zipfile.ZipFile:
    try:
        z = zipfile.ZipFile(path)
        bad = z.testzip()
    except zipfile.BadZipFile as exc:
        path.unlink(missing_ok=True)
        raise DataError(f"{path} is not a valid zip ({exc}); it was removed, run the command again") from None
    if bad is not None:
        path.unlink(missing_ok=True)
        raise DataError(f"{path} is corrupt (CRC error in {bad}); it was removed, run the command again")
    return z


# ------------------------------------------------------------------------------ per dataset


def download(name: str, to: str | os.PathLike[str] | None = None, quiet: bool = False,
             report: Callable[[str], None] = print) -> Path:
    """Fetch ``name`` into ``to`` (default: the first data folder, ``$FEDTITAN_DATA`` or
    ``~/.fedtitan/data``) and lay it out as its loader reads it; returns what was written."""
    from fedtitan.paths import data_dirs

    if name not in SOURCES:
        raise DataError(f"no download for {name!r}{did_you_mean(name, DATASETS)} "
                        f"(available: {', '.join(DATASETS)})")
    root = Path(to).expanduser() if to else data_dirs(None)[0]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {root}: {exc.strerror}") from None
    files = [fetch(s.urls, root / s.filename, s.md5, quiet) for s in SOURCES[name]]
    for s, f in zip(SOURCES[name], files, strict=True):
        report(f"{f}: {'MD5 verified' if s.md5 else 'SHA-256 ' + sha256(f)}")
    out = {"cifar10": lambda: files[0], "mnist": lambda: files[0].parent,
           "uci-har": lambda: _unpack_uci_har(files[0], root),
           "speech-commands": lambda: _convert_speech_commands(files[0], root, quiet),
           "femnist": lambda: _convert_femnist(files[0], files[1], root, quiet)}[name]()
    return out


def _unpack_uci_har(archive: Path, root: Path) -> Path:
    """The repository's zip holds ``UCI HAR Dataset.zip``; unpack that to ``UCI HAR Dataset/``."""
    target = root / "UCI HAR Dataset"
    needed = [f"{split}/Inertial Signals/{k}_{a}_{split}.txt" for split in ("train", "test")
              for k in ("body_acc", "body_gyro", "total_acc") for a in "xyz"]
    needed += [f"{split}/{f}_{split}.txt" for split in ("train", "test") for f in ("y", "subject")]
    if all((target / n).exists() for n in needed):
        return target
    outer = _zip(archive)
    names = outer.namelist()
    inner_name = next((n for n in names if n.endswith("UCI HAR Dataset.zip")), None)
    inner = _zip_bytes(outer.read(inner_name), archive) if inner_name else outer
    prefix = "UCI HAR Dataset/"
    members = [n for n in inner.namelist() if n.startswith(prefix) and not n.startswith("__MACOSX")]
    missing = [n for n in needed if prefix + n not in members]
    if missing:
        raise DataError(f"{archive} does not hold the UCI HAR layout (missing {missing[0]} and {len(missing) - 1} more)")
    tmp = root / ".uci-har.unpacking"
    shutil.rmtree(tmp, ignore_errors=True)
    for m in members:
        dest = tmp / m
        if m.endswith("/"):
            dest.mkdir(parents=True, exist_ok=True)
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(inner.read(m))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp / "UCI HAR Dataset", target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def _zip_bytes(data: bytes, origin: Path) -> zipfile.ZipFile:
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        if z.testzip() is not None:
            raise zipfile.BadZipFile("CRC error")
    except zipfile.BadZipFile as exc:
        raise DataError(f"the zip inside {origin} is corrupt ({exc}); delete {origin} and run again") from None
    return z


# Speech Commands v2: 10 keywords, every other word as "unknown", and 1 s windows of the
# background-noise recordings, as 98 frames x 40 log-mel bands (25 ms windows, 10 ms hop).
SPEECH_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SPEECH_CLASSES = (*SPEECH_KEYWORDS, "unknown", "_background_noise_")
SAMPLE_RATE, N_FFT, WIN, HOP, N_MELS, FRAMES = 16_000, 512, 400, 160, 40, 98
DB_LO, DB_HI = -100.0, 20.0  # dB range mapped to 0..255


def log_mel(wave: np.ndarray) -> np.ndarray:
    """(98, 40) uint8 log-mel image of one second of 16 kHz audio (padded or cut to 1 s)."""
    x = np.zeros(SAMPLE_RATE, dtype=np.float64)
    x[: min(len(wave), SAMPLE_RATE)] = wave[:SAMPLE_RATE]
    frames = np.lib.stride_tricks.sliding_window_view(x, WIN)[::HOP][:FRAMES] * np.hanning(WIN)
    power = np.abs(np.fft.rfft(frames, n=N_FFT)) ** 2
    mel = power @ _mel_filters().T
    db = 10.0 * np.log10(mel + 1e-10)
    return np.clip((db - DB_LO) / (DB_HI - DB_LO) * 255.0, 0, 255).round().astype(np.uint8)


_MEL: list[np.ndarray] = []


def _mel_filters() -> np.ndarray:
    if not _MEL:
        def hz_to_mel(f: np.ndarray) -> np.ndarray:
            return 2595.0 * np.log10(1.0 + f / 700.0)

        mels = np.linspace(hz_to_mel(np.array(20.0)), hz_to_mel(np.array(SAMPLE_RATE / 2)), N_MELS + 2)
        hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
        bins = np.fft.rfftfreq(N_FFT, 1 / SAMPLE_RATE)
        fb = np.zeros((N_MELS, len(bins)))
        for i in range(N_MELS):
            lo, c, hi = hz[i], hz[i + 1], hz[i + 2]
            fb[i] = np.maximum(0.0, np.minimum((bins - lo) / (c - lo), (hi - bins) / (hi - c)))
        _MEL.append(fb)
    return _MEL[0]


def _read_wav(data: bytes) -> np.ndarray:
    import wave

    with wave.open(io.BytesIO(data)) as w:
        if w.getsampwidth() != 2 or w.getnchannels() != 1 or w.getframerate() != SAMPLE_RATE:
            raise DataError("Speech Commands clips must be 16-bit mono 16 kHz wav")
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0


def _convert_speech_commands(archive: Path, root: Path, quiet: bool) -> Path:
    target = root / "speech-commands" / "speech-commands-spectrogram.npz"
    if target.exists():
        return target
    images, labels, speakers = [], [], []
    with tarfile.open(archive) as tar:
        for m in _progress_iter(tar, quiet, "spectrograms"):
            parts = Path(m.name).parts
            if not m.isfile() or not m.name.endswith(".wav") or len(parts) < 2:
                continue
            word, fname = parts[-2], parts[-1]
            fh = tar.extractfile(m)
            assert fh is not None
            wave = _read_wav(fh.read())
            if word == "_background_noise_":  # long recordings: one-second windows
                for k, start in enumerate(range(0, len(wave) - SAMPLE_RATE + 1, SAMPLE_RATE)):
                    images.append(log_mel(wave[start:start + SAMPLE_RATE]))
                    labels.append(SPEECH_CLASSES.index(word))
                    speakers.append(f"noise-{Path(fname).stem}-{k // 10}")
                continue
            images.append(log_mel(wave))
            labels.append(SPEECH_CLASSES.index(word) if word in SPEECH_KEYWORDS else SPEECH_CLASSES.index("unknown"))
            speakers.append(fname.split("_nohash_")[0])
    if not images:
        raise DataError(f"{archive} holds no wav clips; is it speech_commands_v0.02.tar.gz?")
    target.parent.mkdir(parents=True, exist_ok=True)
    from fedtitan.fileio import atomic_writer

    with atomic_writer(target) as fh:
        np.savez(fh, x=np.stack(images), labels=np.asarray(labels, dtype=np.int64), speaker=np.asarray(speakers),
                 classes=np.asarray(SPEECH_CLASSES))
    return target


def _progress_iter(tar: tarfile.TarFile, quiet: bool, what: str) -> Iterator[tarfile.TarInfo]:
    from rich.progress import Progress

    members = tar.getmembers()
    with Progress(disable=quiet) as prog:
        task = prog.add_task(what, total=len(members))
        for m in members:
            yield m
            prog.advance(task)


def _nist_class(hexcode: str) -> int:
    """NIST SD19 class folders are the character's ASCII code in hex: digits 0-9, then
    uppercase A-Z (10-35), then lowercase a-z (36-61), as LEAF numbers them."""
    c = chr(int(hexcode, 16))
    if c.isdigit():
        return ord(c) - ord("0")
    if c.isupper():
        return 10 + ord(c) - ord("A")
    return 36 + ord(c) - ord("a")


def _convert_femnist(by_class: Path, by_write: Path, root: Path, quiet: bool, test_fraction: float = 0.1,
                     seed: int = 0) -> Path:
    """LEAF's FEMNIST from NIST SD19: an image's class comes from ``by_class``, its writer from
    ``by_write`` (the same PNG is in both; LEAF matches them by content hash, and so do we);
    ``by_class``'s ``hsf_*`` folders only, as LEAF takes them. Each image becomes 28x28 grey
    (PIL thumbnail with antialiasing, like LEAF), stored as 0 = background. Every writer's
    samples are split 90/10 into train/test (LEAF's ``-t sample``)."""
    from PIL import Image

    target = root / "femnist" / "femnist.npz"
    if target.exists():
        return target
    zc, zw = _zip(by_class), _zip(by_write)
    cls: dict[str, int] = {}
    for name in zc.namelist():
        p = Path(name).parts
        if name.endswith(".png") and len(p) >= 3 and "hsf" in p[-2] and "mit" not in p[-2]:
            cls[hashlib.md5(zc.read(name)).hexdigest()] = _nist_class(p[-3])  # noqa: S324
    xs, ys, writers = [], [], []
    names = [n for n in zw.namelist() if n.endswith(".png")]
    from rich.progress import Progress

    with Progress(disable=quiet) as prog:
        task = prog.add_task("femnist images", total=len(names))
        for name in names:
            prog.advance(task)
            data = zw.read(name)
            label = cls.get(hashlib.md5(data).hexdigest())  # noqa: S324
            if label is None:
                continue
            img = Image.open(io.BytesIO(data)).convert("L")
            img.thumbnail((28, 28), Image.Resampling.LANCZOS)
            arr = np.zeros((28, 28), dtype=np.uint8)
            a = 255 - np.asarray(img, dtype=np.uint8)  # 0 = background, as the loader expects
            arr[: a.shape[0], : a.shape[1]] = a
            xs.append(arr)
            ys.append(label)
            writers.append(Path(name).parts[-3])
    if not xs:
        raise DataError(f"no image of {by_write} matched one of {by_class}; are these NIST SD19's zips?")
    x, y, w = np.stack(xs), np.asarray(ys, dtype=np.int64), np.asarray(writers)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for writer in np.unique(w):
        rows = np.flatnonzero(w == writer)
        k = int(round(test_fraction * len(rows)))
        test[rng.choice(rows, size=k, replace=False)] = True
    target.parent.mkdir(parents=True, exist_ok=True)
    from fedtitan.fileio import atomic_writer

    with atomic_writer(target) as fh:
        np.savez(fh, train_x=x[~test], train_y=y[~test], train_writer=w[~test], test_x=x[test], test_y=y[test],
                 test_writer=w[test])
    return target


__all__ = ["DATASETS", "SOURCES", "Source", "download", "fetch", "log_mel"]
