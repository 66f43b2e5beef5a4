"""What the config's store backend decides: the task store, the request budget,
and the Redis Stream discovery source (see docs/deployment.md).

With `store.backend: sqlite` (the default) the agent is alone: a SQLite file
and an in-process budget. With `redis`, every replica shares one store, one
request budget and one consumer group.
"""

from __future__ import annotations

import redis

from exporter.config import Config, ConfigError, read_redis_password
from exporter.discovery.base import DiscoverySource
from exporter.discovery.redis_stream import RedisStreamSource, store_knows
from exporter.logsetup import add_secret
from exporter.poller.ratelimit import Budget, RequestBudget
from exporter.poller.shared_budget import SharedRequestBudget
from exporter.store.base import TaskStore
from exporter.store.redis import RedisTaskStore, connect, default_replica_id, url_secrets
from exporter.store.sqlite import SqliteTaskStore, StoreError


def replica_id(config: Config) -> str:
    return config.store.replica_id or default_replica_id()


def open_store(config: Config) -> TaskStore:
    """The configured store; StoreError if it cannot be opened or reached."""
    store = config.store
    if store.backend == "redis":
        assert store.redis_url is not None  # checked with the config
        return RedisTaskStore(
            store.redis_url,
            prefix=store.redis_prefix,
            replica_id=replica_id(config),
            lease_seconds=store.lease_seconds,
            client=redis_client(config, store.redis_url),
        )
    return SqliteTaskStore(store.path)


def redis_client(config: Config, url: str) -> redis.Redis:
    """A client for `url`, with the password from store.redis_password_file or
    $LEMONDATA_REDIS_PASSWORD when the URL has none; every secret it may show is
    masked in the log first. StoreError if Redis cannot be reached."""
    try:
        password = read_redis_password(config)
    except ConfigError as exc:
        raise StoreError(str(exc)) from None
    for secret in [*url_secrets(url), *([password.get_secret_value()] if password else [])]:
        add_secret(secret)
    return connect(url, password=password.get_secret_value() if password else None)


def request_budget(config: Config, store: TaskStore) -> Budget:
    """With Redis, `polling.requests_per_second` is the budget of the whole group."""
    rate = config.polling.requests_per_second
    if isinstance(store, RedisTaskStore):
        return SharedRequestBudget(store.client, rate, prefix=store.prefix)
    return RequestBudget(rate)


def stream_sources(config: Config, store: TaskStore) -> list[DiscoverySource]:
    stream = config.discovery.redis_stream
    if stream is None:
        return []
    url = stream.redis_url or config.store.redis_url
    assert url is not None  # checked with the config
    if isinstance(store, RedisTaskStore) and url == config.store.redis_url:
        client = store.client
    else:
        client = redis_client(config, url)
    known = store.known if isinstance(store, RedisTaskStore) else store_knows(store.get)
    return [
        RedisStreamSource(
            client,
            stream.stream,
            stream.group,
            replica_id(config),
            known,
            name=stream.name,
            claim_idle_seconds=stream.claim_idle_seconds,
            batch_size=stream.batch_size,
        )
    ]
