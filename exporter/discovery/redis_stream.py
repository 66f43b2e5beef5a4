"""Tasks appended to a Redis Stream, read through a consumer group.

Applications (or the proxy, or another service) append one entry per task:

    XADD lemondata:tasks * task_id img_abc model flux-pro poll_url /v1/tasks/img_abc

Every replica reads the stream as one consumer of the same group, so each
entry is delivered to one replica. An entry is acknowledged only once its task
is in the store: on the next pass, the replica looks at the entries it was
given and not yet acknowledged, acknowledges those whose task the store has,
and offers the others again. Entries left unacknowledged by a replica that
died are taken over by another one after `claim_idle_seconds` (XAUTOCLAIM).
Adding a task is idempotent, so an entry offered twice is counted once.

Acknowledged entries are trimmed from the stream once every group reading it
is past them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import redis

from exporter.config import check_poll_path
from exporter.discovery.base import DiscoveryBatch
from exporter.model import DEFAULT_ACCOUNT, DiscoveredTask, valid_task_id

log = logging.getLogger(__name__)
TRIM_INTERVAL_SECONDS = 10.0
CONSUMER_CHECK_INTERVAL_SECONDS = 300.0
# A consumer with nothing pending and idle this long is a replica that is gone.
STALE_CONSUMER_SECONDS = 86400.0
MAX_MODEL_CHARS = 256

Entry = tuple[str, dict[str, str] | None]


def parse_entry(
    fields: dict[str, str] | None, accounts: Sequence[str] = (DEFAULT_ACCOUNT,)
) -> DiscoveredTask | str:
    """An entry's task, or why it cannot be used. `accounts`: the configured names,
    the first being the account of an entry without an `account` field."""
    if not fields:
        return "entry has no fields (deleted?)"
    task_id = fields.get("task_id") or fields.get("id")
    if not task_id or not valid_task_id(task_id):
        return "task_id missing or not valid"
    model = fields.get("model") or None
    if model is not None and len(model) > MAX_MODEL_CHARS:
        return "model too long"
    poll_url = fields.get("poll_url") or None
    if poll_url is not None:
        try:
            check_poll_path(poll_url)
        except ValueError as exc:
            return f"poll_url {exc}"
    account = fields.get("account") or accounts[0]
    if account not in accounts:  # never echoed: it may be anything, even a key
        return "account is not one of the configured accounts"
    return DiscoveredTask(task_id, "", model=model, poll_url=poll_url, account=account)


class RedisStreamSource:
    """A `DiscoverySource` reading one stream as one consumer of a group."""

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        known: Callable[[list[str]], set[str]],
        *,
        name: str = "stream",
        accounts: Sequence[str] = (DEFAULT_ACCOUNT,),
        claim_idle_seconds: float = 30.0,
        batch_size: int = 500,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.name = name
        self._accounts = tuple(accounts)
        self._known = known  # which of these task IDs the store has
        self._claim_idle_ms = int(claim_idle_seconds * 1000)
        self._batch = batch_size
        self._clock = clock
        self._group_ready = False
        self._claim_cursor = "0-0"
        self._last_trim = -TRIM_INTERVAL_SECONDS
        self._last_consumer_check = clock()

    def discover(self, state: str | None) -> DiscoveryBatch:
        self._ensure_group()
        errors: list[str] = []
        offered: list[DiscoveredTask] = []
        # Entries given to this consumer earlier (or claimed from a dead one
        # now): acknowledge those whose task is stored, offer the others again.
        earlier = self._read("0")
        earlier += self._autoclaim()
        acked = self._settle(earlier, offered, errors)
        # Then new entries.
        for entry_id, fields in self._read(">"):
            task = parse_entry(fields, self._accounts)
            if isinstance(task, str):
                errors.append(f"{self.stream} entry {entry_id}: {task}")
                self._ack([entry_id])
                continue
            offered.append(_named(task, self.name))
        if acked:
            self._maybe_trim()
        self._maybe_forget_consumers()
        return DiscoveryBatch(tasks=_unique(offered), errors=errors)

    def _ensure_group(self) -> None:
        if self._group_ready:
            return
        try:
            # From the start: entries appended before the first replica ran count too.
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
            log.info("created consumer group %s on stream %s", self.group, self.stream)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def _read(self, start: str) -> list[Entry]:
        try:
            reply = cast(
                list[Any],
                self.client.xreadgroup(
                    self.group, self.consumer, {self.stream: start}, count=self._batch
                ),
            )
        except redis.ResponseError as exc:
            if "NOGROUP" in str(exc):  # the stream or group was deleted meanwhile
                self._group_ready = False
                return []
            raise
        entries: list[Entry] = []
        for _stream, items in reply or []:
            entries += [(entry_id, fields or None) for entry_id, fields in items]
        return entries

    def _autoclaim(self) -> list[Entry]:
        reply: list[Any] = self.client.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            self._claim_idle_ms,
            start_id=self._claim_cursor,
            count=self._batch,
        )
        self._claim_cursor = reply[0]
        claimed = [(entry_id, fields or None) for entry_id, fields in reply[1]]
        if claimed:
            log.info(
                "took over %d stream entr%s left by another replica",
                len(claimed),
                "y" if len(claimed) == 1 else "ies",
            )
        gone = reply[2] if len(reply) > 2 else []
        if gone:  # deleted from the stream while pending: nothing to add
            self._ack(list(gone))
        return claimed

    def _settle(
        self, entries: list[Entry], offered: list[DiscoveredTask], errors: list[str]
    ) -> bool:
        if not entries:
            return False
        tasks: dict[str, DiscoveredTask] = {}
        done: list[str] = []
        for entry_id, fields in entries:
            task = parse_entry(fields, self._accounts)
            if isinstance(task, str):
                errors.append(f"{self.stream} entry {entry_id}: {task}")
                done.append(entry_id)
            else:
                tasks[entry_id] = _named(task, self.name)
        stored = self._known([task.task_id for task in tasks.values()])
        for entry_id, task in tasks.items():
            if task.task_id in stored:
                done.append(entry_id)
            else:
                offered.append(task)
        self._ack(done)
        return bool(done)

    def _ack(self, entry_ids: list[str]) -> None:
        if entry_ids:
            self.client.xack(self.stream, self.group, *entry_ids)

    def _maybe_trim(self) -> None:
        """Drop entries every group has read and acknowledged."""
        now = self._clock()
        if now - self._last_trim < TRIM_INTERVAL_SECONDS:
            return
        self._last_trim = now
        floor: tuple[int, int] | None = None
        groups: list[dict[str, Any]] = self.client.xinfo_groups(self.stream)
        for group in groups:
            oldest = _entry_id(group["last-delivered-id"])
            if int(group.get("pending") or 0):
                summary: dict[str, Any] = self.client.xpending(self.stream, group["name"])
                if summary.get("min"):
                    oldest = min(oldest, _entry_id(summary["min"]))
            floor = oldest if floor is None else min(floor, oldest)
        if floor is not None and floor > (0, 0):
            self.client.xtrim(self.stream, minid=f"{floor[0]}-{floor[1]}", approximate=False)

    def _maybe_forget_consumers(self) -> None:
        now = self._clock()
        if now - self._last_consumer_check < CONSUMER_CHECK_INTERVAL_SECONDS:
            return
        self._last_consumer_check = now
        consumers: list[dict[str, Any]] = self.client.xinfo_consumers(self.stream, self.group)
        for consumer in consumers:
            name = consumer["name"]
            idle = int(consumer.get("idle") or 0) / 1000
            if (
                name != self.consumer
                and not consumer.get("pending")
                and idle > (STALE_CONSUMER_SECONDS)
            ):
                self.client.xgroup_delconsumer(self.stream, self.group, name)


def _named(task: DiscoveredTask, source: str) -> DiscoveredTask:
    return DiscoveredTask(
        task.task_id, source, model=task.model, poll_url=task.poll_url, account=task.account
    )


def _unique(tasks: Iterable[DiscoveredTask]) -> list[DiscoveredTask]:
    seen: dict[str, DiscoveredTask] = {}
    for task in tasks:
        seen.setdefault(task.task_id, task)
    return list(seen.values())


def _entry_id(value: str) -> tuple[int, int]:
    milliseconds, _, sequence = value.partition("-")
    return int(milliseconds), int(sequence or 0)


def store_knows(get: Callable[[str], object | None]) -> Callable[[list[str]], set[str]]:
    """`known` for any store: one `get` per task ID."""

    def known(task_ids: list[str]) -> set[str]:
        return {task_id for task_id in task_ids if get(task_id) is not None}

    return known
