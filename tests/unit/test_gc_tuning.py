from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from pipeline import gc_tuning
from pipeline.config import load_settings


@pytest.fixture
def restored_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_raises_the_thresholds_and_freezes_what_start_up_built(restored_gc: None) -> None:
    gc.unfreeze()
    gc_tuning.tune(50_000)
    assert gc.get_threshold() == (50_000, *gc_tuning.OLDER_THRESHOLDS)
    assert gc.get_freeze_count() > 0
    assert gc.isenabled()  # cycles are still collected


def test_zero_keeps_cpythons_defaults(restored_gc: None) -> None:
    gc.unfreeze()
    before = gc.get_threshold()
    gc_tuning.tune(0)
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_the_setting_defaults_to_50000_and_is_read_from_the_environment() -> None:
    assert load_settings(environ={}).gc_gen0_threshold == 50_000
    assert load_settings(environ={"GC_GEN0_THRESHOLD": "0"}).gc_gen0_threshold == 0
