"""The task API's bearer token: read once at start, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import SecretStr

from exporter.config import Config, read_secret_file

TOKEN_ENV = "LEMONDATA_EXPORTER_TOKEN"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
MIN_TOKEN_CHARS = 16
# What fits in an Authorization header without quoting: printable ASCII, no spaces.
_TOKEN_CHARS = re.compile(r"[!-~]+")


class TokenError(ValueError):
    """The configured token cannot be used; the message names where it came from."""


def read_token(config: Config, environ: Mapping[str, str] | None = None) -> SecretStr | None:
    """The token from api_server.token_file, else $LEMONDATA_EXPORTER_TOKEN; None: API off."""
    env = os.environ if environ is None else environ
    token_file = config.api_server.token_file
    if token_file is not None:
        try:
            token = read_secret_file(token_file)
        except ValueError as exc:
            raise TokenError(f"api_server.token_file: {exc}") from None
        return SecretStr(_checked(token, f"api_server.token_file: {token_file}"))
    token = env.get(TOKEN_ENV, "").strip()
    if not token and config.api_server.status_page_auth == "token":
        raise TokenError(
            f"api_server.status_page_auth is token, but no token is set: set ${TOKEN_ENV} "
            "or api_server.token_file"
        )
    return SecretStr(_checked(token, f"${TOKEN_ENV}")) if token else None


def _checked(token: str, where: str) -> str:
    if not token:
        raise TokenError(f"{where} is empty")
    if not _TOKEN_CHARS.fullmatch(token):
        raise TokenError(f"{where}: the token must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_CHARS:
        raise TokenError(
            f"{where}: the token must be at least {MIN_TOKEN_CHARS} characters "
            "(e.g. the output of `openssl rand -hex 32`)"
        )
    return token


def require_token(app: WSGIApp, check: BearerCheck) -> WSGIApp:
    """`app` answered only for requests with the right bearer token."""

    def guarded(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if check(environ.get("HTTP_AUTHORIZATION")):
            return app(environ, start_response)
        body = b"send the exporter's API token as `Authorization: Bearer <token>`\n"
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("WWW-Authenticate", 'Bearer realm="lemondata-exporter"'),
                ("Cache-Control", "no-store"),
            ],
        )
        return [body]

    return guarded


class BearerCheck:
    """Checks `Authorization: Bearer <token>` headers against the token."""

    def __init__(self, token: SecretStr) -> None:
        self._digest = _digest(token.get_secret_value())

    def __call__(self, header: str | None) -> bool:
        """True for the right token. Takes the same time whatever the header holds:
        both sides are hashed first, so neither length nor content leaks."""
        scheme, _, credentials = (header or "").strip().partition(" ")
        ok_scheme = scheme.lower() == "bearer"
        return hmac.compare_digest(_digest(credentials.strip()), self._digest) and ok_scheme


def _digest(value: str) -> bytes:
    # WSGI headers are latin-1 decoded text; encode back to the bytes that came.
    return hashlib.sha256(value.encode("latin-1", errors="replace")).digest()
