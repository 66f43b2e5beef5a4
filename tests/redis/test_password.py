"""The Redis password from the environment or a file, never shown in a message."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from exporter.backends import open_store
from exporter.config import parse_config
from exporter.store.redis import RedisTaskStore
from exporter.store.sqlite import StoreError
from tests.redis.server import RedisServer

pytestmark = pytest.mark.integration
PASSWORD = "redis-secret-pw-0123456789"


@pytest.fixture
def protected(redis_server: RedisServer) -> Iterator[str]:
    """The shared test server with a password, for one test."""
    admin = redis_server.client()
    admin.config_set("requirepass", PASSWORD)
    admin.close()
    yield redis_server.url
    admin = redis.Redis.from_url(redis_server.url, password=PASSWORD)
    admin.config_set("requirepass", "")
    admin.close()


def config_for(url: str, **store: object) -> object:
    return parse_config({"store": {"backend": "redis", "redis_url": url, **store}}, "c.yml")


def test_the_password_comes_from_the_environment_or_a_file(
    protected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEMONDATA_REDIS_PASSWORD", PASSWORD)
    store = open_store(config_for(protected))  # type: ignore[arg-type]
    assert isinstance(store, RedisTaskStore) and store.client.ping()
    store.close()
    monkeypatch.delenv("LEMONDATA_REDIS_PASSWORD")
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    store = open_store(config_for(protected, redis_password_file=str(secret)))  # type: ignore[arg-type]
    assert isinstance(store, RedisTaskStore) and store.client.ping()
    store.close()


def test_a_wrong_password_in_the_url_is_never_shown(protected: str) -> None:
    for url in (
        protected.replace("redis://", "redis://:wrong-pw-in-userinfo@"),
        protected + "?password=wrong-pw-in-query",
    ):
        with pytest.raises(StoreError) as caught:
            open_store(config_for(url))  # type: ignore[arg-type]
        assert "wrong-pw" not in str(caught.value)
        assert "***" in str(caught.value)
