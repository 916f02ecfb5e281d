"""A TCP proxy between a worker and its sink that injects faults: down, flapping resets, slowness.
Listens on 127.0.0.1 only; runs in the test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

Mode = Literal["pass", "down", "flap", "slow"]


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, seed: int = 1) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.reset_probability = 0.0
        self.delay = 0.0
        self.rng = random.Random(seed)
        self.port = 0
        self.accepted = 0
        self.resets = 0
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    @classmethod
    def before(cls, dsn: str, *, seed: int = 1) -> FaultProxy:
        """A proxy (not started) in front of the server a DSN names."""
        parts = urlsplit(dsn)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432, seed=seed)

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.drop_all()

    def set(self, mode: Mode, *, reset_probability: float = 0.0, delay: float = 0.0) -> None:
        self.mode, self.reset_probability, self.delay = mode, reset_probability, delay
        if mode == "down":
            self.drop_all()

    def drop_all(self) -> None:
        for client, upstream in list(self._conns):
            _reset(client)
            _reset(upstream)
        self._conns.clear()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "down":
            _reset(client_w)
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(client_w)
            return
        pair = (client_w, up_w)
        self._conns.add(pair)
        # Flapping: about `reset_probability` of the connections die early, the rest a little later,
        # so the link keeps failing for as long as the mode lasts.
        doomed = self.rng.random() < self.reset_probability
        budget = [self.rng.randint(1, 8) if doomed else self.rng.randint(8, 40)]
        try:
            await asyncio.gather(self._pump(client_r, up_w, pair, budget), self._pump(up_r, client_w, pair, budget))
        finally:
            self._conns.discard(pair)
            for writer in pair:
                with contextlib.suppress(Exception):
                    writer.close()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, ...],
        budget: list[int],
    ) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.mode == "down":
                    raise ConnectionResetError
                if self.mode == "flap":
                    budget[0] -= 1
                    if budget[0] < 0:
                        self.resets += 1
                        raise ConnectionResetError
                if self.mode == "slow" and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            for w in pair:
                _reset(w)
        finally:
            with contextlib.suppress(Exception):
                writer.write_eof()


def through(dsn: str, proxy: FaultProxy) -> str:
    """The DSN with its host and port replaced by the proxy's (credentials and database kept)."""
    parts = urlsplit(dsn)
    auth = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
    return urlunsplit(parts._replace(netloc=f"{auth}127.0.0.1:{proxy.port}"))


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), like a crashed peer or a dropped satellite link."""
    sock = writer.get_extra_info("socket")
    with contextlib.suppress(Exception):
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()
