"""Request handling without sockets: routes, auth, validation, rate limits, expiry."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from exporter.simulator import Simulator, SimulatorSettings
from exporter.simulator.app import bearer_key, route
from exporter.simulator.reply import Reply, Request

from .conftest import BASE_SETTINGS, KEY, FakeClock

AUTH = {"authorization": f"Bearer {KEY}"}


def make(clock: FakeClock, **changes: Any) -> Simulator:
    return Simulator(replace(BASE_SETTINGS, **changes), clock=clock)


def get(sim: Simulator, path: str, headers: dict[str, str] | None = None) -> Reply:
    return sim.handle(Request("GET", path, AUTH if headers is None else headers))


def post(sim: Simulator, path: str, body: object, raw: bytes | None = None) -> Reply:
    data = raw if raw is not None else json.dumps(body).encode()
    return sim.handle(Request("POST", path, AUTH, data))


def body(reply: Reply) -> Any:
    return json.loads(reply.body)


@pytest.mark.parametrize(
    ("path", "kind", "task_id"),
    [
        ("/v1/images/generations", "create_image", None),
        ("/v1/videos/generations/", "create_video", None),
        ("/v1/images/generations/img_1", "status_image", "img_1"),
        ("/v1/images/ldtask_1", "status_image_alias", "ldtask_1"),
        ("/v1/tasks/vid_1", "status_task", "vid_1"),
        ("/v1/videos/generations/vid_1", "status_video", "vid_1"),
        ("/v1/models", "other_api", None),
        ("/v1//tasks", "other", None),
        ("/_sim/faults", "sim", None),
        ("/", "other", None),
    ],
)
def test_route(path: str, kind: str, task_id: str | None) -> None:
    assert (route(path).kind, route(path).task_id) == (kind, task_id)


def test_bearer_key() -> None:
    assert bearer_key("Bearer sk-a") == "sk-a"
    assert bearer_key("bearer  sk-a ") == "sk-a"
    assert bearer_key("Basic sk-a") is None
    assert bearer_key("Bearer") is None
    assert bearer_key(None) is None


@pytest.mark.parametrize(
    "headers", [{}, {"authorization": "Bearer sk-wrong"}, {"authorization": KEY}]
)
def test_missing_or_wrong_key_is_401(clock: FakeClock, headers: dict[str, str]) -> None:
    reply = get(make(clock), "/v1/tasks/img_x", headers)
    assert reply.status == 401
    assert body(reply) == {
        "error": {
            "message": "Invalid API key",
            "type": "authentication_error",
            "code": "invalid_api_key",
        }
    }


def test_create_answers_like_the_api(clock: FakeClock) -> None:
    sim = make(clock)
    image = body(post(sim, "/v1/images/generations", {"model": "flux-pro", "prompt": "cat"}))
    assert image["status"] == "pending"
    assert image["task_id"] == image["id"]
    assert image["id"].startswith("img_") and len(image["id"]) == 28
    assert image["created"] == int(clock.now)
    assert image["model"] == "flux-pro"
    assert image["poll_url"] == f"/v1/tasks/{image['id']}"
    video = body(post(sim, "/v1/videos/generations", {"model": "veo-3"}))
    assert video["id"].startswith("vid_")


@pytest.mark.parametrize(
    ("payload", "raw"),
    [
        ({"prompt": "no model"}, None),
        ({"model": 3}, None),
        ({"model": ""}, None),
        ({"model": "flux-pro", "prompt": 5}, None),
        ({"model": "flux-pro", "n": 0}, None),
        (None, b"{not json"),
        (None, b"[1, 2]"),
        (None, b""),
    ],
)
def test_create_rejects_bad_bodies(clock: FakeClock, payload: object, raw: bytes | None) -> None:
    reply = post(make(clock), "/v1/images/generations", payload, raw)
    assert reply.status == 400
    assert body(reply)["error"]["type"] == "invalid_request_error"


def test_wrong_method_and_unknown_paths(clock: FakeClock) -> None:
    sim = make(clock)
    assert sim.handle(Request("GET", "/v1/images/generations", AUTH)).status == 405
    assert sim.handle(Request("DELETE", "/v1/tasks/img_x", AUTH)).status == 405
    assert get(sim, "/v1/models").status == 404
    assert get(sim, "/nowhere", {}).status == 404


def test_unknown_task_is_404_async_task_not_found(clock: FakeClock) -> None:
    reply = get(make(clock), "/v1/tasks/img_000000000000000000000000")
    assert reply.status == 404
    assert body(reply)["error"] == {
        "message": "Task not found or no longer available",
        "type": "invalid_request_error",
        "code": "async_task_not_found",
    }


def test_image_and_unified_shapes(clock: FakeClock) -> None:
    sim = make(clock)
    task = sim.create_task("flux-pro", prompt="cat", n=2, outcome="completed")
    pending_image = body(get(sim, f"/v1/images/generations/{task['id']}"))
    assert set(pending_image) == {"created", "task_id", "status", "data"}
    assert pending_image["data"] == [{"url": "", "revised_prompt": "cat"}] * 2
    clock.advance(1000)
    done_image = body(get(sim, f"/v1/images/{task['id']}"))
    assert done_image["status"] == "completed"
    assert all(item["url"].startswith("https://") for item in done_image["data"])
    unified = body(get(sim, f"/v1/tasks/{task['id']}"))
    assert {
        "id",
        "task_id",
        "status",
        "created",
        "updated",
        "model",
        "progress",
        "poll_url",
    } <= set(unified)
    assert (unified["status"], unified["progress"]) == ("completed", 100)
    assert unified["created"] <= unified["updated"] <= clock.now
    assert len(unified["data"]) == 2


def test_completed_video_has_video_url(clock: FakeClock) -> None:
    sim = make(clock)
    task = sim.create_task("veo-3", kind="video", outcome="completed")
    clock.advance(2000)
    done = body(get(sim, f"/v1/videos/generations/{task['id']}"))
    assert done["status"] == "completed"
    assert done["video_url"].endswith(".mp4")
    assert "data" not in done


def test_failed_and_cancelled(clock: FakeClock) -> None:
    sim = make(clock)
    failed = sim.create_task("flux-pro", reason="content_policy")
    cancelled = sim.create_task("flux-pro", outcome="cancelled")
    clock.advance(1000)
    image = body(get(sim, f"/v1/images/generations/{failed['id']}"))
    assert image["status"] == "failed" and image["error"]
    unified = body(get(sim, f"/v1/tasks/{cancelled['id']}"))
    assert (unified["status"], unified["cancelled"]) == ("failed", True)
    assert "cancelled" in unified["error"]
    # the image path does not tell cancellations apart
    image_cancelled = body(get(sim, f"/v1/images/generations/{cancelled['id']}"))
    assert "cancelled" not in image_cancelled and image_cancelled["status"] == "failed"


def test_finished_task_expires_after_retention(clock: FakeClock) -> None:
    sim = make(clock, time_scale=60.0)
    task = sim.create_task(
        "flux-pro", outcome="completed", pending_seconds=60, processing_seconds=60
    )
    clock.advance(2)  # 120 simulated seconds
    assert get(sim, f"/v1/tasks/{task['id']}").status == 200
    clock.advance(3600 / 60)
    assert get(sim, f"/v1/tasks/{task['id']}").status == 404
    (truth,) = sim.ground_truth()
    assert truth["status"] == "completed"
    assert truth["expired_at"] == pytest.approx(truth["finished_at"] + 60)


def test_timestamps_are_integers_at_scale_one_and_floats_otherwise(clock: FakeClock) -> None:
    clock.now = 1_750_000_000.25
    ints = make(clock).create_task("flux-pro")
    floats = make(clock, time_scale=10.0).create_task("flux-pro")
    forced = make(clock, float_timestamps=False, time_scale=10.0).create_task("flux-pro")
    assert ints["created"] == 1_750_000_000 and isinstance(ints["created"], int)
    assert floats["created"] == 1_750_000_000.25
    assert isinstance(forced["created"], int)


def test_rate_limit_headers_and_429(clock: FakeClock) -> None:
    sim = make(clock, rate_limit_per_minute=2)
    first = get(sim, "/v1/tasks/img_x")
    headers = dict(first.headers)
    assert headers["X-RateLimit-Limit"] == "2"
    assert headers["X-RateLimit-Remaining"] == "1"
    assert int(headers["X-RateLimit-Reset"]) == int(clock.now) + 60
    get(sim, "/v1/tasks/img_x")
    clock.advance(15)
    limited = get(sim, "/v1/tasks/img_x")
    assert limited.status == 429
    assert body(limited)["error"]["code"] == "rate_limit_exceeded"
    assert dict(limited.headers)["Retry-After"] == "45"
    assert dict(limited.headers)["X-RateLimit-Remaining"] == "0"
    clock.advance(45)
    assert get(sim, "/v1/tasks/img_x").status == 404


def test_rate_limit_zero_disables(clock: FakeClock) -> None:
    reply = get(make(clock, rate_limit_per_minute=0), "/v1/tasks/img_x")
    assert not any(name.startswith("X-RateLimit") for name, _ in reply.headers)


def test_same_seed_same_tasks(clock: FakeClock) -> None:
    def ids(seed: int) -> list[str]:
        sim = make(clock, seed=seed)
        return [sim.create_task("flux-pro")["id"] for _ in range(3)]

    assert ids(5) == ids(5)
    assert ids(5) != ids(6)
    assert len(set(ids(5))) == 3


def test_ids_do_not_repeat_after_a_reset(clock: FakeClock) -> None:
    sim = make(clock)
    before = sim.create_task("flux-pro")["id"]
    sim.reset()
    after = sim.create_task("flux-pro")["id"]
    assert after != before
    again = make(clock)
    again.create_task("flux-pro")
    again.reset()
    assert again.create_task("flux-pro")["id"] == after  # still reproducible


def test_faults_do_not_change_ground_truth(clock: FakeClock) -> None:
    sim = make(clock)
    task = sim.create_task("flux-pro", outcome="completed")
    clock.advance(1000)
    before = sim.ground_truth()
    sim.set_faults({"status_backwards": 1.0, "bad_timestamps": 1.0})
    seen = body(get(sim, f"/v1/tasks/{task['id']}"))
    assert seen["status"] == "processing"
    assert sim.ground_truth() == before


def test_request_counts_and_reset(clock: FakeClock) -> None:
    sim = make(clock)
    sim.create_task("flux-pro")
    get(sim, "/v1/tasks/img_x")
    get(sim, "/v1/tasks/img_x", {})
    counts = sim.request_counts()
    assert counts["total"] == 2
    assert counts["by_path_kind_and_code"] == {"status_task": {"404": 1, "401": 1}}
    reset = sim.handle(Request("POST", "/_sim/reset"))
    assert reset.status == 200
    assert sim.ground_truth() == []
    assert sim.request_counts()["by_path_kind"] == {"sim": 1}


def test_sim_fault_endpoints(clock: FakeClock) -> None:
    sim = make(clock)
    put = sim.handle(Request("PUT", "/_sim/faults", {}, b'{"http_500": 0.5}'))
    assert put.status == 200
    assert body(put)["active"] == {"http_500": {"probability": 0.5}}
    listed = body(sim.handle(Request("GET", "/_sim/faults")))
    assert "drip" in listed["available"]
    bad = sim.handle(Request("PUT", "/_sim/faults", {}, b'{"nope": 1}'))
    assert bad.status == 400
    assert body(sim.handle(Request("GET", "/_sim/faults")))["active"] == {
        "http_500": {"probability": 0.5}
    }


def test_settings_validation() -> None:
    with pytest.raises(ValueError):
        SimulatorSettings(time_scale=0)
    with pytest.raises(ValueError):
        SimulatorSettings(api_keys=())
    with pytest.raises(ValueError):
        SimulatorSettings(lost_fraction=2)


def test_each_key_is_an_account_of_its_own(clock: FakeClock) -> None:
    sim = make(
        clock,
        api_keys=("sk-a", "sk-b"),
        rate_limit_per_minute=0,
        key_limits={"sk-a": 1, "sk-b": 0},
    )
    key_a, key_b = {"authorization": "Bearer sk-a"}, {"authorization": "Bearer sk-b"}
    created = sim.handle(
        Request("POST", "/v1/images/generations", key_b, json.dumps({"model": "m"}).encode())
    )
    task_id = body(created)["task_id"]
    # Another account's task does not exist for this key, as on a multi-tenant API.
    mine, theirs = get(sim, f"/v1/tasks/{task_id}", key_b), get(sim, f"/v1/tasks/{task_id}", key_a)
    assert mine.status == 200
    assert (theirs.status, body(theirs)["error"]["code"]) == (404, "async_task_not_found")
    # Each key has its own limit: sk-a's 1 a minute is spent, sk-b has none.
    assert get(sim, f"/v1/tasks/{task_id}", key_a).status == 429
    assert all(get(sim, f"/v1/tasks/{task_id}", key_b).status == 200 for _ in range(5))
    # A revoked key is refused; the other goes on.
    reply = sim.handle(Request("POST", "/_sim/revoke", {}, b'{"key": "sk-b"}'))
    assert reply.status == 200
    revoked = get(sim, f"/v1/tasks/{task_id}", key_b)
    assert (revoked.status, body(revoked)["error"]["code"]) == (401, "expired_api_key")
    clock.advance(61)
    assert get(sim, "/v1/tasks/img_unknown", key_a).status == 404


def test_keys_without_a_limit_of_their_own_share_one_account(clock: FakeClock) -> None:
    sim = make(clock, api_keys=("sk-app", "sk-exporter"), rate_limit_per_minute=0)
    created = sim.handle(
        Request(
            "POST",
            "/v1/images/generations",
            {"authorization": "Bearer sk-app"},
            json.dumps({"model": "m"}).encode(),
        )
    )
    task_id = body(created)["task_id"]
    assert get(sim, f"/v1/tasks/{task_id}", {"authorization": "Bearer sk-exporter"}).status == 200
