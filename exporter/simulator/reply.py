"""Transport-independent requests and replies, so the logic is testable without sockets."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JSON_TYPE = "application/json"
HTML_TYPE = "text/html; charset=utf-8"


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # without the query string
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: bytes = b""


@dataclass(frozen=True)
class Reply:
    """An HTTP answer plus how to deliver it (delays, dripping, resets)."""

    status: int
    # Concatenated on the wire; several parts avoid copying huge padding.
    parts: tuple[bytes, ...] = ()
    content_type: str = JSON_TYPE
    headers: tuple[tuple[str, str], ...] = ()
    # False for answers that come from a proxy in front of the API.
    rate_limit_headers: bool = True
    delay_seconds: float = 0.0
    drip_interval: float | None = None  # send the body one byte at a time
    reset_after_bytes: int | None = None  # send this much body, then RST

    @property
    def content_length(self) -> int:
        return sum(len(part) for part in self.parts)

    @property
    def body(self) -> bytes:
        return b"".join(self.parts)


def dump_json(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()


def json_reply(status: int, payload: Any, headers: tuple[tuple[str, str], ...] = ()) -> Reply:
    return Reply(status, (dump_json(payload),), JSON_TYPE, headers)


def error_payload(message: str, type_: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "code": code}}


def error_reply(
    status: int,
    message: str,
    type_: str,
    code: str,
    headers: tuple[tuple[str, str], ...] = (),
) -> Reply:
    return json_reply(status, error_payload(message, type_, code), headers)
