"""A path-filtering front end for a SuperLink bound to loopback.

Flower 1.41's SuperLink serves the Fleet API (``/v1/fleet/*``: what SuperNodes call), the
Control API (``/v1/control/*``: register/unregister SuperNode keys, submit and stop runs)
and the Runtime API on one HTTP port, and the open-source SuperLink authenticates no Control
API caller. Whoever reaches that port can register a key of their own and join, or submit a
run whose ServerApp code then executes on the server.

``fedtitan superlink`` therefore binds the SuperLink to loopback and puts this proxy on the
interface the boards reach. It forwards exactly two kinds of request, unchanged (SuperNode
authentication signs a timestamp in the headers, which pass through):

* ``POST /v1/fleet/<endpoint>`` (lowercase letters and dashes only: no ``..``, no ``%``,
  no second slash can smuggle another route through);
* ``GET``/``HEAD /health``.

Everything else gets ``404 not served on this interface`` without touching the SuperLink.

Since the boards' network is not trusted, the door also holds under a flood (:class:`Limits`):

* **Authentication before the body.** With SuperNode authentication on (the default of
  ``fedtitan superlink``), every Fleet request carries the node's public key, a timestamp and
  its signature of that timestamp (Flower's ``flwr-public-key`` / ``flwr-timestamp`` /
  ``flwr-signature`` headers, which the SuperLink checks too). The proxy checks them against
  the SuperNode keys it knows (:class:`NodeKeys`: the ``supernode-*.pub`` files of the certs
  folder, or ``--authorized-keys``), within Flower's time window, from the headers alone; a
  request that fails gets ``401`` and its body is never read. Flower's SuperNode signs every
  Fleet call, registration and activation included, so no endpoint is open before
  authentication.
* **Bounded bodies, streamed.** Bodies stream through to the SuperLink chunk by chunk (and
  replies back), so the proxy holds a few tens of KB per request, not the body. The largest
  body follows the run's model: ``body_factor`` x the largest object a board has pulled
  (the model's arrays), at least ``body_floor_bytes``; a declared or streamed body above it
  gets ``413``. The bodies declared by requests under way are capped together
  (``max_inflight_bytes``; ``503`` with ``Retry-After`` beyond).
* **Connections.** At most ``max_conns_per_source`` connections per source address (more are
  closed at once) and ``max_connections`` in all (``503``); a connection must send complete
  request headers within ``header_timeout_s`` of opening or of its previous reply, and a
  body may pause at most ``body_idle_timeout_s`` between chunks and must arrive at
  ``min_body_rate`` bytes/s on average after its first ``body_idle_timeout_s`` (``408``).
* **Logs.** Refusals are counted per source address and logged at most once a minute per
  address, not once per request.
TLS is terminated here with the SuperLink's own certificate (so boards keep dialling the
same name with the same CA) and re-established to the loopback SuperLink, whose certificate
is verified against the lab CA. It is an ASGI app on uvicorn with an httpx client: both
already come with Flower, so nothing is added to install, and it runs wherever the
SuperLink runs.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FLEET_PATH = re.compile(r"^/v1/fleet/[a-z][a-z-]*$")
HEALTH_PATH = "/health"
# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the request's.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "host"})
# Flower's SuperNode authentication headers (flwr.supercore.constant, flwr.common.constant)
KEY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "flwr-public-key", "flwr-timestamp", "flwr-signature"
# the window Flower's SuperLink accepts a signed timestamp in: (-5 s, 300 s + 5 s)
CLOCK_SKEW_S, TIMESTAMP_MAX_AGE_S = 5.0, 300.0
MiB = 2**20
log = logging.getLogger("fedtitan.fleet_proxy")


@dataclass
class Limits:
    """What one source, and all of them together, may hold of the proxy (see the module doc)."""

    max_body_bytes: int | None = None  # a fixed largest body; None: follow the model
    body_factor: float = 4.0  # ... x the largest object pulled so far
    body_floor_bytes: int = 16 * MiB  # ... and never below this
    max_inflight_bytes: int = 256 * MiB  # declared bodies of the requests under way, together
    max_conns_per_source: int = 32
    max_connections: int = 512
    header_timeout_s: float = 10.0
    body_idle_timeout_s: float = 30.0
    min_body_rate: float = 64 * 1024  # bytes/s, on average, after the first body_idle_timeout_s

    def __post_init__(self) -> None:
        for name in ("body_factor", "body_floor_bytes", "max_inflight_bytes", "max_conns_per_source",
                     "max_connections", "header_timeout_s", "body_idle_timeout_s", "min_body_rate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"fleet proxy limit {name} must be > 0, got {getattr(self, name)!r}")


def allowed(method: str, path: str, raw_path: bytes) -> bool:
    """Is this request for the Fleet API or the health check, and nothing else?"""
    if raw_path.decode("latin-1") != path:  # percent-encoding: refuse rather than guess
        return False
    if FLEET_PATH.match(path):
        return method == "POST"
    return path == HEALTH_PATH and method in ("GET", "HEAD")


def _spki_pem(public_key: Any) -> bytes:
    """A public key as Flower's SuperNodes send it (PEM SubjectPublicKeyInfo)."""
    from cryptography.hazmat.primitives import serialization

    return bytes(public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


class NodeKeys:
    """The SuperNode public keys the proxy lets through: every ``*.pub`` file (OpenSSH format,
    as ``fedtitan certs`` writes them) of the given files and folders, read again when they
    change (a rotated key is picked up without a restart; looked at most every
    ``reload_every_s``). The SuperLink still decides which of them are registered."""

    def __init__(self, sources: Iterable[str | Path], reload_every_s: float = 2.0) -> None:
        self.sources = [Path(s) for s in sources]
        self.reload_every_s = reload_every_s
        self._keys: dict[bytes, Any] = {}
        self._stamp: tuple[tuple[str, float], ...] | None = None
        self._looked = -1e9
        self._load()
        if not self._keys:
            where = ", ".join(str(s) for s in self.sources)
            raise ValueError(f"no SuperNode public keys (*.pub) in {where}; create them with `fedtitan certs`")

    def _files(self) -> list[Path]:
        files: list[Path] = []
        for s in self.sources:
            files += sorted(s.glob("*.pub")) if s.is_dir() else [s] if s.exists() else []
        return files

    def _load(self) -> None:
        from cryptography.hazmat.primitives import serialization

        self._looked = time.monotonic()
        files = self._files()
        stamp = tuple((str(f), f.stat().st_mtime) for f in files)
        if stamp == self._stamp:
            return
        keys: dict[bytes, Any] = {}
        for f in files:
            try:
                key = serialization.load_ssh_public_key(f.read_bytes().strip())
            except (OSError, ValueError, TypeError) as exc:
                log.warning("fleet proxy: skipping %s: not an OpenSSH public key (%s)", f, exc)
                continue
            keys[_spki_pem(key)] = key
        self._keys, self._stamp = keys, stamp

    def __len__(self) -> int:
        return len(self._keys)

    def check(self, headers: dict[str, str], now: datetime.datetime | None = None) -> str | None:
        """None when the headers carry a known key and its valid, fresh signature; else why not."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            pem = base64.b64decode(headers[KEY_HEADER], validate=True)
            signature = base64.b64decode(headers[SIGNATURE_HEADER], validate=True)
            stamp = headers[TIMESTAMP_HEADER]
        except KeyError:
            return "no SuperNode signature"
        except (binascii.Error, ValueError):
            return "malformed SuperNode signature"
        key = self._keys.get(pem)
        if key is None and time.monotonic() - self._looked > self.reload_every_s:
            self._load()
            key = self._keys.get(pem)
        if key is None:
            return "unknown SuperNode key"
        try:
            signed_at = datetime.datetime.fromisoformat(stamp)
            age = ((now or datetime.datetime.now(datetime.UTC)) - signed_at).total_seconds()
        except (ValueError, TypeError):
            return "malformed timestamp"
        if not -CLOCK_SKEW_S < age < TIMESTAMP_MAX_AGE_S + CLOCK_SKEW_S:
            return "stale or future timestamp"
        try:
            key.verify(signature, stamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, UnicodeError, ValueError, TypeError):
            return "bad signature"
        return None


class RefusalLog:
    """Refusals counted per source address; one log line per address and minute at most."""

    def __init__(self, every_s: float = 60.0, logger: logging.Logger = log) -> None:
        self.every_s = every_s
        self.logger = logger
        self.windows: dict[str, tuple[float, Counter[str]]] = {}
        self.total: Counter[str] = Counter()
        self.lines = 0

    def note(self, source: str, reason: str) -> None:
        self.total[reason] += 1
        now = time.monotonic()
        start, counts = self.windows.get(source, (now - 2 * self.every_s, Counter()))
        counts[reason] += 1
        if now - start >= self.every_s:
            what = ", ".join(f"{n} x {r}" for r, n in counts.most_common())
            self.logger.warning("fleet proxy: refused from %s: %s (at most one line per address and minute)",
                                source, what)
            self.lines += 1
            self.windows[source] = (now, Counter())
        else:
            self.windows[source] = (start, counts)
        if len(self.windows) > 10_000:  # many sources: forget the oldest windows
            for k in sorted(self.windows, key=lambda k: self.windows[k][0])[:5_000]:
                del self.windows[k]


class _Refused(Exception):
    def __init__(self, status: int, text: str, reason: str) -> None:
        super().__init__(text)
        self.status, self.text, self.reason = status, text, reason


@dataclass
class _Stats:
    forwarded: Counter[str] = field(default_factory=Counter)
    inflight_bytes: int = 0
    peak_inflight_bytes: int = 0
    largest_object: int = 0


class FleetProxy:
    """ASGI app forwarding allowed requests to ``upstream`` (e.g. ``https://127.0.0.1:8001``).

    ``keys``: the SuperNode keys to let through (None: no authentication at the door, for a
    SuperLink run without SuperNode authentication); ``limits``: see :class:`Limits`."""

    def __init__(self, upstream: str, verify: ssl.SSLContext | str | bool = True, timeout_s: float = 120.0,
                 keys: NodeKeys | None = None, limits: Limits | None = None) -> None:
        self.upstream = upstream.rstrip("/")
        self.verify = verify
        self.timeout_s = timeout_s
        self.keys = keys
        self.limits = limits or Limits()
        self.client: httpx.AsyncClient | None = None
        self.stats = _Stats()
        self.refusals = RefusalLog()

    @property
    def counts(self) -> Counter[str]:
        """Forwarded requests per path (for measurements)."""
        return self.stats.forwarded

    @property
    def refused(self) -> int:
        return sum(self.refusals.total.values())

    def max_body(self) -> int:
        """The largest body accepted now: fixed, or following the largest object pulled."""
        lim = self.limits
        if lim.max_body_bytes is not None:
            return lim.max_body_bytes
        return int(max(lim.body_floor_bytes, lim.body_factor * self.stats.largest_object))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        source = (scope.get("client") or ("?", 0))[0]
        try:
            await self._handle(scope, receive, send, source)
        except _Refused as r:
            self.refusals.note(source, r.reason)
            # and close the connection: an unread body is not drained
            await _respond(send, r.status, r.text.encode() + b"\n",
                           [(b"connection", b"close"), *([(b"retry-after", b"1")] if r.status == 503 else [])])

    async def _handle(self, scope: Scope, receive: Receive, send: Send, source: str) -> None:
        method, path = scope["method"], scope["path"]
        if not allowed(method, path, scope.get("raw_path") or path.encode()):
            raise _Refused(404, "not served on this interface", "404 not served")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.keys is not None and path != HEALTH_PATH:
            why = self.keys.check(headers)
            if why is not None:  # refused from the headers alone: the body is never read
                raise _Refused(401, f"SuperNode authentication failed: {why}", f"401 {why}")
        declared = headers.get("content-length")
        try:
            size = int(declared) if declared is not None else None
        except ValueError:
            raise _Refused(400, "bad content-length", "400 bad content-length") from None
        limit = self.max_body()
        if size is not None and (size < 0 or size > limit):
            raise _Refused(413, f"request body over {limit} bytes", "413 body too large")
        reserve = size if size is not None else limit
        if self.stats.inflight_bytes + reserve > self.limits.max_inflight_bytes:
            raise _Refused(503, "busy: too many bytes in flight, retry", "503 bytes in flight")
        self.stats.inflight_bytes += reserve
        self.stats.peak_inflight_bytes = max(self.stats.peak_inflight_bytes, self.stats.inflight_bytes)
        try:
            await self._forward(scope, receive, send, method, path, limit, size)
        finally:
            self.stats.inflight_bytes -= reserve

    async def _forward(self, scope: Scope, receive: Receive, send: Send, method: str, path: str, limit: int,
                       size: int | None) -> None:
        lim = self.limits
        t0 = time.monotonic()
        problem: list[_Refused] = []

        async def body() -> AsyncIterator[bytes]:
            got = 0
            while True:
                try:
                    message = await asyncio.wait_for(receive(), lim.body_idle_timeout_s)
                except TimeoutError:
                    problem.append(_Refused(408, "request body too slow", "408 slow body"))
                    raise
                if message["type"] == "http.disconnect":
                    problem.append(_Refused(400, "client went away", "client disconnected"))
                    raise ConnectionError("client disconnected")
                chunk = message.get("body", b"")
                got += len(chunk)
                if got > limit:
                    problem.append(_Refused(413, f"request body over {limit} bytes", "413 body too large"))
                    raise ValueError("body too large")
                elapsed = time.monotonic() - t0
                if elapsed > lim.body_idle_timeout_s and got < lim.min_body_rate * elapsed:
                    problem.append(_Refused(408, "request body too slow", "408 slow body"))
                    raise TimeoutError("body too slow")
                if chunk:
                    yield chunk
                if not message.get("more_body", False):
                    return

        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in HOP_BY_HOP]
        query = scope.get("query_string", b"").decode("latin-1")
        url = self.upstream + path + (f"?{query}" if query else "")
        client = self._client()
        content: Any = body() if method == "POST" else b""
        try:
            request = client.build_request(method, url, headers=headers, content=content)
            response = await client.send(request, stream=True)
        except Exception as exc:  # noqa: BLE001 - the body's own refusal, or the SuperLink unreachable
            if problem:
                raise problem[0] from None
            if isinstance(exc, httpx.HTTPError):
                await _respond(send, 502, f"SuperLink unreachable: {type(exc).__name__}\n".encode())
                return
            raise
        try:
            self.stats.forwarded[path] += 1
            out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
                   if k.lower() not in HOP_BY_HOP]
            length = response.headers.get("content-length")
            if path.endswith("/pull-object") and length is not None and length.isdigit():
                self.stats.largest_object = max(self.stats.largest_object, int(length))
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            if method != "HEAD":
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    def _client(self) -> httpx.AsyncClient:
        if self.client is None:
            self.client = httpx.AsyncClient(verify=self.verify, timeout=self.timeout_s, follow_redirects=False)
        return self.client

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def upstream_verify(ca_certfile: str | None) -> ssl.SSLContext | bool:
    """How the proxy checks the loopback SuperLink: against the lab CA (or not at all for an
    ``--insecure`` SuperLink, which serves plain HTTP)."""
    if ca_certfile is None:
        return False
    ctx = ssl.create_default_context(cafile=ca_certfile)
    return ctx


def guarded_protocol(limits: Limits, refusals: RefusalLog) -> type:
    """uvicorn's HTTP/1.1 protocol with a cap on connections per source address and a
    deadline for complete request headers (from the connection's start, and from each reply
    on a kept-alive connection: a slow-headers client cannot hold a connection open)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.utils import get_remote_addr

    per_source: Counter[str] = Counter()

    class GuardedH11Protocol(H11Protocol):
        _source = ""
        _counted = False
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            addr = get_remote_addr(transport)
            self._source = addr[0] if addr else "?"
            if per_source[self._source] >= limits.max_conns_per_source:
                refusals.note(self._source, "connection over the per-address cap")
                self.transport = transport
                transport.abort()
                return
            per_source[self._source] += 1
            self._counted = True
            super().connection_made(transport)
            self._arm()

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(limits.header_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                refusals.note(self._source, "headers not complete in time")
                self.transport.close()

        def handle_events(self) -> None:
            before = self.scope
            super().handle_events()
            if self.scope is not before:  # a request's headers are complete
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete):
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if not self._counted:
                return
            self._counted = False
            self._disarm()
            per_source[self._source] -= 1
            if per_source[self._source] <= 0:
                del per_source[self._source]
            super().connection_lost(exc)

    GuardedH11Protocol.per_source = per_source  # type: ignore[attr-defined]
    return GuardedH11Protocol


def serve(proxy: FleetProxy, host: str, port: int, certfile: str | None, keyfile: str | None,
          should_stop: Callable[[], bool] | None = None) -> None:
    """Run the proxy on ``host:port`` (TLS when a certificate is given) until interrupted or
    ``should_stop()`` turns true."""
    import uvicorn

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    config = uvicorn.Config(proxy, host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile,
                            log_level="warning", lifespan="on", access_log=False,
                            http=guarded_protocol(proxy.limits, proxy.refusals),
                            limit_concurrency=proxy.limits.max_connections, h11_max_incomplete_event_size=16 * 1024)
    server = uvicorn.Server(config)
    if should_stop is not None:
        async def watch() -> None:
            while not server.should_exit:
                if should_stop():
                    server.should_exit = True
                await asyncio.sleep(0.5)

        async def main() -> None:
            watcher = asyncio.create_task(watch())
            await server.serve()
            watcher.cancel()

        asyncio.run(main())
    else:
        server.run()


__all__ = ["FLEET_PATH", "FleetProxy", "Limits", "NodeKeys", "RefusalLog", "allowed", "guarded_protocol", "serve",
           "upstream_verify"]
