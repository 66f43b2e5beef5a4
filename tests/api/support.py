"""Calling the WSGI apps in-process, and a store with a recorder behind them."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

TOKEN = "test-token-5f0c2a9e1b7d4c3a8e6f"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    reason: str = ""
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["error"]["code"])


def call(
    app: Any,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    query: str = "",
    content_type: str | None = "application/json",
    content_length: str | None = None,
    stream: Any = None,
) -> Reply:
    if json_body is not None:
        body = json.dumps(json_body).encode()
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "9847",
        "wsgi.input": stream or io.BytesIO(body or b""),
    }
    if body is not None:
        environ["CONTENT_LENGTH"] = str(len(body))
        if content_type is not None:
            environ["CONTENT_TYPE"] = content_type
    if content_length is not None:
        environ["CONTENT_LENGTH"] = content_length
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    seen: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], *_: Any) -> None:
        seen["status"] = status
        seen["headers"] = response_headers

    out = b"".join(app(environ, start_response))
    code, _, reason = seen["status"].partition(" ")
    return Reply(int(code), dict(seen["headers"]), out, reason, seen["headers"])
