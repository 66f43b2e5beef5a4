"""What the config's store backend decides: the task store, the request budget,
and the Redis Stream discovery source (see docs/deployment.md).

With `store.backend: sqlite` (the default) the agent is alone: a SQLite file
and an in-process budget. With `redis`, every replica shares one store, one
request budget and one consumer group.

`open_backend` states what the chosen backend offers in a `Backend`, so that
no caller has to find out by looking at the store's type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis

from exporter.config import Config, ConfigError, read_redis_password
from exporter.discovery.base import DiscoverySource
from exporter.discovery.redis_stream import RedisStreamSource, store_knows
from exporter.logsetup import add_secret
from exporter.poller.ratelimit import Budget, RequestBudget
from exporter.poller.shared_budget import SharedRequestBudget
from exporter.store.base import ModelStatsStore, TaskStore
from exporter.store.redis import RedisTaskStore, connect, default_replica_id, url_secrets
from exporter.store.sqlite import SqliteTaskStore, StoreError


@dataclass(frozen=True)
class Backend:
    """The opened store and what comes with it."""

    store: TaskStore
    budget: Budget  # with Redis, `polling.requests_per_second` is the group's
    # The budget of one of several accounts (name, requests per second): with
    # Redis, shared by the group too, each account's under its own key.
    account_budget: Callable[[str, float], Budget]
    # Whether this replica exports the store-wide gauges now (a lease with Redis).
    reports_store_gauges: Callable[[], bool]
    known: Callable[[list[str]], set[str]]  # which of these task IDs the store has
    model_stats: ModelStatsStore | None = None  # where adaptive polling keeps what it learnt
    redis_url: str | None = None  # the shared store's Redis, and its client
    redis_client: redis.Redis | None = None


def account_budget_key(account: str) -> str:
    """The Redis key of an account's shared budget (`budget` is the single account's)."""
    return f"acct:{account}:budget"


def replica_id(config: Config) -> str:
    return config.store.replica_id or default_replica_id()


def open_backend(config: Config) -> Backend:
    """The configured backend; StoreError if its store cannot be opened or reached."""
    rate = config.polling.requests_per_second
    store = config.store
    if store.backend == "redis":
        assert store.redis_url is not None  # checked with the config
        shared = RedisTaskStore(
            store.redis_url,
            prefix=store.redis_prefix,
            replica_id=replica_id(config),
            lease_seconds=store.lease_seconds,
            prune_duty_cycle=store.prune_duty_cycle,
            client=redis_client(config, store.redis_url),
        )
        return Backend(
            store=shared,
            budget=SharedRequestBudget(shared.client, rate, prefix=shared.prefix),
            account_budget=lambda name, rps: SharedRequestBudget(
                shared.client, rps, prefix=shared.prefix, key=account_budget_key(name)
            ),
            reports_store_gauges=shared.reports_store_gauges,
            known=shared.known,
            model_stats=shared,
            redis_url=store.redis_url,
            redis_client=shared.client,
        )
    local = SqliteTaskStore(
        store.path,
        per_account=bool(config.accounts),
        prune_duty_cycle=store.prune_duty_cycle,
    )
    return Backend(
        store=local,
        budget=RequestBudget(rate),
        account_budget=lambda name, rps: RequestBudget(rps),
        reports_store_gauges=lambda: True,  # a SQLite file belongs to one agent
        known=store_knows(local.get),
        model_stats=local,
    )


def open_store(config: Config) -> TaskStore:
    """The configured store; StoreError if it cannot be opened or reached."""
    return open_backend(config).store


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


def stream_sources(config: Config, backend: Backend) -> list[DiscoverySource]:
    stream = config.discovery.redis_stream
    if stream is None:
        return []
    url = stream.redis_url or config.store.redis_url
    assert url is not None  # checked with the config
    if backend.redis_client is not None and url == backend.redis_url:
        client = backend.redis_client
    else:
        client = redis_client(config, url)
    return [
        RedisStreamSource(
            client,
            stream.stream,
            stream.group,
            replica_id(config),
            backend.known,
            name=stream.name,
            accounts=config.account_names,
            claim_idle_seconds=stream.claim_idle_seconds,
            batch_size=stream.batch_size,
        )
    ]
