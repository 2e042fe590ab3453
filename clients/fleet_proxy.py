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
TLS is terminated here with the SuperLink's own certificate (so boards keep dialling the
same name with the same CA) and re-established to the loopback SuperLink, whose certificate
is verified against the lab CA. It is an ASGI app on uvicorn with an httpx client: both
already come with Flower, so nothing is added to install, and it runs wherever the
SuperLink runs.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, MutableMapping
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
                        "transfer-encoding", "upgrade", "host", "content-length"})
MAX_BODY = 512 * 2**20  # a model's arrays travel in push/pull-object; far below this


def allowed(method: str, path: str, raw_path: bytes) -> bool:
    """Is this request for the Fleet API or the health check, and nothing else?"""
    if raw_path.decode("latin-1") != path:  # percent-encoding: refuse rather than guess
        return False
    if FLEET_PATH.match(path):
        return method == "POST"
    return path == HEALTH_PATH and method in ("GET", "HEAD")


class FleetProxy:
    """ASGI app forwarding allowed requests to ``upstream`` (e.g. ``https://127.0.0.1:8001``)."""

    def __init__(self, upstream: str, verify: ssl.SSLContext | str | bool = True, timeout_s: float = 120.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.verify = verify
        self.timeout_s = timeout_s
        self.client: httpx.AsyncClient | None = None
        self.counts: Counter[str] = Counter()  # path -> forwarded requests (for measurements)
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        if not allowed(method, path, scope.get("raw_path") or path.encode()):
            self.refused += 1
            await _respond(send, 404, b"not served on this interface\n")
            return
        body = await _read_body(receive)
        if body is None:
            await _respond(send, 413, b"request too large\n")
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                   if k.decode("latin-1").lower() not in HOP_BY_HOP]
        query = scope.get("query_string", b"").decode("latin-1")
        url = self.upstream + path + (f"?{query}" if query else "")
        client = self._client()
        try:
            response = await client.request(method, url, headers=headers, content=body)
        except httpx.HTTPError as exc:
            await _respond(send, 502, f"SuperLink unreachable: {type(exc).__name__}\n".encode())
            return
        self.counts[path] += 1
        out = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()
               if k.lower() not in HOP_BY_HOP]
        out.append((b"content-length", str(len(response.content)).encode()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": out})
        await send({"type": "http.response.body", "body": response.content if method != "HEAD" else b""})

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


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def upstream_verify(ca_certfile: str | None) -> ssl.SSLContext | bool:
    """How the proxy checks the loopback SuperLink: against the lab CA (or not at all for an
    ``--insecure`` SuperLink, which serves plain HTTP)."""
    if ca_certfile is None:
        return False
    ctx = ssl.create_default_context(cafile=ca_certfile)
    return ctx


def serve(proxy: FleetProxy, host: str, port: int, certfile: str | None, keyfile: str | None,
          should_stop: Callable[[], bool] | None = None) -> None:
    """Run the proxy on ``host:port`` (TLS when a certificate is given) until interrupted or
    ``should_stop()`` turns true."""
    import uvicorn

    config = uvicorn.Config(proxy, host=host, port=port, ssl_certfile=certfile, ssl_keyfile=keyfile,
                            log_level="warning", lifespan="on", access_log=False)
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


__all__ = ["FLEET_PATH", "FleetProxy", "allowed", "serve", "upstream_verify"]
