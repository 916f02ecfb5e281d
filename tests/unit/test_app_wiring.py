"""The worker's Faust app commits with our rule, not Faust's: its consumer is the GaplessConsumer."""

from __future__ import annotations

from pathlib import Path

from faust.types import TP

from pipeline.config import load_settings
from pipeline.topics import load_topics


async def test_the_app_consumer_commits_only_over_acked_offsets(tmp_path: Path) -> None:
    from agents.app import build_app
    from agents.consumer import GaplessConsumer

    settings = load_settings(
        environ={
            "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "TSDB_ENABLED": "true",
            "TSDB_DSN": "postgresql://u@127.0.0.1:1/db",
            "PIPELINE_DATA_DIR": str(tmp_path),
            "PIPELINE_CONFIG": "",
        }
    )
    catalog = load_topics(settings.topics_path(), settings.topic_vars())
    pipeline = build_app(settings, catalog)
    consumer = pipeline.app.consumer
    assert isinstance(consumer, GaplessConsumer)
    tp = TP(catalog.ingest.name, 0)
    # Faust's rule would commit 13 here, past the unacked offset 10.
    consumer._committed_offset[tp] = 10
    consumer._acked[tp] = [12, 11]
    consumer._acked_index[tp] = {11, 12}
    assert consumer._new_offset(tp) is None
    consumer._acked[tp].append(10)
    consumer._acked_index[tp].add(10)
    assert consumer._new_offset(tp) == 13
    assert consumer._acked[tp] == [] and consumer._acked_index[tp] == set()
