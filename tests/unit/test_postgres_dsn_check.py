"""A TSDB_DSN asyncpg cannot read stops the worker at start with the setting's name (it used to start and
retry "sink open failed" for ever), and never repeats the DSN's password."""

from __future__ import annotations

import pytest

from pipeline.config import ConfigError, load_settings


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("notadsn://u:s3cret@x/db", "must be a postgresql:// URL"),
        ("postgresql://u:s3cret@127.0.0.1:notaport/db", "port is not a number from 1 to 65535"),
        ("postgresql://u:s3cret@h1:5432,h2:99999/db", "port is not a number from 1 to 65535"),
        ("postgresql://u:s3/cret@h/db", "percent-encode"),  # "s3" would be the port: never shown
        ("u:s3cret@host/db", "must be a postgresql:// URL"),
    ],
)
def test_an_unreadable_dsn_fails_at_start_naming_the_setting(dsn: str, problem: str) -> None:
    settings = load_settings(environ={"PIPELINE_CONFIG": "", "TSDB_DSN": dsn})
    with pytest.raises(ConfigError) as caught:
        settings.check_runnable()
    message = str(caught.value)
    assert "TSDB_DSN" in message and problem in message
    assert "s3" not in message and "cret" not in message  # no part of the password


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:pw@h1:5432,h2:5433/db",  # several hosts (asyncpg tries them in turn)
        "postgresql://u:pw@[::1]/db",
        "postgresql://u:pw@[::1]:5433/db",
        "postgresql:///db?host=/var/run/postgresql",  # a Unix socket
        "postgres://u@h/db",
    ],
)
def test_every_dsn_asyncpg_reads_still_passes(dsn: str) -> None:
    load_settings(environ={"PIPELINE_CONFIG": "", "TSDB_DSN": dsn}).check_runnable()
