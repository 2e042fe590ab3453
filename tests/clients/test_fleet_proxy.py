"""The fleet proxy's door, in process: authentication from the headers, bounded and streamed
bodies, bytes in flight, refusals logged once a minute per address (the flood with real
SuperNodes: integration/test_deployment.py)."""

import asyncio
import base64
import datetime
import logging

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clients.fleet_proxy import FleetProxy, Limits, NodeKeys, RefusalLog, _spki_pem
from fedtitan.certs import make_certs

MiB = 2**20


def _headers(private_key, stamp=None, tamper=False):
    """What Flower's NodeAuthHttpInterceptor attaches to each Fleet request."""
    stamp = stamp or datetime.datetime.now(datetime.UTC).isoformat()
    sig = private_key.sign(stamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    if tamper:
        sig = sig[:-1] + bytes([sig[-1] ^ 1])
    return {"flwr-public-key": base64.b64encode(_spki_pem(private_key.public_key())).decode(),
            "flwr-timestamp": stamp, "flwr-signature": base64.b64encode(sig).decode()}


@pytest.fixture
def lab(tmp_path):
    make_certs(tmp_path, ["127.0.0.2"], nodes=2)
    key = serialization.load_ssh_private_key((tmp_path / "supernode-0").read_bytes(), password=None)
    return tmp_path, key


def test_node_keys_accept_a_fresh_signature_from_a_known_key_only(lab):
    certs, key = lab
    keys = NodeKeys([certs])
    assert len(keys) == 2
    assert keys.check(_headers(key)) is None
    stranger = ec.generate_private_key(ec.SECP384R1())
    assert keys.check(_headers(stranger)) == "unknown SuperNode key"
    assert keys.check(_headers(key, tamper=True)) == "bad signature"
    old = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=400)).isoformat()
    assert keys.check(_headers(key, stamp=old)) == "stale or future timestamp"
    assert keys.check({}) == "no SuperNode signature"
    assert keys.check({**_headers(key), "flwr-signature": "%%%"}) == "malformed SuperNode signature"


def test_node_keys_pick_up_a_new_key_file(lab, tmp_path):
    certs, _ = lab
    keys = NodeKeys([certs], reload_every_s=0.0)
    new = ec.generate_private_key(ec.SECP384R1())
    assert keys.check(_headers(new)) == "unknown SuperNode key"
    (certs / "supernode-9.pub").write_bytes(new.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                          serialization.PublicFormat.OpenSSH))
    assert keys.check(_headers(new)) is None
    with pytest.raises(ValueError, match="no SuperNode public keys"):
        NodeKeys([tmp_path / "empty"])


class _Call:
    """Drive the ASGI app with one request; record what it reads and sends."""

    def __init__(self, proxy, path="/v1/fleet/push-object", headers=None, chunks=(b"x" * 1000,), client="10.0.0.9"):
        self.proxy, self.chunks, self.read = proxy, list(chunks), 0
        hdrs = {"content-length": str(sum(map(len, chunks))), **(headers or {})}
        self.scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
                      "query_string": b"", "client": (client, 5555),
                      "headers": [(k.encode(), v.encode()) for k, v in hdrs.items()]}
        self.sent = []

    async def receive(self):
        if not self.chunks:
            return {"type": "http.disconnect"}
        self.read += 1
        chunk = self.chunks.pop(0)
        return {"type": "http.request", "body": chunk, "more_body": bool(self.chunks)}

    async def send(self, message):
        self.sent.append(message)

    def run(self):
        asyncio.run(self.proxy(self.scope, self.receive, self.send))
        return self.sent[0]["status"], b"".join(m.get("body", b"") for m in self.sent[1:])


def _proxy(upstream_log, limits=None, keys=None, reply=b"ok"):
    def handler(request: httpx.Request) -> httpx.Response:
        upstream_log.append((request.url.path, request.read()))
        return httpx.Response(200, headers={"content-length": str(len(reply))}, stream=httpx.ByteStream(reply))

    proxy = FleetProxy("http://superlink", keys=keys, limits=limits)
    proxy.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return proxy


def test_unauthenticated_request_is_refused_without_reading_its_body(lab):
    certs, key = lab
    upstream = []
    proxy = _proxy(upstream, keys=NodeKeys([certs]))
    call = _Call(proxy, chunks=[b"x" * MiB] * 3)
    status, body = call.run()
    assert status == 401 and b"no SuperNode signature" in body
    assert call.read == 0 and upstream == []  # neither read nor forwarded
    assert (b"connection", b"close") in call.sent[0]["headers"]
    status, _ = _Call(proxy, headers=_headers(key), chunks=[b"a" * 10, b"b" * 5]).run()
    assert status == 200 and upstream == [("/v1/fleet/push-object", b"a" * 10 + b"b" * 5)]  # streamed through


def test_the_largest_body_follows_the_largest_object_pulled():
    upstream = []
    proxy = _proxy(upstream, limits=Limits(body_floor_bytes=1000, body_factor=4.0), reply=b"m" * 3000)
    assert proxy.max_body() == 1000
    status, _ = _Call(proxy, chunks=[b"x" * 1001]).run()
    assert status == 413 and upstream == []
    assert _Call(proxy, path="/v1/fleet/pull-object", chunks=[b"{}"]).run()[0] == 200  # the model: 3,000 bytes
    assert proxy.max_body() == 12_000
    assert _Call(proxy, chunks=[b"x" * 11_000]).run()[0] == 200
    # a body that lies about its length is cut off at the limit while it streams
    liar = _Call(proxy, chunks=[b"x" * 6000, b"x" * 6000, b"x" * 6000])
    liar.scope["headers"] = [(b"transfer-encoding", b"chunked")]
    assert liar.run()[0] == 413


def test_bytes_in_flight_are_capped_across_requests():
    upstream = []
    proxy = _proxy(upstream, limits=Limits(max_body_bytes=10 * MiB, max_inflight_bytes=15 * MiB))
    proxy.stats.inflight_bytes = 8 * MiB  # another request under way
    status, body = _Call(proxy, chunks=[b"x" * (8 * MiB)]).run()
    assert status == 503 and b"bytes in flight" in body
    assert _Call(proxy, chunks=[b"x" * (6 * MiB)]).run()[0] == 200
    assert proxy.stats.inflight_bytes == 8 * MiB  # released after each request


def test_refusals_are_logged_once_a_minute_per_address(caplog):
    log = RefusalLog(every_s=60.0)
    with caplog.at_level(logging.WARNING, logger="fedtitan.fleet_proxy"):
        for i in range(1000):
            log.note("10.0.0.9", "401 no SuperNode signature")
            log.note(f"10.0.1.{i % 3}", "413 body too large")
    assert log.lines == 4 and len(caplog.records) == 4  # one per address (4 addresses) in the first minute
    assert sum(log.total.values()) == 2000


def test_limits_must_be_positive():
    with pytest.raises(ValueError, match="max_conns_per_source must be > 0"):
        Limits(max_conns_per_source=0)
