"""A test webhook receiver for the HTTP sink: verifies the HMAC signature like a real receiver would,
decodes gzip bodies, records every request (headers, raw bytes, events) and answers from a script (or
echoes the request's headers in an error body, `echo_status`; it also stands in for a Loki that does so).

`webhook_server` is HTTP/1.1 over plain TCP (a thread). `h2_tls_server` is HTTP/2 over TLS with ALPN (an
asyncio server on the caller's loop, built on the `h2` state machine) for the HTTP/2 test, with
`self_signed_cert` to make its certificate.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import json
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay: float = 0.0  # seconds to wait before answering


@dataclass
class Request:
    at: float  # time.monotonic()
    http_version: str
    headers: dict[str, str]  # names lower-cased
    raw: bytes  # the body as received (gzip-compressed when Content-Encoding: gzip)
    body: bytes  # decoded
    signature_ok: bool | None  # None: the receiver has no secret
    status: int  # what the receiver answered
    replayed: bool = False  # answered from the idempotency store: a repeat of a request already processed

    @property
    def entries(self) -> list[dict[str, Any]]:
        data = json.loads(self.body)
        assert isinstance(data, list)
        return data

    @property
    def hashes(self) -> list[str]:
        return [str(e["event_hash"]) for e in self.entries]


@dataclass
class Webhook:
    """Answers with `replies` in order (then 200). With a `secret`, a request whose signature does not
    verify gets 401 without consuming a reply, as a real receiver would refuse it. With `idempotency`, the
    receiver follows the Idempotency-Key draft: the key of a request answered 2xx is stored with a
    fingerprint of its (decoded) body; the same key again with the same body is answered 200 from the store
    (`replayed`, not processed again, no reply consumed), with another body 422."""

    replies: list[Reply] = field(default_factory=list)
    secret: bytes | None = None
    # Answer every request that has no scripted reply with this status and the request's headers as a JSON
    # body, as receivers and gateways that echo the request in their errors do.
    echo_status: int | None = None
    signature_header: str = "x-pipeline-signature"
    idempotency: bool = False
    idempotency_header: str = "idempotency-key"
    requests: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    keys: dict[str, str] = field(default_factory=dict)  # idempotency key -> sha256 of the body

    def handle(self, http_version: str, headers: dict[str, str], raw: bytes) -> tuple[Reply, Request]:
        signature_ok = None
        if self.secret is not None:
            expected = "sha256=" + hmac.new(self.secret, raw, hashlib.sha256).hexdigest()
            signature_ok = hmac.compare_digest(expected, headers.get(self.signature_header.lower(), ""))
        body = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
        key = headers.get(self.idempotency_header.lower()) if self.idempotency else None
        fingerprint = hashlib.sha256(body).hexdigest()
        with self.lock:
            replayed = key is not None and self.keys.get(key) == fingerprint
            if signature_ok is False:
                reply = Reply(401, body=b'{"error": "bad signature"}')
            elif replayed:
                reply = Reply(200)
            elif key is not None and key in self.keys:
                reply = Reply(422, body=b'{"error": "idempotency key reused with another payload"}')
            else:
                reply = self.replies.pop(0) if self.replies else self.default_reply(headers)
                if key is not None and 200 <= reply.status < 300:
                    self.keys[key] = fingerprint
            request = Request(time.monotonic(), http_version, headers, raw, body, signature_ok, reply.status, replayed)
            self.requests.append(request)
        return reply, request

    def default_reply(self, headers: dict[str, str]) -> Reply:
        if self.echo_status is None:
            return Reply()
        echoed = {"error": "denied", "authorization": headers.get("authorization"), "request_headers": headers}
        return Reply(self.echo_status, body=json.dumps(echoed).encode())

    def delivered(self) -> list[str]:
        """Event hashes of every request answered with a 2xx, repeats included."""
        with self.lock:
            return [x for r in self.requests if 200 <= r.status < 300 for x in r.hashes]


@contextmanager
def webhook_server(hook: Webhook) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            reply, _ = hook.handle(self.request_version, headers, raw)
            if reply.delay:
                time.sleep(reply.delay)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except OSError:  # the client gave up (timeout test)
                pass

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def self_signed_cert(directory: Path) -> tuple[Path, Path] | None:
    """(cert, key) for 127.0.0.1 made with the openssl CLI, or None when openssl is missing."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    cert, key = directory / "cert.pem", directory / "key.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", *subject, *files],
        check=True,
        capture_output=True,
    )
    return cert, key


@asynccontextmanager
async def h2_tls_server(hook: Webhook, cert: Path, key: Path) -> AsyncIterator[str]:
    """HTTPS that negotiates h2 (or http/1.1, answered with 505) through ALPN; requests go to `hook`."""
    import h2.config
    import h2.connection
    import h2.events

    class Protocol(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                transport.write(b"HTTP/1.1 505 HTTP Version Not Supported\r\ncontent-length: 0\r\n\r\n")
                transport.close()
                return
            self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
            self.streams: dict[int, tuple[dict[str, str], bytearray]] = {}
            self.conn.initiate_connection()
            transport.write(self.conn.data_to_send())

        def data_received(self, data: bytes) -> None:
            for event in self.conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    headers = {_text(k).lower(): _text(v) for k, v in event.headers or []}
                    self.streams[event.stream_id or 0] = (headers, bytearray())
                elif isinstance(event, h2.events.DataReceived):
                    self.streams[event.stream_id or 0][1].extend(event.data or b"")
                    self.conn.acknowledge_received_data(event.flow_controlled_length or 0, event.stream_id or 0)
                elif isinstance(event, h2.events.StreamEnded):
                    headers, raw = self.streams.pop(event.stream_id or 0)
                    reply, _ = hook.handle("HTTP/2", headers, bytes(raw))
                    response = [(":status", str(reply.status)), ("content-length", str(len(reply.body)))]
                    response += list(reply.headers.items())
                    self.conn.send_headers(event.stream_id or 0, response, end_stream=not reply.body)
                    if reply.body:
                        self.conn.send_data(event.stream_id or 0, reply.body, end_stream=True)
            self.transport.write(self.conn.data_to_send())

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    context.set_alpn_protocols(["h2", "http/1.1"])
    server = await asyncio.get_running_loop().create_server(Protocol, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"https://127.0.0.1:{port}/hook"
    finally:
        server.close()
        await server.wait_closed()


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value
