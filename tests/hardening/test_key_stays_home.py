"""The API key goes to `api.base_url` and nowhere else.

A trap server stands in for any other host: redirects point at it, task files
and configs name it in poll URLs, base URLs try to smuggle it in. It must
never receive a single request.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from exporter.config import ConfigError, parse_config
from exporter.model import OutcomeKind
from exporter.upstream.client import UpstreamClient
from tests.harness import ExporterProcess, FakeUpstream, Handler, Request, serving, total, wait_for
from tests.harness.upstream import Respond

KEY = "sk-must-stay-home-0123456789abcdef"
REDIRECTS = (301, 302, 303, 307, 308)


def answer_or_redirect(location: str | None) -> Respond:
    """Answer 200 (`location` None), or redirect to `location` with every code in turn."""

    def respond(request: Request, handler: Handler) -> None:
        headers = [("Content-Type", "application/json")]
        if location is None:
            handler.send(200, json.dumps({"status": "completed", "created": 1}).encode(), headers)
            return
        code = REDIRECTS[len(handler.server.requests) % len(REDIRECTS)]
        handler.send(code, b"{}", [("Location", location + request.path), *headers])

    return respond


@pytest.fixture
def trap() -> Iterator[FakeUpstream]:
    with serving(answer_or_redirect(None)) as server:
        yield server


@pytest.fixture
def redirector(trap: FakeUpstream) -> Iterator[FakeUpstream]:
    with serving(answer_or_redirect(trap.url)) as server:
        yield server


def trap_host(trap: FakeUpstream) -> str:
    return trap.url.removeprefix("http://")


@pytest.mark.integration
def test_redirects_and_foreign_poll_urls(
    tmp_path: Path, trap: FakeUpstream, redirector: FakeUpstream
) -> None:
    host = trap_host(trap)
    lines = [f"img_plain{n}" for n in range(5)]
    lines += [
        json.dumps({"task_id": "img_ok", "poll_url": "/v1/tasks/img_ok@" + host}),
        json.dumps({"task_id": "img_abs", "poll_url": f"{trap.url}/v1/tasks/img_abs"}),
        json.dumps({"task_id": "img_rel", "poll_url": f"//{host}/v1/tasks/img_rel"}),
        json.dumps({"task_id": "img_bs", "poll_url": f"/\\{host}/v1/tasks/img_bs"}),
        json.dumps({"task_id": "img_sch", "poll_url": f"http:/{host}/v1/tasks/img_sch"}),
        json.dumps({"task_id": "img_sp", "poll_url": f" {trap.url}/v1/tasks/img_sp"}),
        json.dumps({"task_id": "img_tab", "poll_url": f"/\t/{host}/v1/tasks/img_tab"}),
    ]
    (tmp_path / "tasks.jsonl").write_text("\n".join(lines) + "\n")
    config = {
        "api": {"base_url": redirector.url, "timeout_seconds": 2},
        "polling": {
            "cycle_interval_seconds": 0.2,
            "task_interval_seconds": 0.2,
            "requests_per_second": 50,
            "backoff_base_seconds": 0.1,
            "backoff_max_seconds": 0.3,
        },
        "store": {"path": str(tmp_path / "store.db")},
        "discovery": {"interval_seconds": 0.2, "files": [{"path": str(tmp_path / "tasks.jsonl")}]},
        "log_level": "debug",
    }
    exporter = ExporterProcess(tmp_path, config, KEY).start()
    try:
        wait_for(
            lambda: total(exporter.metrics(), "lemondata_api_errors_total", kind="redirect") >= 30,
            30,
            "redirects",
        )
        samples = exporter.metrics()
    finally:
        assert exporter.terminate() == 0
    assert trap.requests == []
    assert total(samples, "lemondata_tasks_discovered_total") == 6
    assert total(samples, "lemondata_discovery_errors_total") == 6
    assert total(samples, "lemondata_api_up") == 0
    # Only the configured base saw the key.
    assert redirector.requests
    assert all(dict(r.headers)["Authorization"] == f"Bearer {KEY}" for r in redirector.requests)
    assert exporter.log_text().count("redirect, which is never followed") == 1


@pytest.mark.parametrize(
    "base_url",
    [
        "http://{redirector}@{trap}",
        "http://user:pw@{trap}",
        "http://{redirector}\t@{trap}",
        "http://{redirector}\\@{trap}",
        "http://{redirector}%40{trap}",
        "http://{redirector} @{trap}",
        "http://{trap}#@{redirector}",
        "http://{trap}?@{redirector}",
        "ftp://{trap}",
        "//{trap}",
        "{trap}",
    ],
)
def test_base_url_tricks_are_refused(base_url: str) -> None:
    url = base_url.format(trap="127.0.0.1:2", redirector="127.0.0.1:1")
    with pytest.raises(ConfigError, match=r"api\.base_url: "):
        parse_config({"api": {"base_url": url}}, "config.yaml")


@pytest.mark.parametrize(
    "poll_url",
    ["http://{trap}/v1/tasks/x", "//{trap}/v1/tasks/x", "/\\{trap}/x", "x", "/a#b", "/a b"],
)
def test_static_tasks_with_foreign_poll_urls_are_refused(poll_url: str) -> None:
    task = {"id": "img_1", "poll_url": poll_url.format(trap="127.0.0.1:2")}
    with pytest.raises(ConfigError, match=r"tasks\[0\]\.poll_url: "):
        parse_config({"tasks": [task]}, "config.yaml")


@pytest.mark.integration
def test_accepted_base_urls_stay_on_their_host(
    trap: FakeUpstream, redirector: FakeUpstream
) -> None:
    """A base URL with a path that looks like a host: still one host. Dot segments,
    which could climb out of the base URL's path, are refused in both places."""
    host = trap_host(trap)
    for dotted in (f"{redirector.url}/..//{host}", f"{redirector.url}/prefix/../../{host}/"):
        with pytest.raises(ConfigError, match="segments"):
            parse_config({"api": {"base_url": dotted}}, "config.yaml")
    config = parse_config({"api": {"base_url": f"{redirector.url}//{host}"}}, "config.yaml")
    client = UpstreamClient(config.api.base_url, SecretStr(KEY), timeout_seconds=2)
    try:
        for poll_url in (None, "/v1/tasks/img_1"):
            assert client.fetch_status("img_1", poll_url).kind is OutcomeKind.REDIRECT
        refused = client.fetch_status("img_1", f"/..//{host}/v1/tasks/img_1")
        assert refused.kind is OutcomeKind.CLIENT_ERROR and refused.code is None
    finally:
        client.close()
    assert trap.requests == []
    assert len(redirector.requests) == 2


@pytest.mark.integration
def test_the_client_refuses_poll_urls_that_leave_the_base(
    trap: FakeUpstream, redirector: FakeUpstream
) -> None:
    """Defence in depth: a poll_url that slipped past discovery (an old store row)."""
    client = UpstreamClient(redirector.url, SecretStr(KEY), timeout_seconds=2)
    try:
        for poll_url in (f"{trap.url}/x", f"//{trap_host(trap)}/x", f"@{trap_host(trap)}/x", "x"):
            outcome = client.fetch_status("img_1", poll_url)
            assert outcome.kind is OutcomeKind.CLIENT_ERROR
            assert outcome.code is None
    finally:
        client.close()
    assert trap.requests == [] and redirector.requests == []
