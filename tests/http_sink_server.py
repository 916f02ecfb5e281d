"""A test HTTP sink: records every request (time, body) and answers from a script of responses."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    at: float  # time.monotonic()
    status: int
    events: list[dict[str, object]]
    body_bytes: int = 0


@dataclass
class Script:
    """Responses to give, in order: (status, headers). When exhausted, `status_for(events)` of the
    request's events, or 200 (e.g. a 400 for any batch holding a poison event)."""

    responses: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    delay: float = 0.0  # seconds each request takes
    in_flight: int = 0
    max_in_flight: int = 0
    status_for: Callable[[list[dict[str, object]]], int] | None = None

    def delivered_hashes(self) -> list[str]:
        with self.lock:
            return [str(e["event_hash"]) for r in self.received if r.status == 200 for e in r.events]


@contextmanager
def http_sink_server(script: Script) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            with script.lock:
                script.in_flight += 1
                script.max_in_flight = max(script.max_in_flight, script.in_flight)
            try:
                if script.delay:
                    time.sleep(script.delay)
            finally:
                with script.lock:
                    script.in_flight -= 1
            with script.lock:
                events = json.loads(body)
                if script.responses:
                    status, headers = script.responses.pop(0)
                else:
                    status, headers = (script.status_for(events) if script.status_for else 200), {}
                script.received.append(Received(time.monotonic(), status, events, len(body)))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ingest"
    finally:
        server.shutdown()
        server.server_close()
