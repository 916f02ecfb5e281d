"""`pipeline worker` with one Faust agent or app task replaced by one that raises (for tests only).

    python -m tests.crash_worker agent ingest
    python -m tests.crash_worker task commit_watchdog

An agent is named as registered (`app.agent(..., name=...)`); a task or timer by its function's name
(timers run as tasks). The replacement keeps everything else of the registration (supervisor, topic,
concurrency), so the test sees what the real worker does when that agent or task dies."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import faust


class InjectedCrash(RuntimeError):
    pass


def crash_agent(target: str) -> None:
    original = faust.App.agent

    def agent(self: faust.App, channel: Any = None, *, name: str | None = None, **kwargs: Any) -> Any:
        decorator = original(self, channel, name=name, **kwargs)
        if name != target:
            return decorator

        async def crashing(stream: Any) -> None:
            from agents.consumer import groups

            async for _ in groups(stream):  # the agents read their topic in batches, not event by event
                raise InjectedCrash(f"injected crash in agent {target}")

        crashing.__name__ = crashing.__qualname__ = target
        return lambda _fun: decorator(crashing)

    faust.App.agent = agent  # type: ignore[method-assign]


def crash_task(target: str) -> None:
    original = faust.App._task

    def _task(self: faust.App, fun: Callable[..., Any], on_leader: bool = False, traced: bool = False) -> Any:
        if getattr(fun, "__name__", None) == target:

            async def crashing() -> None:
                raise InjectedCrash(f"injected crash in task {target}")

            crashing.__name__ = crashing.__qualname__ = target
            fun = crashing
        return original(self, fun, on_leader=on_leader, traced=traced)

    faust.App._task = _task  # type: ignore[method-assign]


if __name__ == "__main__":
    kind, target = sys.argv[1], sys.argv[2]
    {"agent": crash_agent, "task": crash_task}[kind](target)
    sys.argv = [sys.argv[0], "worker"]
    from pipeline.cli.main import main

    main()
