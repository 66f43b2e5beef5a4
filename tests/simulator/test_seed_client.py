"""The docs' own polling function works against the simulator."""

from __future__ import annotations

import pytest

from . import seed_client
from .conftest import KEY, StartSim

pytestmark = pytest.mark.integration  # every test here starts a server


@pytest.fixture
def fast(start_sim: StartSim, monkeypatch: pytest.MonkeyPatch) -> StartSim:
    def start(**changes: object) -> object:
        sim = start_sim(**{"time_scale": 1000.0, **changes})
        monkeypatch.setattr(seed_client, "BASE_URL", sim.url)
        return sim

    return start


def test_completed_task_returns_its_url(fast: StartSim) -> None:
    sim = fast()
    task = sim.create_task("flux-pro", prompt="a cat", outcome="completed")
    url = seed_client.poll_image_task(task["task_id"], KEY, max_wait=60, interval=0.01)
    assert url.startswith("https://") and task["task_id"] in url


def test_failed_task_raises_its_error(fast: StartSim) -> None:
    sim = fast()
    task = sim.create_task("flux-pro", reason="content_policy")
    with pytest.raises(Exception) as raised:
        seed_client.poll_image_task(task["task_id"], KEY, max_wait=60, interval=0.01)
    assert str(raised.value) == sim.ground_truth()[0]["error"]


def test_cancelled_task_raises_too(fast: StartSim) -> None:
    sim = fast()
    task = sim.create_task("flux-pro", outcome="cancelled")
    with pytest.raises(Exception, match="cancelled"):
        seed_client.poll_image_task(task["task_id"], KEY, max_wait=60, interval=0.01)


def test_slow_task_times_out(fast: StartSim) -> None:
    sim = fast(time_scale=1.0)
    task = sim.create_task("flux-pro", outcome="completed")
    with pytest.raises(TimeoutError):
        seed_client.poll_image_task(task["task_id"], KEY, max_wait=0.05, interval=0.01)
