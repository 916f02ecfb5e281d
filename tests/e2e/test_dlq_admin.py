"""The DLQ admin API (pipeline/web/dlq_admin.py) on the worker's web app, against the real broker: stats,
a replay by filter (dry run first), the retry of one event by its coordinates, and its errors; without
the bearer token every route answers 401."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from pipeline import headers as h
from pipeline.config import load_settings
from pipeline.topics import load_topics
from pipeline.web import dlq_admin
from tests.e2e.conftest import Stack
from tests.e2e.test_dlq_tools import letters, write
from tests.support import read_topic, run_cli

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

TOKEN = "admin-token-for-the-dlq-test"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_admin_stats_replay_by_filter_and_retry_one_event(stack: Stack) -> None:
    assert run_cli("topics", "apply", env=stack.env()).returncode == 0
    dlq = f"{stack.prefix}sink.tsdb.dlq"
    await write(stack.bootstrap, dlq, letters())
    settings = load_settings(environ=stack.env(DLQ_REPLAY_MAX="2", ADMIN_TOKEN=TOKEN))
    catalog = load_topics(settings.topics_path(), settings.topic_vars())
    assert settings.admin_token is not None
    app = web.Application()
    app.router.add_routes(dlq_admin.routes(settings, catalog, settings.admin_token))
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:

        async def call(method: str, path: str, body: Any = None, auth: bool = True) -> tuple[int, Any]:
            response = await client.request(method, path, json=body, headers=AUTH if auth else {})
            return response.status, await response.json()

        for method, path in (
            ("GET", "/admin/dlq"),
            ("POST", "/admin/dlq/tsdb/replay"),
            ("POST", "/admin/dlq/tsdb/retry"),
        ):
            assert (await call(method, path, {}, auth=False))[0] == 401

        status, stats = await call("GET", "/admin/dlq")
        assert status == 200
        tsdb = next(d for d in stats["dlqs"] if d["topic"] == dlq)
        assert tsdb["pending"] == 12

        # Bad requests name the problem; nothing is changed.
        assert (await call("POST", "/admin/dlq/nope/replay", {}))[0] == 404
        assert (await call("POST", "/admin/dlq/tsdb/replay", {"since": "yesterday"}))[0] == 400
        assert (await call("POST", "/admin/dlq/tsdb/replay", {"colour": "red"}))[0] == 400
        assert (await call("POST", "/admin/dlq/tsdb/replay", {"key": "absent"}))[0] == 404
        assert (await call("POST", "/admin/dlq/tsdb/retry", {"partition": 0}))[0] == 400

        # One event by its coordinates (hash-7 was written at offset 7, class B).
        status, one = await call("POST", "/admin/dlq/tsdb/retry", {"partition": 0, "offset": 7})
        assert status == 200 and one["resent"] == 1, one
        # Replayed: a second retry of the same coordinates finds nothing pending.
        assert (await call("POST", "/admin/dlq/tsdb/retry", {"partition": 0, "offset": 7}))[0] == 404

        # A dry run by filter changes nothing; the replay re-sends and parks like the command.
        status, dry = await call("POST", "/admin/dlq/tsdb/replay", {"error_class": "ClassA", "dry_run": True})
        assert status == 200 and (dry["would_resend"], dry["would_park"], dry["resent"]) == (4, 2, 0)
        assert len(await read_topic(stack.bootstrap, stack.sink_topic())) == 1  # only hash-7
        status, done = await call("POST", "/admin/dlq/tsdb/replay", {"error_class": "ClassA"})
        assert status == 200 and (done["resent"], done["parked"]) == (4, 2), done

        sent = await read_topic(stack.bootstrap, stack.sink_topic(), committed_only=True)
        assert sorted(r.key or b"" for r in sent) == [b"hash-10", b"hash-2", b"hash-6", b"hash-7", b"hash-8"]
        assert all(r.headers[h.REPLAY_COUNT] == b"1" for r in sent)
