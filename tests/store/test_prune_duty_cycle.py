"""The prune's duty cycle: the pause after each batch, from the config to the
store, and what it means for a prune (counted on a fake clock, not timed)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from exporter.backends import open_backend
from exporter.config import ConfigError, load_config
from exporter.store import sqlite as sqlite_store
from exporter.store.sqlite import PRUNE_PAUSE_SECONDS, SqliteTaskStore, prune_pause
from tests.store.test_sqlite_scale import everything, seed


def test_pause_leaves_the_rest_of_the_time_to_others() -> None:
    assert prune_pause(0.1, 0.5) == pytest.approx(0.1)  # as long as the batch
    assert prune_pause(0.1, 0.25) == pytest.approx(0.3)  # three times the batch
    assert prune_pause(0.02, 0.1) == pytest.approx(0.18)
    # Working all the time still lets a waiting writer in between batches.
    assert prune_pause(0.1, 1.0) == PRUNE_PAUSE_SECONDS
    assert prune_pause(0.0, 0.25) == PRUNE_PAUSE_SECONDS


def test_duty_cycle_is_validated_naming_file_and_field(tmp_path: Path) -> None:
    for bad in ("0", "-0.1", "1.5", "half"):
        path = tmp_path / "config.yaml"
        path.write_text(f"store:\n  prune_duty_cycle: {bad}\n")
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert any(
            p.startswith(f"{path}: ") and "store.prune_duty_cycle" in p
            for p in caught.value.problems
        ), caught.value.problems
    path.write_text("")
    assert load_config(path).store.prune_duty_cycle == sqlite_store.PRUNE_DUTY_CYCLE


def test_the_configured_duty_cycle_reaches_the_store(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"store:\n  path: {tmp_path / 's.db'}\n  prune_duty_cycle: 0.1\n")
    backend = open_backend(load_config(path))
    try:
        assert isinstance(backend.store, SqliteTaskStore)
        assert backend.store.prune_duty_cycle == 0.1
    finally:
        backend.store.close()


def test_prune_pauses_after_each_batch_for_its_share(tmp_path: Path) -> None:
    """On a clock where each batch takes 40 ms, a prune at duty cycle 0.2 pauses
    160 ms after each one: it works a fifth of the time, and still forgets
    exactly what is past the retention."""
    store = SqliteTaskStore(tmp_path / "store.db", prune_duty_cycle=0.2)
    seed(store, 1200, random.Random(3))
    before = everything(store)
    ticks = iter(range(10**6))
    store._clock = lambda: next(ticks) * 0.04  # type: ignore[method-assign]
    pauses: list[float] = []
    store._closed.wait = lambda timeout=None: pauses.append(timeout) or False  # type: ignore[method-assign,func-returns-value]
    removed = store.prune(1500.0, batch=50)
    gone = [t for t in before if t.finished_at is not None and t.finished_at < 1500.0]
    assert removed == len(gone) > 200
    assert len(pauses) == -(-len(gone) // 50)  # one after each batch
    assert pauses == pytest.approx([0.16] * len(pauses))
    store.close()
