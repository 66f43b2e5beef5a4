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
- The group's request budget shares the prefix (`budget`, `budget:pause`);
  it lives in `poller/shared_budget.py`.

Layout under the prefix (default `lemondata:`), kept small because a day of a
large account is 1.5 million tasks (docs/benchmarks.md has the bytes per task):

- `t:<id>`: the task, a hash with short field names (`FIELDS`), times rounded
  to the millisecond, its status history in one field (`h`), and, once it has
  finished, only what the task API shows (no lease, next poll or progress).
  Small enough for Redis' compact listpack encoding unless its texts are long.
- Indexes, each task in as few as possible: `ix:<status>:<model>` (task IDs by
  ID, one sorted set per status and model: every list filter reads only
  matching tasks; `px:<status>` lists the models with one), `fin:<status>`
  (finished tasks by finish time: pruning and the latest failures), `q` (the
  unfinished by next poll; `q:<account>` for each account but `default`),
  `a:<status>` (unfinished by creation time), `pm:<model>` and `pms` (in
  processing, per model).
- Counters kept by the scripts as tasks change: `n` (tasks by status), `na`
  (by account and status, for the accounts but `default`, whose tasks have no
  `ac` field: older stores' tasks are its), `ma`,
  `mf`, `mx` (per model: in flight, finished, failed), `dur:<model>` (completed
  durations, rounded to 3 significant digits, and how many: medians without
  reading tasks), `ms` (models).
- `source_state`, `finish_totals` (finishes per label set, never pruned),
  `model_stats`, `budget`, `budget:pause`, `gauge_reporter`.

'' stands for no model. A store written by an older version (`task:<id>`,
`ids`...) is converted on open, a page at a time (`migrate`). Redis Cluster is
not supported (the scripts touch keys they compute); a single Redis, or one
behind Sentinel, is.
"""

from __future__ import annotations

import heapq
import logging
import math
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields as dataclass_fields
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis

from exporter.model import (
    ACTIVE_STATUSES,
    APPLIED_FIELDS,
    DEFAULT_ACCOUNT,
    FINISHED_STATUSES,
    DiscoveredTask,
    Status,
    Task,
    TaskUpdate,
)
from exporter.store.base import FinishLabels, ModelSummary, TaskEvent, counts_by_account
from exporter.store.sqlite import PRUNE_DUTY_CYCLE, StoreError, prune_pause

log = logging.getLogger(__name__)

# Tasks per prune script: Redis runs one script at a time, so a batch must be
# short (a few ms; 200 took 20-90 ms on a busy 2-core machine) for scrapes and
# polls of every replica not to wait on it.
PRUNE_BATCH = 50
_ACTIVE = {status.value for status in ACTIVE_STATUSES}

# Shared Lua helpers: the index keys of a task, kept in step by every script.
_LUA_HELPERS = """
local function ix_add(p, status, model, id)
  redis.call('ZADD', p .. 'ix:' .. status .. ':' .. model, 0, id)
  redis.call('SADD', p .. 'px:' .. status, model)
end
local function ix_rem(p, status, model, id)
  local key = p .. 'ix:' .. status .. ':' .. model
  redis.call('ZREM', key, id)
  if redis.call('EXISTS', key) == 0 then redis.call('SREM', p .. 'px:' .. status, model) end
end
local function pm_rem(p, model, id)
  local key = p .. 'pm:' .. model
  redis.call('ZREM', key, id)
  if redis.call('EXISTS', key) == 0 then redis.call('SREM', p .. 'pms', model) end
end
-- The unfinished tasks of an account by next poll: `q` for the one account of a
-- config without `accounts:` (the key of older versions), `q:<account>` for the others.
local function qkey(p, account)
  if account and account ~= '' and account ~= 'default' then return p .. 'q:' .. account end
  return p .. 'q'
end
-- Tasks by account and status, for the accounts other than the default one (`na`,
-- fields '<account>\t<status>'): the default's are the status counts `n` less these.
local function na_add(p, account, status, by)
  if account and account ~= '' and account ~= 'default' then
    redis.call('HINCRBY', p .. 'na', account .. '\t' .. status, by)
  end
end
local CODE = {unknown = 'u', pending = 'p', processing = 'r', completed = 'c', failed = 'f',
  cancelled = 'x', expired = 'e', timeout = 't'}
local function dur_key(d)
  return string.format('%.3g', tonumber(d))
end
local function forget_finished(p, model, status, du)
  redis.call('HINCRBY', p .. 'mf', model, -1)
  if status == 'failed' then redis.call('HINCRBY', p .. 'mx', model, -1) end
  if status == 'completed' and du then
    local key = p .. 'dur:' .. model
    if redis.call('HINCRBY', key, dur_key(du), -1) <= 0 then
      redis.call('HDEL', key, dur_key(du))
    end
  end
end
"""

_ADD = (
    _LUA_HELPERS
    + """
local p, now = ARGV[1], ARGV[2]
local added = {}
for i = 5, #ARGV, 5 do
  local id = ARGV[i]
  local key = p .. 't:' .. id
  if redis.call('EXISTS', key) == 0 then
    local model = ARGV[i + 2]
    redis.call('HSET', key, 's', ARGV[i + 1], 'st', 'unknown', 'd', now, 'n', now)
    if model ~= '' then
      redis.call('HSET', key, 'm', model)
      redis.call('SADD', p .. 'ms', model)
    end
    if ARGV[i + 3] ~= '' then redis.call('HSET', key, 'u', ARGV[i + 3]) end
    if ARGV[i + 4] ~= '' then redis.call('HSET', key, 'ac', ARGV[i + 4]) end
    na_add(p, ARGV[i + 4], 'unknown', 1)
    redis.call('ZADD', qkey(p, ARGV[i + 4]), now, id)
    redis.call('ZADD', p .. 'a:unknown', now, id)
    ix_add(p, 'unknown', model, id)
    redis.call('HINCRBY', p .. 'n', 'unknown', 1)
    redis.call('HINCRBY', p .. 'ma', model, 1)
    added[#added + 1] = (i - 5) / 5
  end
end
if ARGV[3] ~= '' then redis.call('HSET', p .. 'source_state', ARGV[3], ARGV[4]) end
return added
"""
)

# Due tasks (of one account's queue) not leased to another replica, most overdue
# first; leases them to us.
_DUE = (
    _LUA_HELPERS
    + """
local p, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local me, lease_until = ARGV[4], ARGV[5]
local q = qkey(p, ARGV[6])
local taken = {}
local offset = 0
while #taken < limit do
  local ids = redis.call('ZRANGEBYSCORE', q, '-inf', ARGV[2], 'LIMIT', offset, limit)
  if #ids == 0 then break end
  offset = offset + #ids
  for _, id in ipairs(ids) do
    local key = p .. 't:' .. id
    local lease = redis.call('HMGET', key, 'st', 'o', 'l')
    if not lease[1] then
      redis.call('ZREM', q, id)
      offset = offset - 1
    elseif (not lease[2]) or lease[2] == me or tonumber(lease[3]) <= now then
      redis.call('HSET', key, 'o', me, 'l', lease_until)
      taken[#taken + 1] = id
      if #taken >= limit then break end
    end
  end
end
local out = {}
for i, id in ipairs(taken) do
  out[i] = redis.call('HGETALL', p .. 't:' .. id)
  table.insert(out[i], 1, id)
end
return out
"""
)

# One poll's result. The terminal record is a compare-and-set: a task that is
# gone or already finished is left alone and 0 comes back; so does one that
# another replica holds a live lease on.
_APPLY = (
    _LUA_HELPERS
    + """
local p, id, me, now, finishing, status = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local active, next_poll_at = ARGV[7], ARGV[8]
local key = p .. 't:' .. id
local cur = redis.call('HMGET', key, 'st', 'f', 'o', 'l', 'd', 'm', 'h', 'ac')
local q = qkey(p, cur[8])
if not cur[1] or cur[2] then return 0 end
if cur[3] and cur[3] ~= me and tonumber(cur[4]) > tonumber(now) then return 0 end
local old_model = cur[6] or ''
for i = 11, #ARGV, 2 do
  if ARGV[i + 1] == '' then
    redis.call('HDEL', key, ARGV[i])
  else
    redis.call('HSET', key, ARGV[i], ARGV[i + 1])
  end
end
redis.call('HINCRBY', key, 'a', 1)
redis.call('HDEL', key, 'o', 'l')
local model = redis.call('HGET', key, 'm') or ''
if model ~= '' then redis.call('SADD', p .. 'ms', model) end
if cur[1] ~= status or model ~= old_model then
  ix_rem(p, cur[1], old_model, id)
  ix_add(p, status, model, id)
end
if cur[1] ~= status then
  redis.call('HINCRBY', p .. 'n', cur[1], -1)
  redis.call('HINCRBY', p .. 'n', status, 1)
  na_add(p, cur[8], cur[1], -1)
  na_add(p, cur[8], status, 1)
  redis.call('ZREM', p .. 'a:' .. cur[1], id)
  -- history: 'PS<seconds since discovery>' per change (previous, status codes)
  local since = (string.format('%.3f', tonumber(now) - tonumber(cur[5])):gsub('%.?0+$', ''))
  local entry = (CODE[cur[1]] or 'u') .. (CODE[status] or 'u') .. since
  local h = cur[7]
  if h then h = h .. ' ' .. entry else h = entry end
  local _, spaces = string.gsub(h, ' ', '')
  if spaces >= tonumber(ARGV[9]) then h = string.sub(h, string.find(h, ' ') + 1) end
  redis.call('HSET', key, 'h', h)
end
if model ~= old_model then
  redis.call('HINCRBY', p .. 'ma', old_model, -1)
  redis.call('HINCRBY', p .. 'ma', model, 1)
end
if cur[1] == 'processing' then pm_rem(p, old_model, id) end
if status == 'processing' and finishing ~= '1' then
  local created = redis.call('HGET', key, 'c') or cur[5]
  redis.call('ZADD', p .. 'pm:' .. model, created, id)
  redis.call('SADD', p .. 'pms', model)
end
if finishing == '1' then
  if ARGV[10] ~= '' then redis.call('HINCRBY', p .. 'finish_totals', ARGV[10], 1) end
  redis.call('HSET', key, 'f', now, 'fb', me)
  redis.call('HDEL', key, 'n', 'p', 'pa')
  redis.call('ZREM', q, id)
  redis.call('ZREM', p .. 'a:' .. status, id)
  redis.call('ZADD', p .. 'fin:' .. status, now, id)
  redis.call('HINCRBY', p .. 'ma', model, -1)
  redis.call('HINCRBY', p .. 'mf', model, 1)
  if status == 'failed' then redis.call('HINCRBY', p .. 'mx', model, 1) end
  local du = redis.call('HGET', key, 'du')
  if status == 'completed' and du then
    redis.call('HINCRBY', p .. 'dur:' .. model, dur_key(du), 1)
  end
else
  redis.call('ZADD', q, next_poll_at, id)
  if active == '1' then
    local created = redis.call('HGET', key, 'c') or cur[5]
    redis.call('ZADD', p .. 'a:' .. status, created, id)
  end
end
return 1
"""
)

# Up to ARGV[3] tasks of one finished status, finished before ARGV[2].
_PRUNE = (
    _LUA_HELPERS
    + """
local p, status = ARGV[1], ARGV[4]
local fin = p .. 'fin:' .. status
local ids = redis.call('ZRANGEBYSCORE', fin, '-inf', '(' .. ARGV[2], 'LIMIT', 0,
  tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  local key = p .. 't:' .. id
  local cur = redis.call('HMGET', key, 'st', 'm', 'du', 'ac')
  if cur[1] then
    local model = cur[2] or ''
    redis.call('HINCRBY', p .. 'n', cur[1], -1)
    na_add(p, cur[4], cur[1], -1)
    ix_rem(p, cur[1], model, id)
    forget_finished(p, model, cur[1], cur[3])
    redis.call('DEL', key)
  end
  redis.call('ZREM', fin, id)
end
return #ids
"""
)

_REMOVE = (
    _LUA_HELPERS
    + """
local p, id = ARGV[1], ARGV[2]
local key = p .. 't:' .. id
local cur = redis.call('HMGET', key, 'st', 'm', 'f', 'du', 'ac')
local status = cur[1]
if not status then return 0 end
local model = cur[2] or ''
if status == 'processing' then pm_rem(p, model, id) end
redis.call('HINCRBY', p .. 'n', status, -1)
na_add(p, cur[5], status, -1)
ix_rem(p, status, model, id)
if cur[3] then
  forget_finished(p, model, status, cur[4])
else
  redis.call('HINCRBY', p .. 'ma', model, -1)
end
redis.call('DEL', key)
redis.call('ZREM', qkey(p, cur[5]), id)
for _, index in ipairs({'fin:' .. status, 'a:' .. status}) do
  redis.call('ZREM', p .. index, id)
end
return 1
"""
)

# Status changes kept per task: a task that flaps must not grow the store.
MAX_EVENTS_PER_TASK = 50
PAGE = 500
# Medians are recomputed at most this often (the status page shows them).
MEDIAN_MAX_AGE_SECONDS = 60.0
# Task fields and their names in the hash: short, as there are millions of them.
FIELDS = {
    "source": "s",
    "model": "m",
    "poll_url": "u",
    "status": "st",
    "discovered_at": "d",
    "next_poll_at": "n",
    "created": "c",
    "first_seen": "fs",
    "last_polled": "lp",
    "processing_seen": "ps",
    "attempts": "a",
    "consecutive_errors": "e",
    "finished_at": "f",
    "duration_seconds": "du",
    "reason": "r",
    "error_message": "em",
    "last_error": "le",
    "progress": "p",
    "progress_at": "pa",
    "account": "ac",  # none: the default account (and every task of older versions)
}
# Status codes of the history field `h` ("<previous><status><seconds since discovery>").
_CODES = {
    "u": Status.UNKNOWN,
    "p": Status.PENDING,
    "r": Status.PROCESSING,
    "c": Status.COMPLETED,
    "f": Status.FAILED,
    "x": Status.CANCELLED,
    "e": Status.EXPIRED,
    "t": Status.TIMEOUT,
}


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
    """A value for a script argument; '' stands for None. Times and durations are
    kept to the millisecond (shorter strings: smaller hashes)."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if math.isfinite(value) else repr(value)
    return str(value)


def _optional_text(value: str | None) -> str | None:
    return value or None


def _optional_number(value: str | None) -> float | None:
    return float(value) if value else None


def _count(value: str | None) -> int:
    return int(value or 0)  # 0 is kept as no field


# How a hash field's text becomes a Task's field, by the field's declared type.
_READERS: dict[str, Callable[[str | None], Any]] = {
    "str | None": _optional_text,
    "float | None": _optional_number,
    "int": _count,
}
# (Task field, hash field, reader) for the fields read the same way; the rest
# are required and read by `_task` itself.
_READ = tuple(
    (field.name, FIELDS[field.name], _READERS[str(field.type)])
    for field in dataclass_fields(Task)
    if str(field.type) in _READERS
)


def _task(task_id: str, fields: dict[str, str]) -> Task:
    values: dict[str, Any] = {name: read(fields.get(short)) for name, short, read in _READ}
    return Task(
        task_id=task_id,
        source=fields["s"],
        status=Status(fields["st"]),
        discovered_at=float(fields["d"]),
        # A finished task has no `n`: its next poll reads as its finish.
        next_poll_at=float(fields.get("n") or fields.get("f") or fields["d"]),
        account=fields.get("ac") or DEFAULT_ACCOUNT,
        **values,
    )


def _history(discovered_at: float, text: str | None) -> list[TaskEvent]:
    events = []
    for entry in (text or "").split():
        previous, status, since = _CODES[entry[0]], _CODES[entry[1]], float(entry[2:])
        events.append(TaskEvent(round(discovered_at + since, 3), status, previous))
    return events


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
        prune_duty_cycle: float = PRUNE_DUTY_CYCLE,
        client: redis.Redis | None = None,
    ) -> None:
        self.url = redact_url(url)
        self.prefix = prefix
        self.prune_duty_cycle = prune_duty_cycle
        self.replica_id = replica_id or default_replica_id()
        self.lease_seconds = lease_seconds
        self.client = client if client is not None else connect(url)
        self._add = self.client.register_script(_ADD)
        self._due = self.client.register_script(_DUE)
        self._apply = self.client.register_script(_APPLY)
        self._prune = self.client.register_script(_PRUNE)
        self._remove = self.client.register_script(_REMOVE)
        self._gauge_lease = self.client.register_script(_GAUGE_LEASE)
        self._medians: dict[str | None, float] = {}
        self._medians_at = -math.inf
        self._medians_lock = threading.Lock()
        try:
            migrated = migrate(self)
        except redis.RedisError as exc:
            raise StoreError(f"cannot convert the Redis store at {self.url}: {exc}") from None
        if migrated:
            log.info("Redis store: %d task(s) converted to the compact layout", migrated)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def check(self) -> None:
        """Nothing to check locally: Redis answers for itself (see `probe`)."""

    def probe(self) -> None:
        """One small write and a read: whether Redis takes writes again (it refuses
        them when it hits maxmemory or cannot persist)."""
        self.client.set(self._key("probe"), _text(time.time()), ex=60)
        self.client.hgetall(self._key("n"))

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
            account = "" if task.account == DEFAULT_ACCOUNT else task.account
            args += [task.task_id, task.source, task.model or "", task.poll_url or "", account]
        indexes = cast(list[int], self._add(args=args))
        return [offered[int(i)] for i in indexes]

    def due(self, now: float, limit: int, account: str | None = None) -> list[Task]:
        """Unfinished tasks whose next poll is due, most overdue first, leased to us;
        with `account`, that account's (one sorted set per account: no filtering)."""
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
                    account or "",
                ]
            ),
        )
        return [_task(row[0], _pairs(row[1:])) for row in rows]

    def apply(
        self,
        task_id: str,
        update: TaskUpdate,
        now: float,
        reason: str | None,
        labels: FinishLabels | None = None,
    ) -> bool:
        """Store a poll's result; False if the task is gone, finished, or leased elsewhere."""
        finish, task = update.finish, update.task
        # finished_at: the script sets it, with the replica that finished.
        fields = {name: getattr(task, name) for name in APPLIED_FIELDS if name != "finished_at"}
        fields["reason"] = reason
        fields["consecutive_errors"] = task.consecutive_errors or None  # 0: no field
        args = [
            self.prefix,
            task_id,
            self.replica_id,
            _text(now),
            "1" if finish else "0",
            task.status.value,
            "1" if task.status.value in _ACTIVE else "0",
            _text(task.next_poll_at),
            str(MAX_EVENTS_PER_TASK),
            _totals_field(labels) if finish and labels else "",
        ]
        for name, value in fields.items():
            args += [FIELDS[name], _text(cast(float | int | str | None, value))]
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
        fields = cast(dict[str, str], self.client.hgetall(self._key("t", task_id)))
        return _task(task_id, fields) if fields else None

    def known(self, task_ids: list[str]) -> set[str]:
        """Which of these task IDs the store has (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.exists(self._key("t", task_id))
        return {task_id for task_id, n in zip(task_ids, pipe.execute(), strict=True) if n}

    def finished_by(self, task_id: str) -> str | None:
        """The replica whose terminal record won, for a finished task."""
        return cast(str | None, self.client.hget(self._key("t", task_id), "fb"))

    def count_by_status(self) -> dict[Status, int]:
        counts = cast(dict[str, str], self.client.hgetall(self._key("n")))
        return {Status(status): int(n) for status, n in counts.items() if int(n) > 0}

    def count_by_account(self) -> dict[str, dict[Status, int]]:
        """Tasks by account and status, from the counters (one MULTI: one moment)."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self._key("n"))
        pipe.hgetall(self._key("na"))
        totals, named = cast(list[dict[str, str]], pipe.execute())
        rows = []
        for field, n in named.items():
            account, _, status = field.partition("\t")
            rows.append((account, status, int(n)))
        return counts_by_account([(s, int(n)) for s, n in totals.items()], rows)

    def oldest_active(self) -> dict[Status, float]:
        """Per unfinished status, the earliest creation (or discovery) time."""
        pipe = self.client.pipeline(transaction=False)
        for status in ACTIVE_STATUSES:
            pipe.zrange(self._key("a", status.value), 0, 0, withscores=True)
        result = {}
        for status, rows in zip(ACTIVE_STATUSES, pipe.execute(), strict=True):
            if rows:
                result[status] = float(rows[0][1])
        return result

    def oldest_processing_by_model(self, limit: int = 1000) -> dict[str | None, float]:
        """Per model (None: no model known), the earliest creation (or discovery)
        time of its tasks in `processing`; models with none are left out."""
        models = cast(list[str], self.client.srandmember(self._key("pms"), limit))
        pipe = self.client.pipeline(transaction=False)
        for model in models:
            pipe.zrange(self._key("pm", model), 0, 0, withscores=True)
        result: dict[str | None, float] = {}
        for model, rows in zip(models, pipe.execute(), strict=True):
            if rows:
                result[model or None] = float(rows[0][1])
        return result

    def models(self) -> list[str]:
        return sorted(cast(list[str], self.client.srandmember(self._key("ms"), 1000)))

    def prune(self, finished_before: float) -> int:
        """Forget finished tasks older than the retention, PRUNE_BATCH per script,
        working at most `prune_duty_cycle` of the time."""
        removed = 0
        for status in FINISHED_STATUSES:
            while True:
                began = time.monotonic()
                batch = int(
                    cast(
                        int,
                        self._prune(
                            args=[self.prefix, _text(finished_before), PRUNE_BATCH, status.value]
                        ),
                    )
                )
                removed += batch
                if batch < PRUNE_BATCH:
                    break
                # Redis runs one script at a time: leave it to everyone else
                # (every replica's polls and scrapes) most of the time.
                time.sleep(prune_pause(time.monotonic() - began, self.prune_duty_cycle))
        return removed

    def source_state(self, source: str) -> str | None:
        return cast(str | None, self.client.hget(self._key("source_state"), source))

    # ---- for the task API and the status page ---------------------------------

    def _tasks(self, task_ids: Sequence[str]) -> list[Task]:
        """These tasks, in this order; those gone meanwhile are left out."""
        pipe = self.client.pipeline(transaction=False)
        for task_id in task_ids:
            pipe.hgetall(self._key("t", task_id))
        return [
            _task(task_id, fields)
            for task_id, fields in zip(task_ids, pipe.execute(), strict=True)
            if fields
        ]

    def _partitions(self, status: Status | None, model: str | None) -> list[str]:
        """The `ix:` keys holding the tasks of this status and model (None: any)."""
        statuses = [status] if status is not None else list(Status)
        if model is not None:
            return [self._key("ix", s.value, model) for s in statuses]
        pipe = self.client.pipeline(transaction=False)
        for s in statuses:
            pipe.smembers(self._key("px", s.value))
        return [
            self._key("ix", s.value, m)
            for s, models in zip(statuses, pipe.execute(), strict=True)
            for m in sorted(models)
        ]

    def list_tasks(
        self,
        status: Status | None = None,
        model: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """Up to `limit` tasks ordered by task ID, after `after`, with that status and model.

        Reads the first `limit` IDs of each matching `ix:` set and merges them:
        never a task that does not match."""
        if limit <= 0:
            return []
        keys = self._partitions(status, model)
        start = f"({after}" if after is not None else "-"
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.zrangebylex(key, start, "+", start=0, num=limit)
        pages = cast(list[list[str]], pipe.execute())
        found = list(heapq.merge(*pages))[:limit]
        return self._tasks(found)

    def events(self, task_id: str) -> list[TaskEvent]:
        """The task's status changes, oldest first."""
        discovered, text = cast(
            list[str | None], self.client.hmget(self._key("t", task_id), ["d", "h"])
        )
        return _history(float(discovered), text) if discovered is not None else []

    def remove(self, task_id: str) -> bool:
        """Stop tracking a task (and drop its events); False if it was not in the store."""
        return bool(self._remove(args=[self.prefix, task_id]))

    def in_flight(self, limit: int) -> list[Task]:
        """Unfinished tasks, oldest first (by created, else discovered_at)."""
        if limit <= 0:
            return []
        pipe = self.client.pipeline(transaction=False)
        for status in ACTIVE_STATUSES:
            pipe.zrange(self._key("a", status.value), 0, limit - 1, withscores=True)
        ranked = sorted(
            (float(score), task_id) for rows in pipe.execute() for task_id, score in rows
        )
        return self._tasks([task_id for _, task_id in ranked[:limit]])

    def latest_finished(self, statuses: Sequence[Status], limit: int) -> list[Task]:
        """Finished tasks with one of these statuses, most recently finished first:
        the newest `limit` of each status's `fin:` set, merged."""
        if limit <= 0:
            return []
        wanted = [status for status in dict.fromkeys(statuses) if status in FINISHED_STATUSES]
        pipe = self.client.pipeline(transaction=False)
        for status in wanted:
            pipe.zrevrange(self._key("fin", status.value), 0, limit - 1, withscores=True)
        found = sorted((-float(at), task_id) for rows in pipe.execute() for task_id, at in rows)
        return self._tasks([task_id for _, task_id in found[:limit]])

    def model_summaries(self) -> list[ModelSummary]:
        """Per model: tasks in flight, finished, failed (counters kept by the
        scripts), median duration of completed ones (from the `dur:` counts, to 3
        significant digits, recomputed at most every MEDIAN_MAX_AGE_SECONDS)."""
        pipe = self.client.pipeline(transaction=False)
        for name in ("ma", "mf", "mx"):
            pipe.hgetall(self._key(name))
        active, finished, failed = (
            {model: int(n) for model, n in counts.items()} for counts in pipe.execute()
        )
        models = [m for m in set(active) | set(finished) if active.get(m, 0) + finished.get(m, 0)]
        ordered = sorted(models)[:1000]  # '' (no model) first
        medians = self._cached_medians(ordered)
        return [
            ModelSummary(
                model or None,
                active=active.get(model, 0),
                finished=finished.get(model, 0),
                failed=failed.get(model, 0),
                median_duration_seconds=medians.get(model),
            )
            for model in ordered
        ]

    def _cached_medians(self, models: list[str]) -> dict[str, float]:
        with self._medians_lock:
            if time.monotonic() - self._medians_at < MEDIAN_MAX_AGE_SECONDS:
                return self._medians  # type: ignore[return-value]
            pipe = self.client.pipeline(transaction=False)
            for model in models:
                pipe.hgetall(self._key("dur", model))
            medians: dict[str, float] = {}
            for model, counts in zip(models, pipe.execute(), strict=True):
                value = _median_of_counts({float(k): int(n) for k, n in counts.items()})
                if value is not None:
                    medians[model] = value
            self._medians, self._medians_at = medians, time.monotonic()  # type: ignore[assignment]
            return medians

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

    # ---- for the benchmark and the conversion of older stores ---------------------

    def restore(self, tasks: Sequence[tuple[Task, Sequence[TaskEvent]]]) -> int:
        """Write whole tasks (with their history) as the scripts would have left
        them: the conversion of an older layout, and seeding a benchmark. Tasks
        already in the store are left alone. Returns how many were written."""
        pipe = self.client.pipeline(transaction=False)
        for task, history in tasks:
            finished = task.finished_at is not None
            fields = {
                name: _text(getattr(task, name))
                for name in FIELDS
                if not (finished and name in ("next_poll_at", "progress", "progress_at"))
            }
            fields["status"] = task.status.value
            fields["attempts"] = str(task.attempts)
            if task.account == DEFAULT_ACCOUNT:
                fields["account"] = ""  # no field: the default account
            if not task.consecutive_errors:
                fields["consecutive_errors"] = ""
            args = [
                self.prefix,
                task.task_id,
                "1" if finished else "0",
                _history_text(task.discovered_at, history[-MAX_EVENTS_PER_TASK:]),
                _text(task.created if task.created is not None else task.discovered_at),
            ]
            for name, value in fields.items():
                args += [FIELDS[name], value]
            self._restore(args=args, client=pipe)
        return sum(int(n) for n in pipe.execute())

    @property
    def _restore(self) -> Any:
        script = getattr(self, "_restore_script", None)
        if script is None:
            script = self._restore_script = self.client.register_script(_RESTORE)
        return script


def _history_text(discovered_at: float, events: Sequence[TaskEvent]) -> str:
    codes = {status: code for code, status in _CODES.items()}
    return " ".join(
        f"{codes[event.previous]}{codes[event.status]}{_text(float(event.at - discovered_at))}"
        for event in events
    )


def _median_of_counts(counts: dict[float, int]) -> float | None:
    """The median of values given as {value: how many times}."""
    total = sum(n for n in counts.values() if n > 0)
    if total == 0:
        return None
    middle = ((total - 1) // 2, total // 2)  # 0-based ranks of the middle one or two
    found: list[float] = []
    seen = 0
    for value in sorted(counts):
        n = counts[value]
        if n <= 0:
            continue
        for rank in middle:
            if seen <= rank < seen + n:
                found.append(value)
        seen += n
        if len(found) == 2:
            break
    return sum(found) / 2


# A whole task, written as the scripts leave one (see `restore`).
_RESTORE = (
    _LUA_HELPERS
    + """
local p, id, finished, history, created = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local key = p .. 't:' .. id
if redis.call('EXISTS', key) == 1 then return 0 end
for i = 6, #ARGV, 2 do
  if ARGV[i + 1] ~= '' then redis.call('HSET', key, ARGV[i], ARGV[i + 1]) end
end
if history ~= '' then redis.call('HSET', key, 'h', history) end
local t = redis.call('HMGET', key, 'st', 'm', 'n', 'f', 'du', 'ac')
local status, model = t[1], t[2] or ''
if model ~= '' then redis.call('SADD', p .. 'ms', model) end
ix_add(p, status, model, id)
redis.call('HINCRBY', p .. 'n', status, 1)
na_add(p, t[6], status, 1)
if finished == '1' then
  redis.call('ZADD', p .. 'fin:' .. status, t[4], id)
  redis.call('HINCRBY', p .. 'mf', model, 1)
  if status == 'failed' then redis.call('HINCRBY', p .. 'mx', model, 1) end
  if status == 'completed' and t[5] then
    redis.call('HINCRBY', p .. 'dur:' .. model, dur_key(t[5]), 1)
  end
else
  redis.call('HINCRBY', p .. 'ma', model, 1)
  redis.call('ZADD', qkey(p, t[6]), t[3], id)
  redis.call('ZADD', p .. 'a:' .. status, created, id)
  if status == 'processing' then
    redis.call('ZADD', p .. 'pm:' .. model, created, id)
    redis.call('SADD', p .. 'pms', model)
  end
end
return 1
"""
)

# The keys of the layout before the compact one, and its long field names.
_OLD_INDEXES = ("ids", "due", "finished", "count", "models", "processing_models")


def migrate(store: RedisTaskStore, page: int = 1000) -> int:
    """Convert a store written by an older version (`task:<id>` hashes with long
    field names, an `events:<id>` list each, `ids`/`finished`/... indexes) to the
    compact layout, a page at a time. Safe to interrupt and to run from several
    replicas at once: a task already converted is skipped, and the old `ids`
    index is consumed only after its tasks are written."""
    client, prefix = store.client, store.prefix
    old_ids = prefix + "ids"
    if not client.exists(old_ids):
        return 0
    converted = 0
    while True:
        ids = cast(list[str], client.zrange(old_ids, 0, page - 1))
        if not ids:
            break
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hgetall(f"{prefix}task:{task_id}")
            pipe.lrange(f"{prefix}events:{task_id}", 0, -1)
        answers = pipe.execute()
        batch = []
        for task_id, fields, lines in zip(ids, answers[::2], answers[1::2], strict=True):
            if not fields:
                continue
            task = _old_task(task_id, fields)
            history = []
            for line in lines:
                at, status, previous = line.split(" ")
                history.append(TaskEvent(float(at), Status(status), Status(previous)))
            batch.append((task, history))
        converted += store.restore(batch)
        pipe = client.pipeline(transaction=True)
        for task_id in ids:
            pipe.delete(f"{prefix}task:{task_id}", f"{prefix}events:{task_id}")
        pipe.zrem(old_ids, *ids)
        pipe.execute()
    stale = [prefix + name for name in _OLD_INDEXES]
    for pattern in ("active:*", "processing_by_model:*"):
        stale += list(client.scan_iter(match=prefix + pattern, count=1000))
    client.delete(*stale)
    return converted


def _old_task(task_id: str, fields: dict[str, str]) -> Task:
    short = {FIELDS[name]: value for name, value in fields.items() if name in FIELDS}
    return _task(task_id, short)
