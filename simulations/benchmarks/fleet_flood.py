"""Flood a fleet proxy from one source address, as an outsider on the boards' network would.

    python -m simulations.benchmarks.fleet_flood HOST:PORT --ca certs/ca.crt [--seconds 60] [--source 127.0.0.3]

Without a SuperNode key, for ``--seconds``, in parallel (threads):

* ``big``: connections that each declare a 300 MB body to ``POST /v1/fleet/push-object`` and
  send it as fast as they can (the attack that grew the server by gigabytes before the
  proxy checked signatures at the door);
* ``forged``: the same with made-up SuperNode signature headers;
* ``slow_headers``: connections that send their request headers one byte a second;
* ``slow_body``: a small declared body sent one byte every few seconds;
* ``tls_garbage``: TCP connections that send random bytes instead of a TLS handshake;
* ``idle``: TCP connections that open and send nothing.

Prints one JSON object: per kind, the connections made, the bytes sent and the HTTP
statuses (or ``closed``) they got. The proxy should answer ``401`` at once to ``big`` and
``forged`` (having read none of the body), close ``slow_headers`` after its header timeout,
and drop ``tls_garbage``; the server's memory should not grow with the bytes sent.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import ssl
import threading
import time
from collections import Counter
from typing import Any

DECLARED = 300 * 2**20
CHUNK = 2**20


class Flood:
    """Threads hammering ``host:port`` from ``source`` until :meth:`stop` or ``seconds``."""

    def __init__(self, host: str, port: int, ca: str | None, source: str = "127.0.0.3", seconds: float = 60.0,
                 workers: dict[str, int] | None = None) -> None:
        self.host, self.port, self.source, self.seconds = host, port, source, seconds
        self.ctx: ssl.SSLContext | None = None
        if ca:
            self.ctx = ssl.create_default_context(cafile=ca)
            self.ctx.check_hostname = False  # the proxy's certificate names the lab host; an outsider does not care
        self.workers = workers or {"big": 6, "forged": 4, "slow_headers": 8, "slow_body": 4, "tls_garbage": 4,
                                   "idle": 16}
        self.stats: dict[str, Counter[str]] = {k: Counter() for k in self.workers}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads: list[threading.Thread] = []
        self.timer: threading.Timer | None = None

    def _count(self, kind: str, key: str, n: int = 1) -> None:
        with self.lock:
            self.stats[kind][key] += n

    def _tcp(self) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(30)
        s.bind((self.source, 0))
        s.connect((self.host, self.port))
        return s

    def _conn(self) -> socket.socket:
        s = self._tcp()
        return self.ctx.wrap_socket(s, server_hostname=self.host) if self.ctx else s

    def _status(self, s: socket.socket) -> str:
        try:
            line = s.recv(256).split(b"\r\n", 1)[0]
            return line.split(b" ")[1].decode() if line.startswith(b"HTTP/") else "closed"
        except (OSError, IndexError):
            return "closed"

    def _request_head(self, length: int, forged: bool) -> bytes:
        head = (f"POST /v1/fleet/push-object HTTP/1.1\r\nHost: {self.host}\r\n"
                f"Content-Type: application/protobuf\r\nContent-Length: {length}\r\n")
        if forged:
            key = base64.b64encode(os.urandom(120)).decode()
            head += (f"flwr-public-key: {key}\r\nflwr-timestamp: 2026-01-01T00:00:00+00:00\r\n"
                     f"flwr-signature: {base64.b64encode(os.urandom(96)).decode()}\r\n")
        return (head + "\r\n").encode()

    def _loop(self, kind: str, attack: Any, tls: bool = True, retry_s: float = 0.5) -> None:
        """Open a connection (TLS or bare TCP), count it, run ``attack(kind, sock)`` on it; again
        until the flood ends. A connection the server drops counts as ``closed``."""
        while not self.done.is_set():
            try:
                s = self._conn() if tls else self._tcp()
            except OSError:
                self._count(kind, "connect failed")
                time.sleep(retry_s)
                continue
            self._count(kind, "connections")
            try:
                attack(kind, s)
            except OSError:
                self._count(kind, "closed")
            finally:
                s.close()

    def _big(self, kind: str, s: socket.socket) -> None:
        payload = os.urandom(CHUNK)
        s.sendall(self._request_head(DECLARED, kind == "forged"))
        sent = 0
        s.settimeout(0.5)
        try:
            while sent < DECLARED and not self.done.is_set():
                try:
                    s.sendall(payload)
                    sent += CHUNK
                except TimeoutError:
                    break  # the server stopped reading: look for its answer
                except OSError:
                    # the server answered and closed with the body unread, so its reset cut the send:
                    # the answer may still be waiting to be read, ahead of the reset
                    break
        finally:
            self._count(kind, "bytes_sent", sent)
        s.settimeout(5)
        self._count(kind, self._status(s))

    def _slow_headers(self, kind: str, s: socket.socket) -> None:
        t0 = time.monotonic()
        try:
            for b in self._request_head(100, False):
                if self.done.is_set():
                    break
                s.sendall(bytes([b]))
                time.sleep(1.0)
        except OSError:
            self._count(kind, "held_s", int(time.monotonic() - t0))
            raise
        if not self.done.is_set():  # the flood's end stops a sender: that is not the server's doing
            self._count(kind, "finished headers (not cut off)")

    def _slow_body(self, kind: str, s: socket.socket) -> None:
        s.sendall(self._request_head(1000, True))
        s.settimeout(3)
        self._count(kind, self._status(s))

    def _tls_garbage(self, kind: str, s: socket.socket) -> None:
        s.sendall(b"\x16\x03\x01" + os.urandom(4096))
        s.settimeout(5)
        self._count(kind, "closed" if not s.recv(64) else "answered")

    def _idle(self, kind: str, s: socket.socket) -> None:
        s.settimeout(max(0.1, self.seconds))
        try:
            s.recv(1)  # until the server gives up on the handshake, or the flood ends
            self._count(kind, "closed by server")
        except OSError:
            pass

    def start(self) -> Flood:
        attacks = {"big": (self._big, True, 0.2), "forged": (self._big, True, 0.2),
                   "slow_headers": (self._slow_headers, True, 0.5), "slow_body": (self._slow_body, True, 0.5),
                   "tls_garbage": (self._tls_garbage, False, 0.2), "idle": (self._idle, False, 0.5)}
        for kind, n in self.workers.items():
            attack, tls, retry_s = attacks[kind]
            for _ in range(n):
                t = threading.Thread(target=self._loop, args=(kind, attack, tls, retry_s), daemon=True)
                t.start()
                self.threads.append(t)
        self.timer = threading.Timer(self.seconds, self.done.set)
        self.timer.daemon = True  # a stopped flood leaves nothing that keeps the process alive
        self.timer.start()
        return self

    def stop(self) -> dict[str, Any]:
        self.done.set()
        if self.timer is not None:
            self.timer.cancel()
        for t in self.threads:
            t.join(timeout=35)
        return {k: dict(v) for k, v in self.stats.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("target", help="HOST:PORT of the fleet proxy")
    ap.add_argument("--ca", help="the lab CA (omit for an --insecure SuperLink: plain HTTP)")
    ap.add_argument("--source", default="127.0.0.3", help="source address to send from")
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    host, _, port = args.target.rpartition(":")
    flood = Flood(host, int(port), args.ca, args.source, args.seconds).start()
    time.sleep(args.seconds)
    print(json.dumps(flood.stop(), indent=2))


if __name__ == "__main__":
    main()
