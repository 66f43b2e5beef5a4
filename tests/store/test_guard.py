"""The store guard: failures counted by bounded op, logged once per interval, healed by a probe."""

from __future__ import annotations

import logging
import os
import sqlite3
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from exporter.model import DiscoveredTask
from exporter.store import sqlite as sqlite_store
from exporter.store.guard import OPS, StoreGuard, StoreUnavailable
from exporter.store.sqlite import SqliteTaskStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Flaky(SqliteTaskStore):
    """A real store whose writes fail while `broken` is set."""

    broken = False

    def add(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.broken:
            raise sqlite3.OperationalError("database or disk is full")
        return super().add(*args, **kwargs)

    def probe(self) -> None:
        if self.broken:
            raise sqlite3.OperationalError("database or disk is full")
        super().probe()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    assert value is not None, name
    return value


def test_failures_are_counted_logged_once_and_heal_by_probe(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry, clock = CollectorRegistry(), Clock()
    inner = Flaky(tmp_path / "s.db")
    guard = StoreGuard(inner, registry, clock=clock, log_interval=60, probe_interval=5)
    for op in OPS:
        assert sample(registry, "lemondata_store_errors_total", op=op) == 0
    assert sample(registry, "lemondata_store_up") == 1
    inner.broken = True
    caplog.set_level(logging.INFO, logger="exporter.store.guard")
    for n in range(500):
        with pytest.raises(StoreUnavailable, match="free space"):
            guard.add([DiscoveredTask(f"t{n}", "api")], 1.0)
    assert sample(registry, "lemondata_store_errors_total", op="add") == 500
    assert sample(registry, "lemondata_store_up") == 0
    assert len(caplog.records) == 1
    assert not guard.usable() and not guard.needs_restart()  # a full disk heals
    clock.now += 61
    with pytest.raises(StoreUnavailable):
        guard.add([DiscoveredTask("x", "api")], 1.0)
    assert len(caplog.records) == 2 and "still failing" in caplog.records[1].getMessage()
    assert not guard.usable()  # the probe fails too
    assert sample(registry, "lemondata_store_errors_total", op="check") == 1
    inner.broken = False
    assert not guard.usable()  # no new probe before probe_interval
    clock.now += 5
    assert guard.usable() and guard.problem() is None
    assert sample(registry, "lemondata_store_up") == 1
    assert "works again" in caplog.records[-1].getMessage()
    assert guard.add([DiscoveredTask("y", "api")], 1.0)


def test_deleted_file_refuses_everything_until_a_restart(tmp_path: Path) -> None:
    registry, clock = CollectorRegistry(), Clock()
    path = tmp_path / "s.db"
    guard = StoreGuard(SqliteTaskStore(path), registry, clock=clock)
    guard.add([DiscoveredTask("a", "api")], 1.0)
    path.unlink()
    with pytest.raises(StoreUnavailable, match="deleted"):
        guard.add([DiscoveredTask("b", "api")], 1.0)
    clock.now += 3600
    assert guard.problem() is not None and "deleted" in (guard.problem() or "")
    assert guard.needs_restart()
    with pytest.raises(StoreUnavailable):
        guard.remove("a")
    with pytest.raises(StoreUnavailable, match="deleted"):
        guard.get("a")


def test_replaced_file_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    store = SqliteTaskStore(path)
    store.check()
    SqliteTaskStore(tmp_path / "other.db").close()
    (tmp_path / "other.db").replace(path)
    with pytest.raises(Exception, match="replaced"):
        store.check()


def test_a_big_store_is_checked_in_the_background(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.db"
    store = SqliteTaskStore(path)
    store.add([DiscoveredTask(f"task-{n:06d}", "api", "flux-pro") for n in range(5000)], 1.0)
    store.close()
    with path.open("r+b") as handle:  # one page in the middle, overwritten
        handle.seek((path.stat().st_size // 4096 // 2) * 4096)
        handle.write(os.urandom(4096))
    monkeypatch.setattr(sqlite_store, "QUICK_CHECK_AT_START_BYTES", 0)
    damaged = SqliteTaskStore(path)  # opens: the check is deferred
    assert damaged.check_pending
    guard = StoreGuard(damaged, CollectorRegistry())
    assert guard.problem() is None
    thread = guard.check_in_background()
    assert thread is not None
    thread.join(60)
    assert "damaged" in (guard.problem() or "") and str(path) in (guard.problem() or "")
    with pytest.raises(StoreUnavailable, match="damaged"):
        guard.add([DiscoveredTask("new", "api")], 2.0)


def test_a_sound_big_store_passes_the_background_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "QUICK_CHECK_AT_START_BYTES", 0)
    path = tmp_path / "s.db"
    SqliteTaskStore(path).close()
    guard = StoreGuard(SqliteTaskStore(path), CollectorRegistry())
    thread = guard.check_in_background()
    assert thread is not None
    thread.join(60)
    assert guard.problem() is None and guard.add([DiscoveredTask("a", "api")], 1.0)
