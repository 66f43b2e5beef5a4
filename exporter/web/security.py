"""TLS and basic auth for every endpoint, from `--web.config.file`.

The file has the format of the Prometheus exporter-toolkit's web configuration,
so the same file works for this exporter and the others on a host::

    tls_server_config:
      cert_file: server.crt
      key_file: server.key
      client_auth_type: RequireAndVerifyClientCert   # optional
      client_ca_file: ca.crt                          # needed to verify clients
      min_version: TLS12                              # default TLS12
    http_server_config:
      headers: {X-Content-Type-Options: nosniff}
    basic_auth_users:
      alice: $2y$10$...                               # bcrypt hashes

Differences from the toolkit: the file is read once at start (restart to apply
a change), certificates and keys come from files only (no inline `cert`,
`key`, `client_ca`), and `client_allowed_sans`, `cipher_suites`,
`curve_preferences` and `rate_limit` are refused rather than ignored. The
client authentication types that accept unverified certificates
(`RequestClientCert`, `RequireAnyClientCert`) are refused too.

Nothing here ever puts a password, a hash or a key into a message: errors name
the file and the field, and the models keep secrets in `SecretStr`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import ssl
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import bcrypt
import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from exporter.config import ConfigError, validation_problems, yaml_problem
from exporter.web.server import StartResponse, WSGIApp

REALM = "lemondata-exporter"
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
CLIENT_AUTH_TYPES = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_INSECURE_CLIENT_AUTH = ("RequestClientCert", "RequireAnyClientCert")
_BCRYPT_HASH = re.compile(r"^\$2[abxy]?\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}$")
_HEADERS = (
    "Content-Security-Policy",
    "X-Frame-Options",
    "X-Content-Type-Options",
    "X-XSS-Protection",
    "Strict-Transport-Security",
)
# Checked against when the user is unknown, so that a wrong user name costs
# as much time as a wrong password (cost 10, like the toolkit's example).
_DUMMY_HASH = b"$2b$10$nBU/6.s8u37YaOhtofTFS.Lw1/eRBcxhkaYBhu6i.z0qtNCMBxbIe"
_NOT_SUPPORTED = "is not supported by this exporter"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


def _refuse(value: object, message: str) -> None:
    if value is not None:
        raise ValueError(message)


class TLSServerConfig(_Section):
    cert_file: Path
    key_file: Path
    client_auth_type: str = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    prefer_server_cipher_suites: bool = True
    # In the toolkit's format but not implemented here: refused with a reason.
    cert: SecretStr | None = None
    key: SecretStr | None = None
    client_ca: SecretStr | None = None
    client_allowed_sans: list[str] | None = None
    cipher_suites: list[str] | None = None
    curve_preferences: list[str] | None = None

    @field_validator("cert", "key", "client_ca")
    @classmethod
    def _no_inline(cls, value: object) -> object:
        _refuse(value, f"inline PEM {_NOT_SUPPORTED}; use cert_file, key_file, client_ca_file")
        return value

    @field_validator("client_allowed_sans", "cipher_suites", "curve_preferences")
    @classmethod
    def _unsupported(cls, value: object) -> object:
        _refuse(value, f"{_NOT_SUPPORTED}; remove it (OpenSSL's defaults apply)")
        return value

    @field_validator("client_auth_type")
    @classmethod
    def _client_auth(cls, value: str) -> str:
        if value in _INSECURE_CLIENT_AUTH:
            raise ValueError(
                f"{value} accepts unverified certificates and {_NOT_SUPPORTED}; "
                "use RequireAndVerifyClientCert"
            )
        if value not in CLIENT_AUTH_TYPES:
            raise ValueError(f"must be one of {', '.join(CLIENT_AUTH_TYPES)}")
        return value

    @field_validator("min_version", "max_version")
    @classmethod
    def _version(cls, value: str) -> str:
        if value not in TLS_VERSIONS:
            raise ValueError(f"must be one of {', '.join(TLS_VERSIONS)}")
        return value


class HTTPServerConfig(_Section):
    http2: bool = True  # accepted for compatibility; this server speaks HTTP/1.x
    headers: dict[str, str] = {}

    @field_validator("headers")
    @classmethod
    def _known_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if name not in _HEADERS:
                raise ValueError(f"{name!r} is not one of {', '.join(_HEADERS)}")
            if any(ord(c) < 0x20 or ord(c) > 0x7E for c in text):
                raise ValueError(f"{name}: the value must be printable ASCII")
        return value


class WebConfig(_Section):
    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig = HTTPServerConfig()
    basic_auth_users: dict[str, SecretStr] = Field(default_factory=dict)
    rate_limit: dict[str, Any] | None = None

    @field_validator("rate_limit")
    @classmethod
    def _no_rate_limit(cls, value: object) -> object:
        _refuse(value, f"{_NOT_SUPPORTED}; put a reverse proxy in front to limit rates")
        return value

    @field_validator("basic_auth_users")
    @classmethod
    def _users(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for user, hashed in value.items():
            if not user or ":" in user or any(ord(c) < 0x20 for c in user):
                raise ValueError("user names must be non-empty, without ':' or control characters")
            if not _BCRYPT_HASH.match(hashed.get_secret_value()):
                # The hash itself is never repeated: it is a secret too.
                raise ValueError(
                    f"the password of user {user!r} is not a bcrypt hash such as "
                    "$2y$10$... (make one with: htpasswd -nBC 10 \"\" | tr -d ':\\n')"
                )
        return value


class WebSecurity:
    """A validated web configuration: the TLS context and the WSGI wrapper."""

    def __init__(self, config: WebConfig, source: str) -> None:
        self.config = config
        self.source = source
        self.tls: ssl.SSLContext | None = (
            build_ssl_context(config.tls_server_config, source)
            if config.tls_server_config is not None
            else None
        )

    def wrap(self, app: WSGIApp, own_auth_prefixes: tuple[str, ...] = ()) -> WSGIApp:
        """`app` behind basic auth (when users are configured) and the extra headers.

        Paths under `own_auth_prefixes` skip basic auth: they carry their own
        bearer token in the same header.
        """
        if self.config.basic_auth_users:
            app = BasicAuth(app, self.config.basic_auth_users, own_auth_prefixes=own_auth_prefixes)
        headers = tuple(self.config.http_server_config.headers.items())
        if headers:
            app = _with_headers(app, headers)
        return app

    def describe(self) -> str:
        tls = self.config.tls_server_config
        parts = [
            "TLS off"
            if tls is None
            else f"TLS on (min {tls.min_version}, client certificates: {tls.client_auth_type})",
            f"basic auth for {len(self.config.basic_auth_users)} user(s)"
            if self.config.basic_auth_users
            else "no basic auth",
        ]
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"WebSecurity({self.source!r}: {self.describe()})"


def load_web_security(path: Path | str | None) -> WebSecurity | None:
    """Read, validate and apply a web configuration file; None when no file is given.

    Raises ConfigError naming the file and the field (never a secret).
    """
    if path is None or str(path) == "":
        return None
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([f"{source}: file not found"]) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError([f"{source}: cannot read: {_reason(exc)}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_problem(exc, source)]) from None
    return WebSecurity(parse_web_config(data, source), source)


def parse_web_config(data: Any, source: str) -> WebConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: the top level must be a mapping"])
    try:
        return WebConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, WebConfig, source)) from None


def build_ssl_context(tls: TLSServerConfig, source: str = "web config") -> ssl.SSLContext:
    """A server-side context; ConfigError names the field whose file is unusable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.minimum_version = TLS_VERSIONS[tls.min_version]
        context.maximum_version = TLS_VERSIONS[tls.max_version]
    except (ValueError, ssl.SSLError):
        raise ConfigError(
            [f"{source}: tls_server_config.min_version: not available with this OpenSSL"]
        ) from None
    if context.minimum_version > context.maximum_version:
        raise ConfigError(
            [f"{source}: tls_server_config.max_version: must not be below min_version"]
        )
    if tls.prefer_server_cipher_suites:
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    _readable(tls.cert_file, "cert_file", source)
    _readable(tls.key_file, "key_file", source)
    try:
        # A password callback that fails: an encrypted key must not make
        # OpenSSL prompt on the terminal of a service.
        context.load_cert_chain(tls.cert_file, tls.key_file, password=_no_password)
    except (ssl.SSLError, ValueError, OSError, TypeError):
        raise ConfigError(
            [
                f"{source}: tls_server_config.cert_file/key_file: {tls.cert_file} and "
                f"{tls.key_file} are not a PEM certificate and its unencrypted private key"
            ]
        ) from None
    context.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    if tls.client_ca_file is not None:
        _readable(tls.client_ca_file, "client_ca_file", source)
        try:
            context.load_verify_locations(cafile=tls.client_ca_file)
        except (ssl.SSLError, ValueError, OSError):
            raise ConfigError(
                [
                    f"{source}: tls_server_config.client_ca_file: {tls.client_ca_file} "
                    "holds no PEM CA certificate"
                ]
            ) from None
    elif context.verify_mode != ssl.CERT_NONE:
        raise ConfigError(
            [
                f"{source}: tls_server_config.client_ca_file: needed to verify client "
                f"certificates ({tls.client_auth_type})"
            ]
        )
    return context


def _no_password() -> bytes:
    raise ValueError("encrypted private keys are not supported")


def _readable(path: Path, field: str, source: str) -> None:
    try:
        with path.open("rb"):
            pass
    except (OSError, ValueError) as exc:
        raise ConfigError(
            [f"{source}: tls_server_config.{field}: cannot read {path}: {_reason(exc)}"]
        ) from None


def _reason(exc: Exception) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__


class BasicAuth:
    """WSGI middleware: HTTP basic auth against bcrypt hashes.

    bcrypt is slow on purpose (about 60 ms at cost 10), so a successful check
    is remembered: as an HMAC of user and password under a key that lives only
    in this process, compared in constant time. Wrong passwords are never
    remembered and always cost a full bcrypt check, also for unknown users.
    """

    def __init__(
        self,
        app: WSGIApp,
        users: Mapping[str, SecretStr],
        realm: str = REALM,
        own_auth_prefixes: tuple[str, ...] = (),
    ) -> None:
        self._app = app
        # Paths whose app checks a bearer token of its own in the same
        # Authorization header (the task API); the router sends every path
        # under these prefixes to that app, so nothing else is let through.
        self._own_auth_prefixes = own_auth_prefixes
        self._hashes = {user: hashed.get_secret_value().encode() for user, hashed in users.items()}
        self._cache_key = os.urandom(32)
        self._verified: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._challenge = f'Basic realm="{realm}", charset="UTF-8"'

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith(self._own_auth_prefixes) or self.check(
            environ.get("HTTP_AUTHORIZATION", "")
        ):
            return self._app(environ, start_response)
        body = b"Unauthorized\n"
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "text/plain; charset=utf-8"),
                ("Content-Length", str(len(body))),
                ("WWW-Authenticate", self._challenge),
            ],
        )
        return [body]

    def check(self, header: str) -> bool:
        """True if `header` (an Authorization value) names a user and their password."""
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user_bytes, colon, password = decoded.partition(b":")
        if not colon:
            return False
        user = user_bytes.decode("utf-8", "replace")
        digest = hmac.new(self._cache_key, decoded, hashlib.sha256).digest()
        with self._lock:
            remembered = self._verified.get(user)
        if remembered is not None and hmac.compare_digest(remembered, digest):
            return True
        hashed = self._hashes.get(user)
        try:
            ok = bcrypt.checkpw(password, hashed or _DUMMY_HASH) and hashed is not None
        except ValueError:  # longer than bcrypt's 72 bytes, or a NUL byte
            ok = False
        if ok:
            with self._lock:
                self._verified[user] = digest
        return ok


def _with_headers(app: WSGIApp, headers: tuple[tuple[str, str], ...]) -> WSGIApp:
    def wrapped(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        def add_headers(status: str, response_headers: list[tuple[str, str]], *exc: Any) -> Any:
            return start_response(status, [*response_headers, *headers], *exc)

        return app(environ, add_headers)

    return wrapped
