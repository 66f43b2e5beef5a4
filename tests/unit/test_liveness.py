"""/-/live: fails only where a restart helps (see `Agent.alive`)."""

from __future__ import annotations

import time

from exporter.loops import LoopHealth, liveness


def stalled_health() -> LoopHealth:
    health = LoopHealth(stall_after=60)
    health.last_cycle_end = time.monotonic() - 600
    return health


def test_a_working_exporter_is_alive() -> None:
    health = LoopHealth(stall_after=60)
    health.cycle_finished()
    assert liveness(False, None, health) == (True, "Alive")


def test_polling_stalled_with_a_working_store_is_not_alive() -> None:
    alive, why = liveness(False, None, stalled_health())
    assert not alive and "no poll cycle finished for 600 s" in why


def test_a_store_outage_pauses_polling_but_a_restart_would_not_help() -> None:
    problem = "Redis at redis://store:6379/0 cannot be reached"
    assert liveness(False, problem, stalled_health()) == (True, "Alive")


def test_a_deleted_store_file_needs_a_restart() -> None:
    health = LoopHealth(stall_after=60)
    health.cycle_finished()
    alive, why = liveness(True, "the store file was deleted", health)
    assert not alive and "deleted" in why
