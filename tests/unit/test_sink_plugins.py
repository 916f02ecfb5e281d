"""A third-party sink registered through the `pipeline.sinks` entry point group, as an installed
distribution would: a `*.dist-info` directory with `entry_points.txt` on sys.path plus the module it names.

Use this as the template for testing your own sink package (see docs/writing-a-sink.md)."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_settings_with_provenance
from pipeline.sinks.base import SinkRecord
from pipeline.sinks.registry import ENTRY_POINT_GROUP, create_sink, sink_types

PLUGIN_SOURCE = """
from __future__ import annotations

from typing import Any

from pydantic import Field

from pipeline.sinks.base import FatalSinkError, Sink, SinkRecord
from pipeline.sinks.registry import SinkType
from pipeline.sinks.settings import SinkSettings


class MemorySinkSettings(SinkSettings):
    type: str = "memory"
    capacity: int = Field(100, ge=1, description="events kept; env <SINK>_CAPACITY")

    def require_runnable(self) -> None:
        if self.capacity > 1_000_000:
            raise ValueError("capacity is too large")


class MemorySink(Sink):
    def __init__(self, settings: MemorySinkSettings) -> None:
        super().__init__(settings)
        self.settings = settings
        self.events: dict[str, bytes] = {}
        self.opened = False

    async def open(self) -> None:
        self.opened = True

    async def write(self, batch: list[SinkRecord]) -> int:
        new = [r for r in batch if r.event_hash not in self.events]
        if len(self.events) + len(new) > self.settings.capacity:
            raise FatalSinkError("memory sink is full")
        self.events.update((r.event_hash, r.body) for r in new)  # idempotent: keyed by the event hash
        return len(new)

    async def close(self) -> None:
        self.opened = False

    async def health(self) -> dict[str, Any]:
        return {"sink": self.name, "ok": self.opened, "events": len(self.events)}


SINK_TYPE = SinkType("{type_name}", MemorySinkSettings, "{module}:MemorySink")
"""


@pytest.fixture
def install_plugin(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Install a fake distribution declaring a sink type named `type_name`; returns its module name.
    Everything is undone afterwards: sys.path, sys.modules and the registry's cache."""
    installed: list[tuple[str, str]] = []

    def install(type_name: str) -> str:
        module = f"pipeline_test_plugin_{uuid.uuid4().hex[:8]}"
        root = tmp_path / module
        dist_info = root / f"{module}-0.1.dist-info"
        dist_info.mkdir(parents=True)
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 0.1\n")
        (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{type_name} = {module}:SINK_TYPE\n")
        source = PLUGIN_SOURCE.replace("{type_name}", type_name).replace("{module}", module)
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        sys.path.insert(0, str(root))
        installed.append((str(root), module))
        sink_types.cache_clear()
        return module

    try:
        yield install
    finally:
        for root, module in installed:
            if root in sys.path:
                sys.path.remove(root)
            sys.modules.pop(module, None)
        sink_types.cache_clear()


async def test_an_entry_point_sink_is_configured_built_and_written_to(
    install_plugin: Callable[[str], str], tmp_path: Path
) -> None:
    module = install_plugin("memory")
    assert "memory" in sink_types() and {"postgres", "http", "loki"} <= set(sink_types())

    config = tmp_path / "pipeline.yaml"
    config.write_text("sinks:\n  mem:\n    type: memory\n    enabled: true\n    capacity: 50\n")
    env = {"TSDB_ENABLED": "false", "MEM_CAPACITY": "7", "MEM_BATCH_SIZE": "3", "SINK_DEFAULT_MAX_RETRIES": "2"}
    settings, provenance = load_settings_with_provenance(config, env)
    settings.check_runnable()
    mem = settings.sinks["mem"]
    assert type(mem).__name__ == "MemorySinkSettings" and type(mem).__module__ == module
    assert [s.name for s in settings.enabled_sinks()] == ["mem"]
    assert mem.model_dump()["capacity"] == 7 and provenance.source_of("sinks.mem.capacity") == "env MEM_CAPACITY"
    assert mem.batch_size == 3 and mem.retry.max_retries == 2  # the common settings come for free

    sink = create_sink(mem)
    assert type(sink).__name__ == "MemorySink" and type(sink).__module__ == module
    await sink.open()
    batch = [SinkRecord(f"h{n}", b'{"n":%d}' % n) for n in range(5)]
    assert await sink.write(batch) == 5
    assert await sink.write(batch) == 0  # idempotent
    assert (await sink.health())["events"] == 5
    await sink.close()


def test_a_plugin_type_is_named_by_its_instance_prefix(install_plugin: Callable[[str], str], tmp_path: Path) -> None:
    install_plugin("memory")
    config = tmp_path / "pipeline.yaml"
    config.write_text("sinks:\n  memory:\n    type: memory\n")
    settings, _ = load_settings_with_provenance(config, {"MEMORY_ENABLED": "true", "MEMORY_CAPACITY": "9"})
    assert settings.sinks["memory"].enabled and settings.sinks["memory"].model_dump()["capacity"] == 9
    with pytest.raises(ConfigError, match="MEMORY_CAPACITY"):
        load_settings_with_provenance(config, {"MEMORY_CAPACITY": "0"})


def test_a_clash_with_a_builtin_type_raises(install_plugin: Callable[[str], str]) -> None:
    install_plugin("http")
    with pytest.raises(ValueError, match="sink type 'http', which exists already"):
        sink_types()


def test_an_entry_point_that_is_not_a_sink_type_raises(install_plugin: Callable[[str], str], tmp_path: Path) -> None:
    module = install_plugin("memory")
    entry_points = next((tmp_path / module).glob("*.dist-info")) / "entry_points.txt"
    entry_points.write_text(f"[{ENTRY_POINT_GROUP}]\nmemory = {module}:MemorySink\n")
    sink_types.cache_clear()
    with pytest.raises(TypeError, match="must be a SinkType"):
        sink_types()


def test_the_registry_is_clean_again() -> None:
    assert "memory" not in sink_types() and {"postgres", "http", "loki"} <= set(sink_types())
    assert not [p for p in sys.path if "pipeline_test_plugin_" in p]
    assert not [m for m in sys.modules if m.startswith("pipeline_test_plugin_")]
