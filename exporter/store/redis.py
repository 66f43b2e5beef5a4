"""A task store in Redis, shared by several replicas of the agent.

Same behaviour as the SQLite store (`store/sqlite.py`), plus what a group of
replicas needs:

- Every write that touches more than one key is one Lua script, so it is
  atomic: adding tasks together with a source's position, applying a poll's
  result, pruning.
- `due` leases the tasks it returns to this replica for `lease_seconds`; the
  other replicas skip them until the lease runs out or the result is stored.
  A replica that dies (SIGKILL) leaves its leased tasks to the others once
  the lease has run out.
- The terminal record is a compare-and-set inside the `apply` script: only
  the first replica to store a task's finish gets True back, and only it
  records the metric. The task remembers that replica (`finished_by`).
- `SharedRequestBudget` is the poll cycle's request budget kept in Redis
  (GCRA), so the whole group stays within one account's rate.

Layout under the prefix (default `lemondata:`): `task:<id>` (hash),
`due` (zset of unfinished tasks by next poll time), `finished` (zset by
finish time), `active:<status>` (zset by creation time, for the oldest-age
gauge), `count` (hash of tasks by status), `models` (set), `source_state`
(hash), `finish_totals` (hash: finishes per label set, counted by the
`apply` script, never pruned), `processing_by_model:<model>` (zset of the
tasks in processing by creation time, '' for no model) and `processing_models`
(set of those models), `budget`, `budget:pause`. Redis Cluster is not supported (the
scripts touch keys they compute); a single Redis, or one behind Sentinel, is.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from exporter.model import ACTIVE_STATUSES, DiscoveredTask, Status, Task, TaskUpdate
from exporter.poller.ratelimit import RequestBudget
from exporter.store.base import FinishLabels, ModelSummary, TaskEvent
from exporter.store.sqlite import StoreError

PRUNE_BATCH = 1000
_ACTIVE = {status.value for status in ACTIVE_STATUSES}

_ADD = """
local p, now = ARGV[1], ARGV[2]
local added = {}
for i = 5, #ARGV, 4 do
  local id = ARGV[i]
  local key = p .. 'task:' .. id
  if redis.call('EXISTS', key) == 0 then
    redis.call('HSET', key, 'task_id', id, 'source', ARGV[i + 1], 'status', 'unknown',
      'discovered_at', now, 'next_poll_at', now, 'attempts', '0', 'consecutive_errors', '0')
    if ARGV[i + 2] ~= '' then
      redis.call('HSET', key, 'model', ARGV[i + 2])
      redis.call('SADD', p .. 'models', ARGV[i + 2])
    end
    if ARGV[i + 3] ~= '' then redis.call('HSET', key, 'poll_url', ARGV[i + 3]) end
    redis.call('ZADD', p .. 'due', now, id)
    redis.call('ZADD', p .. 'ids', 0, id)
    redis.call('ZADD', p .. 'active:unknown', now, id)
    redis.call('HINCRBY', p .. 'count', 'unknown', 1)
    added[#added + 1] = (i - 5) / 4
  end
end
if ARGV[3] ~= '' then redis.call('HSET', p .. 'source_state', ARGV[3], ARGV[4]) end
return added
"""

# Due tasks not leased to another replica, most overdue first; leases them to us.
_DUE = """
local p, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local me, lease_until = ARGV[4], ARGV[5]
local taken = {}
local offset = 0
while #taken < limit do
  local ids = redis.call('ZRANGEBYSCORE', p .. 'due', '-inf', ARGV[2], 'LIMIT', offset, limit)
  if #ids == 0 then break end
  offset = offset + #ids
  for _, id in ipairs(ids) do
    local key = p .. 'task:' .. id
    local lease = redis.call('HMGET', key, 'status', 'owner', 'lease_until')
    if not lease[1] then
      redis.call('ZREM', p .. 'due', id)
      offset = offset - 1
    elseif (not lease[2]) or lease[2] == me or tonumber(lease[3]) <= now then
      redis.call('HSET', key, 'owner', me, 'lease_until', lease_until)
      taken[#taken + 1] = id
      if #taken >= limit then break end
    end
  end
end
local out = {}
for i, id in ipairs(taken) do out[i] = redis.call('HGETALL', p .. 'task:' .. id) end
return out
"""

# One poll's result. The terminal record is a compare-and-set: a task that is
# gone or already finished is left alone and 0 comes back; so does one that
# another replica holds a live lease on.
_APPLY = """
local p, id, me, now, finishing, status = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local active, next_poll_at = ARGV[7], ARGV[8]
local key = p .. 'task:' .. id
local cur = redis.call('HMGET', key, 'status', 'finished_at', 'owner', 'lease_until',
  'discovered_at', 'model')
if not cur[1] or cur[2] then return 0 end
if cur[3] and cur[3] ~= me and tonumber(cur[4]) > tonumber(now) then return 0 end
for i = 11, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', key, ARGV[i])
  else
    redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  end
end
redis.call('HINCRBY', key, 'attempts', 1)
redis.call('HDEL', key, 'owner', 'lease_until')
local model = redis.call('HGET', key, 'model')
if model then redis.call('SADD', p .. 'models', model) end
if cur[1] ~= status then
  redis.call('HINCRBY', p .. 'count', cur[1], -1)
  redis.call('HINCRBY', p .. 'count', status, 1)
  redis.call('ZREM', p .. 'active:' .. cur[1], id)
  local events = p .. 'events:' .. id
  redis.call('RPUSH', events, now .. ' ' .. status .. ' ' .. cur[1])
  redis.call('LTRIM', events, -tonumber(ARGV[9]), -1)
end
if cur[1] == 'processing' then
  local by_model = p .. 'processing_by_model:' .. (cur[6] or '')
  redis.call('ZREM', by_model, id)
  if redis.call('EXISTS', by_model) == 0 then
    redis.call('SREM', p .. 'processing_models', cur[6] or '')
  end
end
if status == 'processing' and finishing ~= '1' then
  local created = redis.call('HGET', key, 'created') or cur[5]
  redis.call('ZADD', p .. 'processing_by_model:' .. (model or ''), created, id)
  redis.call('SADD', p .. 'processing_models', model or '')
end
if finishing == '1' then
  if ARGV[10] ~= '' then redis.call('HINCRBY', p .. 'finish_totals', ARGV[10], 1) end
  redis.call('HSET', key, 'finished_at', now, 'finished_by', me)
  redis.call('ZREM', p .. 'due', id)
  redis.call('ZREM', p .. 'active:' .. status, id)
  redis.call('ZADD', p .. 'finished', now, id)
else
  redis.call('ZADD', p .. 'due', next_poll_at, id)
  if active == '1' then
    local created = redis.call('HGET', key, 'created') or cur[5]
    redis.call('ZADD', p .. 'active:' .. status, created, id)
  end
end
return 1
"""

_PRUNE = """
local p = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', p .. 'finished', '-inf', '(' .. ARGV[2], 'LIMIT', 0,
  tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local key = p .. 'task:' .. id
  local status = redis.call('HGET', key, 'status')
  if status then redis.call('HINCRBY', p .. 'count', status, -1) end
  redis.call('DEL', key, p .. 'events:' .. id)
  redis.call('ZREM', p .. 'finished', id)
  redis.call('ZREM', p .. 'ids', id)
end
return #ids
"""

_REMOVE = """
local p, id = ARGV[1], ARGV[2]
local key = p .. 'task:' .. id
local status = redis.call('HGET', key, 'status')
if not status then return 0 end
if status == 'processing' then
  local model = redis.call('HGET', key, 'model') or ''
  local by_model = p .. 'processing_by_model:' .. model
  redis.call('ZREM', by_model, id)
  if redis.call('EXISTS', by_model) == 0 then
    redis.call('SREM', p .. 'processing_models', model)
  end
end
redis.call('HINCRBY', p .. 'count', status, -1)
redis.call('DEL', key, p .. 'events:' .. id)
for _, index in ipairs({'due', 'finished', 'ids', 'active:' .. status}) do
  redis.call('ZREM', p .. index, id)
end
return 1
"""

# GCRA on the server's clock (replicas' clocks may differ): every call takes
# one request slot and returns, as a string, how long to wait before using it.
_RESERVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait < 0 then wait = 0 end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', new_tat), 'PX',
  math.ceil((new_tat - now) * 1000) + 1000)
local paused = tonumber(redis.call('GET', KEYS[2]) or '0')
if paused - now > wait then wait = paused - now end
return string.format('%.6f', wait)
"""

_PAUSE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = now + tonumber(ARGV[1])
local paused = tonumber(redis.call('GET', KEYS[1]) or '0')
if until_ > paused then
  redis.call('SET', KEYS[1], string.format('%.6f', until_), 'PX',
    math.ceil(tonumber(ARGV[1]) * 1000) + 1000)
end
return 1
"""

# Status changes kept per task: a task that flaps must not grow the store.
MAX_EVENTS_PER_TASK = 50
# Finished tasks looked at, at most, to find the latest of some statuses.
MAX_FINISHED_SCAN = 10_000
PAGE = 500
_SUMMARY_FIELDS = ("model", "status", "finished_at", "duration_seconds")


# Take the lease if free, renew it if ours; 1 when this replica holds it.
_GAUGE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


# Query parameters of a Redis URL whose values are secrets (`password`, ...).
_SECRET_PARAMETER = re.compile(r"(?i)pass|secret|token|auth|key")


def default_replica_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"[:64]


def redact_url(url: str) -> str:
    """The URL without its secrets, for messages: the password of the user part and
    the value of any query parameter that may hold one (`?password=`, ...)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable Redis URL>"
    if password is not None:
        host = parts.netloc.rpartition("@")[2]
        user = f"{parts.username}:" if parts.username else ":"
        parts = parts._replace(netloc=f"{user}***@{host}")
    if parts.query:
        query = [
            (name, "***" if _SECRET_PARAMETER.search(name) else value)
            for name, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


def url_secrets(url: str) -> list[str]:
    """The secrets a Redis URL carries, to mask wherever they would be logged."""
    try:
        parts = urlsplit(url)
        found = [parts.password] if parts.password else []
    except ValueError:
        return []
    found += [
        value
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
        if _SECRET_PARAMETER.search(name) and value
    ]
    return found


def connect(url: str, max_connections: int = 64, password: str | None = None) -> redis.Redis:
    """A thread-safe client with a bounded pool; StoreError if Redis does not answer.

    `password` is used when the URL names none (it comes from the environment or
    a file, so it need not be written into the URL)."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        password=password,
        max_connections=max_connections,
        timeout=10,
        decode_responses=True,
        socket_timeout=10,
        socket_connect_timeout=5,
        health_check_interval=30,
    )
    client = redis.Redis(connection_pool=pool)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise StoreError(
            f"cannot reach Redis at {redact_url(url)}: {type(exc).__name__}: {exc}"
        ) from None
    return client


def _text(value: float | int | str | None) -> str:
    """A value for a script argument; '' stands for None."""
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def _task(fields: dict[str, str]) -> Task:
    def number(name: str) -> float | None:
        value = fields.get(name)
        return float(value) if value else None

    return Task(
        task_id=fields["task_id"],
        source=fields["source"],
        model=fields.get("model") or None,
        poll_url=fields.get("poll_url") or None,
        status=Status(fields["status"]),
        discovered_at=float(fields["discovered_at"]),
        next_poll_at=float(fields["next_poll_at"]),
        created=number("created"),
        first_seen=number("first_seen"),
        last_polled=number("last_polled"),
        processing_seen=number("processing_seen"),
        attempts=int(fields.get("attempts") or 0),
        consecutive_errors=int(fields.get("consecutive_errors") or 0),
        finished_at=number("finished_at"),
        duration_seconds=number("duration_seconds"),
        reason=fields.get("reason") or None,
        error_message=fields.get("error_message") or None,
        last_error=fields.get("last_error") or None,
        progress=number("progress"),
        progress_at=number("progress_at"),
    )


# Label values never hold a tab (see metrics/recorder.py).
_TOTALS_SEPARATOR = "\t"


def _totals_field(labels: FinishLabels) -> str:
    parts = (labels.model, labels.status, labels.reason or "", labels.failure_class or "")
    return _TOTALS_SEPARATOR.join(parts)


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


class RedisTaskStore:
    """The `TaskStore` protocol on Redis; safe to share between threads and replicas."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "lemondata:",
        replica_id: str | None = None,
        lease_seconds: float = 60.0,
        client: redis.Redis | None = None,
    ) -> None:
        self.url = redact_url(url)
        self.prefix = prefix
        self.replica_id = replica_id or default_replica_id()
        self.lease_seconds = lease_seconds
        self.client = client if client is not None else connect(url)
        self._add = self.client.register_script(_ADD)
        self._due = self.client.register_script(_DUE)
        self._apply = self.client.register_script(_APPLY)
        self._prune = self.client.register_script(_PRUNE)
        self._remove = self.client.register_script(_REMOVE)
        self._gauge_lease = self.client.register_script(_GAUGE_LEASE)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def check(self) -> None:
        """Nothing to check locally: Redis answers for itself (see `probe`)."""

    def probe(self) -> None:
        """One small write and a read: whether Redis takes writes again (it refuses
        them when it hits maxmemory or cannot persist)."""
        self.client.set(self._key("probe"), _text(time.time()), ex=60)
        self.client.hgetall(self._key("count"))

    def reports_store_gauges(self) -> bool:
        """One replica at a time holds a lease to export the store-wide gauges."""
        ttl_ms = max(1000, int(self.lease_seconds * 1000))
        held = self._gauge_lease(keys=[self._key("gauge_reporter")], args=[self.replica_id, ttl_ms])
        return bool(held)

    def close(self) -> None:
        self.client.close()

    def add(
        self,
        tasks: Iterable[DiscoveredTask],
        now: float,
        source_state: tuple[str, str] | None = None,
    ) -> list[DiscoveredTask]:
        """Track new tasks; known IDs are left alone. Returns the ones added.

        The source's position is saved in the same script, as in SQLite.
        """
        offered = list(tasks)
        if not offered and source_state is None:
            return []
        args = [self.prefix, _text(now), *(source_state or ("", ""))]
        for task in offered:
            args += [task.task_id, task.source, task.model or "", task.poll_url or ""]
        indexes = cast(list[int], self._add(args=args))
        return [offered[int(i)] for i in indexes]

    def due(self, now: float, limit: int) -> list[Task]:
        """Unfinished tasks whose next poll is due, most overdue first, leased to us."""
        if limit <= 0:
            return []
        rows = cast(
            list[list[str]],
            self._due(
                args=[
                    self.prefix,
                    _text(now),
                    str(limit),
                    self.replica_id,
                    _text(now + self.lease_seconds),
                ]
            ),
        )
        return [_task(_pairs(row)) for row in rows]

    def apply(
        self,
        task_id: str,
        update: TaskUpdate,
        now: float,
        reason: str | None,
        labels: FinishLabels | None = None,
    ) -> bool:
        """Store a poll's result; False if the task is gone, finished, or leased elsewhere."""
        finish = update.finish
        fields: dict[str, float | int | str | None] = {
            "status": update.status.value,
            "next_poll_at": update.next_poll_at,
            "consecutive_errors": update.consecutive_errors,
            "created": update.created,
            "model": update.model,
            "first_seen": update.first_seen,
            "processing_seen": update.processing_seen,
            "last_polled": update.last_polled,
            "last_error": update.last_error,
            "duration_seconds": finish.duration if finish else None,
            "reason": reason,
            "error_message": finish.error_message if finish else None,
            "progress": update.progress,
            "progress_at": update.progress_at,
        }
        args = [
            self.prefix,
            task_id,
            self.replica_id,
            _text(now),
            "1" if finish else "0",
            update.status.value,
            "1" if update.status.value in _ACTIVE else "0",
            _text(update.next_poll_at),
            str(MAX_EVENTS_PER_TASK),
            _totals_field(labels) if finish and labels else "",
        ]
        for name, value in fields.items():
            args += [name, _text(value)]
        return bool(self._apply(args=args))

    def finish_totals(self) -> dict[FinishLabels, int]:
        """Store-wide count of finishes per label set."""
        totals = cast(dict[str, str], self.client.hgetall(self._key("finish_totals")))
        result = {}
        for field, n in totals.items():
            parts = field.split(_TOTALS_SEPARATOR)
            if len(parts) == 4:
                model, status, reason, failure_class = parts
                result[FinishLabels(model, status, reason or None, failure_class or None)] = int(n)
        return result

    def get(self, task_id: str) -> Task | None:
        fields = cast(dict[str, str], self.client.hgetall(self._key("task", task_id)))
        return _task(fields) if fields else None

    def known(self, task_ids: list[str]) -> set[str]:
        """Which of these task IDs the store has (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.exists(self._key("task", task_id))
        return {task_id for task_id, n in zip(task_ids, pipe.execute(), strict=True) if n}

    def finished_by(self, task_id: str) -> str | None:
        """The replica whose terminal record won, for a finished task."""
        return cast(str | None, self.client.hget(self._key("task", task_id), "finished_by"))

    def count_by_status(self) -> dict[Status, int]:
        counts = cast(dict[str, str], self.client.hgetall(self._key("count")))
        return {Status(status): int(n) for status, n in counts.items() if int(n) > 0}

    def oldest_active(self) -> dict[Status, float]:
        """Per unfinished status, the earliest creation (or discovery) time."""
        pipe = self.client.pipeline(transaction=False)
        for status in ACTIVE_STATUSES:
            pipe.zrange(self._key("active", status.value), 0, 0, withscores=True)
        result = {}
        for status, rows in zip(ACTIVE_STATUSES, pipe.execute(), strict=True):
            if rows:
                result[status] = float(rows[0][1])
        return result

    def oldest_processing_by_model(self, limit: int = 1000) -> dict[str | None, float]:
        """Per model (None: no model known), the earliest creation (or discovery)
        time of its tasks in `processing`; models with none are left out."""
        models = cast(list[str], self.client.srandmember(self._key("processing_models"), limit))
        pipe = self.client.pipeline(transaction=False)
        for model in models:
            pipe.zrange(self._key("processing_by_model", model), 0, 0, withscores=True)
        result: dict[str | None, float] = {}
        for model, rows in zip(models, pipe.execute(), strict=True):
            if rows:
                result[model or None] = float(rows[0][1])
        return result

    def models(self) -> list[str]:
        return sorted(cast(list[str], self.client.srandmember(self._key("models"), 1000)))

    def prune(self, finished_before: float) -> int:
        """Forget finished tasks older than the retention."""
        removed = 0
        while True:
            batch = int(
                cast(int, self._prune(args=[self.prefix, _text(finished_before), PRUNE_BATCH]))
            )
            removed += batch
            if batch < PRUNE_BATCH:
                return removed

    def source_state(self, source: str) -> str | None:
        return cast(str | None, self.client.hget(self._key("source_state"), source))

    # ---- for the task API and the status page ---------------------------------

    def _tasks(self, task_ids: Sequence[str]) -> list[Task]:
        """These tasks, in this order; those gone meanwhile are left out."""
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hgetall(self._key("task", task_id))
        return [_task(fields) for fields in pipe.execute() if fields]

    def _fields(self, task_ids: Sequence[str], names: Sequence[str]) -> list[list[str | None]]:
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hmget(self._key("task", task_id), list(names))
        return cast(list[list[str | None]], pipe.execute())

    def list_tasks(
        self,
        status: Status | None = None,
        model: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Up to `limit` tasks ordered by task ID, after `after`, with that status and model."""
        found: list[str] = []
        start = f"({after}" if after is not None else "-"
        while len(found) < limit:
            page = cast(
                list[str],
                self.client.zrangebylex(self._key("ids"), start, "+", start=0, num=PAGE),
            )
            if not page:
                break
            if status is None and model is None:
                found += page
            else:
                rows = self._fields(page, ("status", "model"))
                found += [
                    task_id
                    for task_id, (task_status, task_model) in zip(page, rows, strict=True)
                    if task_status is not None
                    and (status is None or task_status == status.value)
                    and (model is None or task_model == model)
                ]
            start = f"({page[-1]}"
        return self._tasks(found[:limit])

    def events(self, task_id: str) -> list[TaskEvent]:
        """The task's status changes, oldest first."""
        events = []
        for line in cast(list[str], self.client.lrange(self._key("events", task_id), 0, -1)):
            at, status, previous = line.split(" ")
            events.append(TaskEvent(float(at), Status(status), Status(previous)))
        return events

    def remove(self, task_id: str) -> bool:
        """Stop tracking a task (and drop its events); False if it was not in the store."""
        return bool(self._remove(args=[self.prefix, task_id]))

    def in_flight(self, limit: int) -> list[Task]:
        """Unfinished tasks, oldest first (by created, else discovered_at)."""
        if limit <= 0:
            return []
        pipe = self.client.pipeline(transaction=False)
        for status in ACTIVE_STATUSES:
            pipe.zrange(self._key("active", status.value), 0, limit - 1, withscores=True)
        ranked = sorted(
            (float(score), task_id) for rows in pipe.execute() for task_id, score in rows
        )
        return self._tasks([task_id for _, task_id in ranked[:limit]])

    def latest_finished(self, statuses: Sequence[Status], limit: int) -> list[Task]:
        """Finished tasks with one of these statuses, most recently finished first."""
        wanted = {status.value for status in statuses}
        found: list[tuple[float, str]] = []
        offset = 0
        while wanted and len(found) < limit and offset < MAX_FINISHED_SCAN:
            page = cast(
                list[tuple[str, float]],
                self.client.zrevrange(
                    self._key("finished"), offset, offset + PAGE - 1, withscores=True
                ),
            )
            if not page:
                break
            offset += len(page)
            rows = self._fields([task_id for task_id, _ in page], ("status",))
            found += [
                (-float(at), task_id)
                for (task_id, at), (status,) in zip(page, rows, strict=True)
                if status in wanted
            ]
        return self._tasks([task_id for _, task_id in sorted(found)[:limit]])

    def model_summaries(self) -> list[ModelSummary]:
        """Per model: tasks in flight, finished, failed, median duration of completed ones."""
        counts: dict[str | None, list[int]] = {}
        durations: dict[str | None, list[float]] = {}
        for page in self._id_pages():
            for model, status, finished_at, duration in self._fields(page, _SUMMARY_FIELDS):
                if status is None:
                    continue
                row = counts.setdefault(model or None, [0, 0, 0])
                row[0 if finished_at is None else 1] += 1
                row[2] += status == Status.FAILED.value
                if status == Status.COMPLETED.value and duration:
                    durations.setdefault(model or None, []).append(float(duration))
        ordered = sorted(counts, key=lambda model: (model is not None, model or ""))[:1000]
        return [
            ModelSummary(
                model,
                active=counts[model][0],
                finished=counts[model][1],
                failed=counts[model][2],
                median_duration_seconds=_median(durations.get(model, [])),
            )
            for model in ordered
        ]

    def _id_pages(self) -> Iterable[list[str]]:
        start = "-"
        while True:
            page = cast(
                list[str],
                self.client.zrangebylex(self._key("ids"), start, "+", start=0, num=PAGE),
            )
            if not page:
                return
            yield page
            start = f"({page[-1]}"

    # ---- what adaptive polling learnt per model ---------------------------------

    def load_model_stats(self) -> dict[str, str]:
        stats = cast(dict[str, str], self.client.hgetall(self._key("model_stats")))
        return dict(list(stats.items())[:1000])

    def save_model_stats(self, stats: dict[str, str | None]) -> None:
        """Replace the saved stats of these models (None: forget the model)."""
        key = self._key("model_stats")
        pipe = self.client.pipeline(transaction=True)
        for model, text in stats.items():
            if text is None:
                pipe.hdel(key, model)
            else:
                pipe.hset(key, model, text)
        pipe.execute()


def _median(values: list[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


class SharedRequestBudget(RequestBudget):
    """The request budget of a whole group of replicas, kept in Redis.

    Same interface as `RequestBudget`; `rate` is read on every call, so a
    change to it applies to the group at once. A 429's pause applies to every
    replica.
    """

    def __init__(
        self,
        client: redis.Redis,
        rate: float,
        burst: float | None = None,
        *,
        prefix: str = "lemondata:",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(rate, burst, clock)
        self.burst = burst if burst is not None else max(1.0, rate)
        self._keys = [prefix + "budget", prefix + "budget:pause"]
        self._reserve = client.register_script(_RESERVE)
        self._pause = client.register_script(_PAUSE)

    def pause_for(self, seconds: float) -> None:
        self._pause(keys=self._keys[1:], args=[_text(float(seconds))])

    def reserve(self) -> float:
        """Take one request slot of the group; how long to wait before using it."""
        interval = 1.0 / self.rate
        tolerance = max(0.0, self.burst - 1.0) * interval
        result: Any = self._reserve(keys=self._keys, args=[_text(interval), _text(tolerance)])
        return float(result)
