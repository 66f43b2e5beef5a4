"""HTTP to the upstream API: one status request in, one `PollOutcome` out.

One `requests.Session` with a bounded connection pool serves every worker.
Redirects are never followed and poll paths are always joined to the
configured base, so the API key cannot be sent to another host. Bodies are
read with a size cap and an overall deadline: a huge or dripping body costs
at most `max_response_bytes` and `timeout_seconds`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

import requests
from pydantic import SecretStr
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from exporter import __version__
from exporter.config import check_poll_path
from exporter.model import OutcomeKind, PollOutcome, RateLimitInfo
from exporter.upstream.parse import InvalidResponse, parse_error_code, parse_status_body
from exporter.upstream.paths import check_no_dot_segments
from exporter.upstream.session import upstream_session

NOT_FOUND_CODE = "async_task_not_found"
_RETRY_AFTER_PARSER = Retry(total=0)


class _BodyTooLarge(Exception):
    pass


class _BodyTooSlow(Exception):
    pass


class UpstreamClient:
    def __init__(
        self,
        base_url: str,
        api_key: SecretStr,
        *,
        status_path: str = "/v1/images/generations/{task_id}",
        timeout_seconds: float = 10.0,
        max_response_bytes: int = 1_048_576,
        max_connections: int = 8,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        base = urlsplit(self.base_url)
        self._origin = (base.scheme, base.netloc)
        self._status_path = status_path
        self._timeout = timeout_seconds
        self._max_bytes = max_response_bytes
        self._session = upstream_session(max_connections)
        self._session.headers.update(
            {
                "Authorization": f"Bearer {api_key.get_secret_value()}",
                "Accept": "application/json",
                "User-Agent": f"lemondata-exporter/{__version__}",
            }
        )

    def close(self) -> None:
        self._session.close()

    def status_url(self, task_id: str, poll_url: str | None) -> str:
        """The URL to poll; ValueError if it would leave api.base_url (defence in depth:
        discovery already refuses such poll_urls, but a store may hold older rows)."""
        path = poll_url or self._status_path.replace("{task_id}", quote(task_id, safe=""))
        check_poll_path(path)
        url = self.base_url + path
        parts = urlsplit(url)
        if (parts.scheme, parts.netloc) != self._origin:
            raise ValueError("the poll URL leaves api.base_url")
        check_no_dot_segments(parts.path)  # the last check before the key is sent
        return url

    def fetch_status(self, task_id: str, poll_url: str | None = None) -> PollOutcome:
        """One status request. Never raises for network or protocol trouble."""
        started = time.monotonic()
        try:
            url = self.status_url(task_id, poll_url)
        except ValueError:  # nothing is sent, so the key stays home
            return _failure(OutcomeKind.CLIENT_ERROR, started, "poll_url is not a path on the API")
        try:
            response = self._session.get(
                url,
                timeout=(min(self._timeout, 5.0), self._timeout),
                allow_redirects=False,
                stream=True,
            )
        except requests.ConnectTimeout:  # no connection at all: the API is not reachable
            return _failure(OutcomeKind.CONNECTION, started, "connect timed out")
        except requests.Timeout:  # connected, but no answer in time
            return _failure(OutcomeKind.TIMEOUT, started, "request timed out")
        except requests.RequestException as exc:
            return _failure(OutcomeKind.CONNECTION, started, _describe(exc))
        try:
            body = self._read_body(response, started + self._timeout)
        except _BodyTooLarge:
            return self._outcome(
                OutcomeKind.RESPONSE_TOO_LARGE, response, started, "body too large"
            )
        except _BodyTooSlow:
            return self._outcome(OutcomeKind.TIMEOUT, response, started, "body too slow")
        except requests.RequestException as exc:
            return self._outcome(OutcomeKind.CONNECTION, response, started, _describe(exc))
        finally:
            response.close()
        return self._outcome_of(response, body, started)

    def _read_body(self, response: requests.Response, deadline: float) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self._max_bytes:
            raise _BodyTooLarge
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                # read1 returns as soon as any bytes arrive, so a dripping body
                # is noticed at the deadline instead of after filling a buffer.
                chunk = response.raw.read1(65536, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > self._max_bytes:
                    raise _BodyTooLarge
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise _BodyTooSlow
        except ReadTimeoutError:
            raise _BodyTooSlow from None
        # A reset or a cut body arrives as urllib3's ProtocolError, which is no
        # OSError: it must become an outcome, not escape into the poll cycle.
        except (OSError, ValueError, Urllib3Error) as exc:
            raise requests.ConnectionError(str(exc)) from None
        return b"".join(chunks)

    def _outcome_of(self, response: requests.Response, body: bytes, started: float) -> PollOutcome:
        code = response.status_code
        if code == 200:
            try:
                report = parse_status_body(body)
            except InvalidResponse as exc:
                return self._outcome(OutcomeKind.INVALID_RESPONSE, response, started, str(exc))
            return self._outcome(OutcomeKind.REPORT, response, started, "", report=report)
        if 300 <= code < 400:
            return self._outcome(OutcomeKind.REDIRECT, response, started, "redirect not followed")
        if code in (401, 403):
            return self._outcome(OutcomeKind.UNAUTHORIZED, response, started, "API key rejected")
        if code == 402:
            return self._outcome(OutcomeKind.PAYMENT_REQUIRED, response, started, "quota exhausted")
        if code == 404 and parse_error_code(body) == NOT_FOUND_CODE:
            return self._outcome(OutcomeKind.NOT_FOUND, response, started, "task not found")
        if code == 429:
            return self._outcome(OutcomeKind.RATE_LIMITED, response, started, "rate limited")
        if code >= 500:
            return self._outcome(OutcomeKind.SERVER_ERROR, response, started, f"HTTP {code}")
        if 200 < code < 300:
            return self._outcome(OutcomeKind.INVALID_RESPONSE, response, started, f"HTTP {code}")
        return self._outcome(OutcomeKind.CLIENT_ERROR, response, started, f"HTTP {code}")

    @staticmethod
    def _outcome(
        kind: OutcomeKind,
        response: requests.Response,
        started: float,
        detail: str,
        **extra: object,
    ) -> PollOutcome:
        headers = response.headers
        return PollOutcome(
            kind=kind,
            code=response.status_code,
            retry_after=parse_retry_after(headers.get("Retry-After")),
            rate_limit=parse_rate_limit(headers),
            latency=time.monotonic() - started,
            detail=detail,
            **extra,  # type: ignore[arg-type]
        )


def _failure(kind: OutcomeKind, started: float, detail: str) -> PollOutcome:
    return PollOutcome(kind=kind, latency=time.monotonic() - started, detail=detail)


def _describe(exc: Exception) -> str:
    # The class name says enough and cannot carry headers (the key) along.
    return f"{type(exc).__name__}"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or HTTP date)."""
    if not value:
        return None
    try:
        seconds = _RETRY_AFTER_PARSER.parse_retry_after(value.strip())
    except Exception:  # urllib3 raises InvalidHeader; anything else is equally unusable
        return None
    return min(seconds, 3600.0)


def parse_rate_limit(headers: Mapping[str, str]) -> RateLimitInfo | None:
    values = [
        _number(headers.get(name))
        for name in ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
    ]
    if all(v is None for v in values):
        return None
    return RateLimitInfo(limit=values[0], remaining=values[1], reset=values[2])


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if 0 <= number < 1e12 else None
