import json

import pytest
import requests
import responses
from pydantic import SecretStr

from exporter.model import OutcomeKind
from exporter.upstream.client import UpstreamClient, parse_rate_limit, parse_retry_after

BASE = "https://api.test"


@pytest.fixture
def client() -> UpstreamClient:
    return UpstreamClient(BASE, SecretStr("sk-secret"), max_response_bytes=2048)


@responses.activate
def test_report_and_rate_limit_headers(client: UpstreamClient) -> None:
    responses.get(
        f"{BASE}/v1/images/generations/img_1",
        json={"status": "processing"},
        headers={
            "X-RateLimit-Limit": "1000",
            "X-RateLimit-Remaining": "998",
            "X-RateLimit-Reset": "1706000060",
        },
    )
    outcome = client.fetch_status("img_1")
    assert outcome.kind is OutcomeKind.REPORT and outcome.code == 200
    assert outcome.report is not None and outcome.report.status == "processing"
    assert outcome.rate_limit is not None and outcome.rate_limit.remaining == 998
    assert responses.calls[0].request.headers["Authorization"] == "Bearer sk-secret"


@responses.activate
def test_poll_url_is_a_path_on_the_base(client: UpstreamClient) -> None:
    responses.get(f"{BASE}/v1/tasks/ld_1", json={"status": "pending"})
    assert client.fetch_status("ld_1", "/v1/tasks/ld_1").kind is OutcomeKind.REPORT


@pytest.mark.parametrize(
    ("status", "payload", "kind"),
    [
        (404, {"error": {"code": "async_task_not_found"}}, OutcomeKind.NOT_FOUND),
        (404, {"error": {"code": "something_else"}}, OutcomeKind.CLIENT_ERROR),
        (401, {"error": {"code": "invalid_api_key"}}, OutcomeKind.UNAUTHORIZED),
        (402, {"error": {"code": "insufficient_quota"}}, OutcomeKind.PAYMENT_REQUIRED),
        (429, {"error": {"code": "rate_limit_exceeded"}}, OutcomeKind.RATE_LIMITED),
        (503, {}, OutcomeKind.SERVER_ERROR),
        (400, {}, OutcomeKind.CLIENT_ERROR),
        (200, {"no": "status"}, OutcomeKind.INVALID_RESPONSE),
    ],
)
@responses.activate
def test_http_outcomes(
    client: UpstreamClient, status: int, payload: object, kind: OutcomeKind
) -> None:
    responses.get(
        f"{BASE}/v1/images/generations/t", json=payload, status=status, headers={"Retry-After": "7"}
    )
    outcome = client.fetch_status("t")
    assert outcome.kind is kind
    assert outcome.code == status
    if kind is OutcomeKind.RATE_LIMITED:
        assert outcome.retry_after == 7


@responses.activate
def test_redirect_is_not_followed(client: UpstreamClient) -> None:
    responses.get(
        f"{BASE}/v1/images/generations/t",
        status=302,
        headers={"Location": "https://evil.test/steal"},
    )
    assert client.fetch_status("t").kind is OutcomeKind.REDIRECT
    assert len(responses.calls) == 1


@responses.activate
def test_body_over_the_cap_is_refused(client: UpstreamClient) -> None:
    responses.get(
        f"{BASE}/v1/images/generations/t",
        body=json.dumps({"status": "failed", "error": "x" * 10_000}),
    )
    assert client.fetch_status("t").kind is OutcomeKind.RESPONSE_TOO_LARGE


@responses.activate
def test_network_errors_do_not_raise_or_leak_the_key(client: UpstreamClient) -> None:
    responses.get(f"{BASE}/v1/images/generations/a", body=requests.ConnectionError("sk-secret"))
    responses.get(f"{BASE}/v1/images/generations/b", body=requests.ReadTimeout())
    first = client.fetch_status("a")
    assert first.kind is OutcomeKind.CONNECTION and "sk-secret" not in first.detail
    assert client.fetch_status("b").kind is OutcomeKind.TIMEOUT


def test_task_id_is_quoted_into_the_path(client: UpstreamClient) -> None:
    assert client.status_url("a:b c", None) == f"{BASE}/v1/images/generations/a%3Ab%20c"
    with pytest.raises(ValueError, match="segments"):  # %2F..%2F decodes to /../
        client.status_url("a/../b", None)


def test_header_parsing() -> None:
    assert parse_retry_after("3") == 3
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_rate_limit({}) is None
    info = parse_rate_limit({"X-RateLimit-Remaining": "-1", "X-RateLimit-Limit": "60"})
    assert info is not None and info.remaining is None and info.limit == 60
