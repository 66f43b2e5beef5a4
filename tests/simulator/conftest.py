"""Fixtures: simulators on loopback, a settable clock, and authenticated sessions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import requests

from exporter.simulator import Simulator, SimulatorSettings

KEY = "sk-sim"
BASE_SETTINGS = SimulatorSettings(
    host="127.0.0.1",
    port=0,
    api_keys=(KEY,),
    time_scale=1.0,
    seed=1,
    lost_fraction=0.0,
)


class FakeClock:
    """A clock the test moves by hand, so nothing depends on wall-clock timing."""

    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


StartSim = Callable[..., Simulator]


@pytest.fixture
def start_sim() -> Iterator[StartSim]:
    """Starts simulators with BASE_SETTINGS changed by keyword; stops them all at the end."""
    started: list[Simulator] = []

    def start(clock: Callable[[], float] | None = None, **changes: Any) -> Simulator:
        settings = replace(BASE_SETTINGS, **changes)
        sim = Simulator(settings, clock=clock) if clock else Simulator(settings)
        sim.start()
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def sim(start_sim: StartSim, clock: FakeClock) -> Simulator:
    """A simulator on loopback driven by the fake clock."""
    return start_sim(clock=clock)


@pytest.fixture
def api() -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {KEY}"
        yield session
