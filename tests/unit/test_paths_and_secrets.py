"""Dot segments at every entry, and Redis URL secrets: pure functions, no network."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from exporter.config import ConfigError, parse_config, read_redis_password
from exporter.discovery.file import FileSource
from exporter.discovery.redis_stream import parse_entry
from exporter.model import DiscoveredTask
from exporter.proxy.register import created_task
from exporter.store.redis import redact_url, url_secrets
from exporter.upstream.client import UpstreamClient
from exporter.upstream.paths import dot_segment_problem

DOTTED = [
    "/..",
    "/../admin/secret",
    "/v1/..",
    "/v1/./x",
    "/.%2e/x",
    "/%2e%2e/x",
    "/%2E%2E/x",
    "/%2e./x",
    "/.%2E/x",
    "/v1/..%2fadmin",
    "/v1/..%2Fadmin",
    "/v1%2f..%2fadmin",
    "/v1/%252e%252e/admin",
    "/v1/%25252e%25252e/admin",
    "/v1/..;/admin",
    "/v1/.;x/admin",
    "/v1\\..\\admin",
    "/v1/%5c..%5cadmin",
    "/v1/x%5Cy",
]
FINE = ["/v1/tasks/abc", "/v1/a..b", "/v1/.well-known", "/v1/x.y/z", "/v1/tasks/t?q=../x", "/"]


@pytest.mark.parametrize("path", DOTTED)
def test_dot_segments_are_found(path: str) -> None:
    assert dot_segment_problem(path) is not None


@pytest.mark.parametrize("path", FINE)
def test_ordinary_paths_pass(path: str) -> None:
    assert dot_segment_problem(path) is None


@pytest.mark.parametrize("path", ["/../admin/secret", "/v1/.%2e/x", "/v1/%2E%2E/x"])
def test_every_entry_refuses_them(path: str, tmp_path: Path) -> None:
    # The config: a static task's poll_url, the status path, the base URL's path.
    for data in (
        {"tasks": [{"id": "t1", "poll_url": path}]},
        {"api": {"status_path": path + "/{task_id}"}},
        {"proxy": {"create_paths": [path]}},
    ):
        with pytest.raises(ConfigError, match="segments"):
            parse_config(data, "c.yml")
    with pytest.raises(ConfigError, match=r"api\.base_url: the path must not"):
        parse_config({"api": {"base_url": "http://host/lemondata/../admin"}}, "c.yml")
    # A watched file, the Redis stream, the proxy's create answers.
    source = FileSource(tmp_path / "tasks.jsonl")
    problem = source._parse_line(b'{"task_id": "t1", "poll_url": "%s"}' % path.encode())
    assert isinstance(problem, str) and "segments" in problem
    entry = parse_entry({"task_id": "t1", "poll_url": path})
    assert isinstance(entry, str) and "segments" in entry
    task, problem = created_task(None, b'{"task_id": "t1", "poll_url": "%s"}' % path.encode(), "")
    assert task.poll_url is None and problem is not None
    # The client, before it sends the key (a store may hold rows from before).
    client = UpstreamClient("http://api.example/lemondata", SecretStr("k" * 20))
    with pytest.raises(ValueError):
        client.status_url("t1", path)
    assert client.fetch_status("t1", path).detail == "poll_url is not a path on the API"


def test_a_base_url_path_without_dots_is_fine() -> None:
    config = parse_config({"api": {"base_url": "http://host/lemondata"}}, "c.yml")
    client = UpstreamClient(config.api.base_url, SecretStr("k" * 20))
    assert client.status_url("t1", "/v1/tasks/t1") == "http://host/lemondata/v1/tasks/t1"
    assert FileSource(Path("x"))._parse_line(b'{"task_id": "t1", "poll_url": "/v1/a..b"}') == (
        DiscoveredTask("t1", "file", poll_url="/v1/a..b")
    )


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("redis://:pw-in-userinfo@host:6379/0", "pw-in-userinfo"),
        ("redis://user:pw-with-user@host/0", "pw-with-user"),
        ("redis://host:6379/0?password=pw-in-query", "pw-in-query"),
        ("redis://host/0?socket_timeout=5&Password=pw-capital&db=1", "pw-capital"),
        ("rediss://host/0?ssl_password=pw-tls-key", "pw-tls-key"),
        ("unix:///run/redis.sock?db=0&password=pw-unix", "pw-unix"),
    ],
)
def test_redis_url_secrets_are_masked(url: str, secret: str) -> None:
    shown = redact_url(url)
    assert secret not in shown and "***" in shown
    assert secret in url_secrets(url)


def test_redis_urls_without_secrets_are_shown_as_they_are() -> None:
    url = "redis://host:6379/0?socket_timeout=5"
    assert redact_url(url) == url and url_secrets(url) == []


def test_the_redis_password_from_a_file_or_the_environment(tmp_path: Path) -> None:
    config = parse_config({}, "c.yml")
    assert read_redis_password(config, {}) is None
    found = read_redis_password(config, {"LEMONDATA_REDIS_PASSWORD": " from-env \n"})
    assert found is not None and found.get_secret_value() == "from-env"
    secret_file = tmp_path / "redis-password"
    secret_file.write_text("from-file\n")
    config = parse_config({"store": {"redis_password_file": str(secret_file)}}, "c.yml")
    found = read_redis_password(config, {"LEMONDATA_REDIS_PASSWORD": "from-env"})
    assert found is not None and found.get_secret_value() == "from-file"
    secret_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        read_redis_password(config, {})
    missing = parse_config({"store": {"redis_password_file": str(tmp_path / "no")}}, "c.yml")
    with pytest.raises(ConfigError, match="cannot read"):
        read_redis_password(missing, {})
