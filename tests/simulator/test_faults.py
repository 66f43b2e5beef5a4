"""Fault configuration parsing and each fault function, without a network."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from exporter.simulator import faults
from exporter.simulator.faults import (
    FAULT_NAMES,
    FAULTS,
    FaultConfigError,
    FaultContext,
    apply_payload_faults,
    apply_reply_faults,
    describe_faults,
    parse_fault_flag,
    parse_faults,
    window_reply,
)
from exporter.simulator.reply import JSON_TYPE, Reply, dump_json, json_reply

UNIFIED: dict[str, Any] = {
    "id": "img_1",
    "task_id": "img_1",
    "status": "completed",
    "created": 1000,
    "updated": 1050,
    "model": "flux-pro",
    "progress": 100,
    "poll_url": "/v1/tasks/img_1",
    "data": [{"url": "https://x/0.png", "revised_prompt": "p"}],
}
IMAGE: dict[str, Any] = {
    "created": 1000,
    "task_id": "img_1",
    "status": "completed",
    "data": [{"url": "https://x/0.png", "revised_prompt": "p"}],
}
FAILED: dict[str, Any] = {**IMAGE, "status": "failed", "error": "Insufficient balance"}


def ctx(name: str, seed: int = 0, **params: float) -> FaultContext:
    return FaultContext(random.Random(seed), {**FAULTS[name].defaults, **params})


def test_every_required_fault_exists() -> None:
    required = {
        "http_500", "http_502", "http_503", "slow", "timeout", "reset", "malformed_json",
        "html_error", "huge_body", "drip", "wrong_content_type", "unknown_status",
        "status_backwards", "bad_timestamps", "rate_limit_429", "unauthorized",
        "hostile_error_text",
    }  # fmt: skip
    assert required <= set(FAULT_NAMES)
    assert set(describe_faults()) == set(FAULT_NAMES)


def test_each_fault_has_exactly_one_function() -> None:
    for spec in FAULTS.values():
        assert (spec.payload_fn is None) != (spec.reply_fn is None), spec.name
        assert (spec.group == "payload") == (spec.payload_fn is not None), spec.name


def test_parse_number_true_null_and_object() -> None:
    active = parse_faults(
        {"http_500": 0.25, "malformed_json": True, "drip": None, "slow": {"delay_seconds": 4}},
        now=0.0,
    )
    assert active["http_500"].probability == 0.25
    assert active["malformed_json"].probability == 1.0
    assert "drip" not in active
    assert active["slow"].probability == 1.0
    assert active["slow"].params == {"delay_seconds": 4.0}


def test_parse_window_defaults_to_zero_probability() -> None:
    active = parse_faults({"http_503": {"burst_seconds": 10}}, now=100.0)
    assert active["http_503"].probability == 0.0
    assert active["http_503"].until == 110.0
    both = parse_faults({"unauthorized": {"unauthorized_for_seconds": 5, "probability": 0.5}}, 0)
    assert (both["unauthorized"].probability, both["unauthorized"].until) == (0.5, 5.0)


@pytest.mark.parametrize(
    "config",
    [
        {"nope": 1},
        {"http_500": 1.5},
        {"http_500": -0.1},
        {"http_500": "often"},
        {"slow": {"delay": 3}},
        {"slow": {"delay_seconds": "3"}},
        {"drip": {"burst_seconds": 3}},
        {"http_500": float("nan")},
    ],
)
def test_parse_rejects_bad_config(config: dict[str, object]) -> None:
    with pytest.raises(FaultConfigError):
        parse_faults(config, 0.0)


def test_parse_fault_flag() -> None:
    assert parse_fault_flag("http_500=0.1") == ("http_500", 0.1)
    assert parse_fault_flag("timeout") == ("timeout", 1.0)
    assert parse_fault_flag('slow={"delay_seconds": 3}') == ("slow", {"delay_seconds": 3})
    with pytest.raises(FaultConfigError):
        parse_fault_flag("slow={bad")


def test_setting_round_trips_through_json() -> None:
    active = parse_faults({"http_502": {"probability": 0.1, "burst_seconds": 2}}, 10.0)
    assert active["http_502"].to_json() == {"probability": 0.1, "until": 12.0}


def test_window_reply_only_inside_the_window() -> None:
    active = parse_faults({"http_503": {"burst_seconds": 10}}, now=0.0)
    rng = random.Random(0)
    inside = window_reply(active, 5.0, rng)
    assert inside is not None and inside.status == 503
    assert window_reply(active, 10.0, rng) is None


def test_zero_probability_never_fires() -> None:
    active = parse_faults({name: 0.0 for name in FAULT_NAMES}, 0.0)
    reply = json_reply(200, UNIFIED)
    assert apply_reply_faults(active, reply, random.Random(0)) == reply
    assert apply_payload_faults(active, dict(UNIFIED), random.Random(0)) == UNIFIED


def test_only_one_response_fault_per_request() -> None:
    active = parse_faults({"http_500": 1.0, "http_502": 1.0, "slow": 1.0, "drip": 1.0}, 0.0)
    reply = apply_reply_faults(active, json_reply(200, UNIFIED), random.Random(0))
    assert reply.status == 500  # the first in table order wins
    assert reply.drip_interval is not None  # drip precedes slow in the delivery group
    assert reply.delay_seconds == 0


# ---- payload faults ----------------------------------------------------------


def test_unknown_status() -> None:
    out = faults.unknown_status(UNIFIED, ctx("unknown_status"))
    assert out["status"] not in ("pending", "processing", "completed", "failed")


def test_status_backwards_on_both_shapes() -> None:
    unified = faults.status_backwards(UNIFIED, ctx("status_backwards"))
    assert (unified["status"], unified["progress"], "data" in unified) == ("processing", 99, False)
    image = faults.status_backwards(IMAGE, ctx("status_backwards"))
    assert image["status"] == "processing"
    assert image["data"] == [{"url": "", "revised_prompt": "p"}]
    pending = {**UNIFIED, "status": "pending"}
    assert faults.status_backwards(pending, ctx("status_backwards")) == pending


def test_bad_timestamps_variants() -> None:
    seen = set()
    for seed in range(40):
        out = faults.bad_timestamps(UNIFIED, ctx("bad_timestamps", seed))
        if "created" not in out:
            seen.add("missing")
        elif out["created"] < 0:
            seen.add("negative")
        elif out["created"] > 1000:
            seen.add("future")
    assert seen == {"missing", "negative", "future"}


def test_hostile_error_text() -> None:
    texts = {
        faults.hostile_error_text(FAILED, ctx("hostile_error_text", s, huge_probability=0))["error"]
        for s in range(50)
    }
    assert any("<script>" in t for t in texts)
    assert any("\x00" in t for t in texts)
    huge = faults.hostile_error_text(FAILED, ctx("hostile_error_text", huge_probability=1))
    assert len(huge["error"]) == 2_000_000
    assert faults.hostile_error_text(IMAGE, ctx("hostile_error_text")) == IMAGE


# ---- response faults ---------------------------------------------------------


def test_error_statuses() -> None:
    plain = json_reply(200, UNIFIED)
    assert faults.http_500(plain, ctx("http_500")).status == 500
    bad_gateway = faults.http_502(plain, ctx("http_502"))
    assert (bad_gateway.status, bad_gateway.content_type.split(";")[0]) == (502, "text/html")
    assert faults.http_503(plain, ctx("http_503")).status == 503
    assert faults.unauthorized(plain, ctx("unauthorized")).status == 401


def test_rate_limit_429_with_and_without_retry_after() -> None:
    plain = json_reply(200, UNIFIED)
    always = faults.rate_limit_429(plain, ctx("rate_limit_429", retry_after_probability=1))
    assert always.status == 429 and dict(always.headers)["Retry-After"] == "2"
    never = faults.rate_limit_429(plain, ctx("rate_limit_429", retry_after_probability=0))
    assert never.status == 429 and "Retry-After" not in dict(never.headers)


def test_html_error_is_200_or_502() -> None:
    plain = json_reply(200, UNIFIED)
    ok = faults.html_error(plain, ctx("html_error", ok_probability=1))
    bad = faults.html_error(plain, ctx("html_error", ok_probability=0))
    assert (ok.status, bad.status) == (200, 502)
    assert ok.content_type.startswith("text/html") and b"<html" in ok.body.lower()


def test_malformed_json_never_parses() -> None:
    plain = json_reply(200, UNIFIED)
    for seed in range(30):
        body = faults.malformed_json(plain, ctx("malformed_json", seed)).body
        with pytest.raises(ValueError):
            json.loads(body)


def test_huge_body_is_valid_json_of_the_asked_size() -> None:
    reply = faults.huge_body(json_reply(200, UNIFIED), ctx("huge_body", size_bytes=100_000))
    assert reply.content_length > 100_000
    assert json.loads(reply.body)["status"] == "completed"
    assert json.loads(faults.huge_body(json_reply(200, {}), ctx("huge_body")).body)


def test_wrong_content_type_keeps_the_json() -> None:
    reply = faults.wrong_content_type(json_reply(200, UNIFIED), ctx("wrong_content_type"))
    assert reply.content_type.startswith("text/plain")
    assert json.loads(reply.body) == UNIFIED


# ---- delivery faults ---------------------------------------------------------


def test_delivery_faults_only_mark_the_reply() -> None:
    plain = Reply(200, (dump_json(UNIFIED),), JSON_TYPE)
    assert faults.slow(plain, ctx("slow")).delay_seconds == 2.0
    assert faults.timeout(plain, ctx("timeout")).delay_seconds == 30.0
    assert faults.drip(plain, ctx("drip")).drip_interval == 0.1
    cut = faults.reset(plain, ctx("reset"))
    assert cut.reset_after_bytes is not None
    assert 0 < cut.reset_after_bytes < plain.content_length
    assert cut.body == plain.body
