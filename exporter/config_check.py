"""`check-config`: every problem a start would meet, found in one run.

The schema and the contradictions come from `config.check_config_file`; this
module adds what needs the world outside the file: the API key and the task
API's token (readable, usable, not readable by every user), the store's path,
the watched files, Redis, and the web configuration file. Problems are lines
of `FILE: FIELD: problem`; warnings are the same with `warning: ` before the
problem. Nothing here ever prints a secret.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from exporter.config import (
    API_KEY_ENV,
    AccountConfig,
    ApiConfig,
    ApiServerConfig,
    Config,
    ConfigError,
    DiscoveryConfig,
    Finding,
    ProxyConfig,
    StoreConfig,
    check_config_file,
    read_account_key,
    read_api_key,
    world_readable,
)
from exporter.config_env import changed_settings, origin_of

REDIS_CHECK_TIMEOUT_SECONDS = 3.0
SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass
class CheckResult:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)  # one line per source and server


def check_everything(
    config_file: str,
    web_config_file: str | None = None,
    listen_address: str = ":9847",
    environ: Mapping[str, str] | None = None,
) -> CheckResult:
    env = os.environ if environ is None else environ
    report = check_config_file(config_file)
    result = CheckResult(list(report.problems), list(report.warnings))
    sections = report.sections
    found: list[Finding] = []
    api, api_server = sections.get("api"), sections.get("api_server")
    store, discovery = sections.get("store"), sections.get("discovery")
    accounts = sections.get("accounts")
    if isinstance(accounts, list) and accounts:
        found += _account_key_findings(accounts, env)
    elif isinstance(api, ApiConfig):
        found += _api_key_findings(api, env, config_file)
    if isinstance(api_server, ApiServerConfig):
        found += _token_findings(api_server, env)
    if isinstance(store, StoreConfig):
        found += _store_findings(store)
    if isinstance(discovery, DiscoveryConfig):
        found += _discovery_findings(discovery, store if isinstance(store, StoreConfig) else None)
    for finding in found:
        line = finding.line(origin_of(finding.field, report.origins, config_file))
        (result.warnings if finding.warning else result.problems).append(line)
    web_summary = "no TLS, no basic auth"
    if web_config_file is not None:
        from exporter.web.security import load_web_security

        try:
            security = load_web_security(web_config_file)
            web_summary = security.describe() if security else web_summary
        except ConfigError as exc:
            result.problems += exc.problems
    if report.config is not None and not result.problems:
        result.summary = _summary(report.config, env, listen_address, web_summary)
        result.summary += _provenance(report.config, report.origins, config_file)
    return result


# ---- secrets -------------------------------------------------------------------------


def _api_key_findings(api: ApiConfig, env: Mapping[str, str], source: str) -> list[Finding]:
    try:
        key = read_api_key(Config(api=api), env)
    except ConfigError as exc:
        # read_api_key phrases its problems as `FIELD: problem`.
        return [Finding(*_split(problem)) for problem in exc.problems]
    found = []
    if key is None:
        found.append(
            Finding(
                "api.key_file",
                f"no API key: `run` needs ${API_KEY_ENV} or api.key_file "
                "(`lemondata-exporter demo` runs without one)",
                warning=True,
            )
        )
    if api.key_file is not None:
        loose = world_readable(api.key_file)
        if loose:
            found.append(Finding("api.key_file", loose, warning=True))
    return found


def _account_key_findings(accounts: list[AccountConfig], env: Mapping[str, str]) -> list[Finding]:
    """Each account's key: readable and usable; a variable not set yet is a warning."""
    config = Config(accounts=accounts)
    found = []
    for index, account in enumerate(accounts):
        try:
            key = read_account_key(config, index, env)
        except ConfigError as exc:
            found += [Finding(*_split(problem)) for problem in exc.problems]
            continue
        if key is None:
            found.append(
                Finding(
                    f"accounts[{index}].key_env",
                    f"${account.key_env} is not set: `run` needs the key of account {account.name}",
                    warning=True,
                )
            )
        if account.key_file is not None:
            loose = world_readable(account.key_file)
            if loose:
                found.append(Finding(f"accounts[{index}].key_file", loose, warning=True))
    return found


def _account_lines(config: Config, env: Mapping[str, str]) -> list[str]:
    """One line per account: where its key comes from and whether it is there (never
    the key)."""
    lines = []
    for account in config.accounts:
        if account.key_file is not None:
            where, there = f"key from {account.key_file}", account.key_file.is_file()
        else:
            where, there = (
                f"key from ${account.key_env}",
                bool(env.get(account.key_env or "", "").strip()),
            )
        rps = account.requests_per_second or config.polling.requests_per_second
        lines.append(
            f"  account {account.name}: {where} ({'found' if there else 'not found'}), "
            f"at most {rps:g} requests/s"
        )
    return lines


def _split(problem: str) -> tuple[str, str]:
    field_name, _, message = problem.partition(": ")
    return field_name, message


def _token_findings(api_server: ApiServerConfig, env: Mapping[str, str]) -> list[Finding]:
    from exporter.api.auth import TokenError, read_token

    try:
        read_token(Config(api_server=api_server), env)
    except TokenError as exc:
        return [Finding(*_split(str(exc)))]
    if api_server.token_file is not None:
        loose = world_readable(api_server.token_file)
        if loose:
            return [Finding("api_server.token_file", loose, warning=True)]
    return []


# ---- files and Redis ----------------------------------------------------------------


def store_path_problem(path: Path) -> str | None:
    """Why SQLite could not keep its file (and its -wal, -shm files) at `path`."""
    if path.is_dir():
        return f"{path} is a folder; store.path names the SQLite file inside it"
    folder = path.absolute().parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"cannot create {path}: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot create {path}: the folder {existing} is not writable by this user"
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            return f"{path} is not readable and writable by this user"
        try:
            with path.open("rb") as handle:
                header = handle.read(len(SQLITE_HEADER))
        except OSError as exc:
            return f"cannot read {path}: {exc.strerror}"
        if header and header != SQLITE_HEADER:
            return f"{path} exists and is not a SQLite database"
    return None


def _store_findings(store: StoreConfig) -> list[Finding]:
    if store.backend == "redis":
        problem = redis_problem(store.redis_url or "")
        return [Finding("store.redis_url", problem)] if problem else []
    problem = store_path_problem(store.path)
    return [Finding("store.path", problem)] if problem else []


def watched_file_finding(path: Path, field_name: str) -> Finding | None:
    if path.is_dir():
        return Finding(field_name, f"{path} is a folder, not a file")
    if path.exists():
        if not os.access(path, os.R_OK):
            return Finding(field_name, f"{path} is not readable by this user")
        return None
    folder = path.absolute().parent
    if not folder.is_dir():
        return Finding(
            field_name, f"{path}: the folder {folder} does not exist (a typo?)", warning=True
        )
    return Finding(
        field_name,
        f"{path} does not exist yet; it is read once it appears (a typo in the path?)",
        warning=True,
    )


def _discovery_findings(discovery: DiscoveryConfig, store: StoreConfig | None) -> list[Finding]:
    found = []
    for number, source in enumerate(discovery.files):
        finding = watched_file_finding(source.path, f"discovery.files[{number}].path")
        if finding:
            found.append(finding)
    stream = discovery.redis_stream
    if stream is not None and stream.redis_url and stream.redis_url != (store and store.redis_url):
        problem = redis_problem(stream.redis_url)
        if problem:
            found.append(Finding("discovery.redis_stream.redis_url", problem))
    return found


def redis_problem(url: str) -> str | None:
    """None when Redis answers PING at `url`; the password never appears in the message."""
    import redis

    from exporter.store.redis import redact_url

    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=REDIS_CHECK_TIMEOUT_SECONDS,
            socket_connect_timeout=REDIS_CHECK_TIMEOUT_SECONDS,
        )
    except ValueError as exc:
        return f"not a usable Redis URL: {exc}"
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"Redis at {redact_url(url)} does not answer: {type(exc).__name__}"
    finally:
        client.close()
    return None


# ---- what would run -----------------------------------------------------------------


def _summary(
    config: Config, env: Mapping[str, str], listen_address: str, web_summary: str
) -> list[str]:
    from exporter.api.auth import TOKEN_ENV

    key_source = (
        f"API key from api.key_file {config.api.key_file}"
        if config.api.key_file
        else (
            f"API key from ${API_KEY_ENV}" if env.get(API_KEY_ENV, "").strip() else "no API key yet"
        )
    )
    if config.accounts:
        key_source = f"{len(config.accounts)} accounts, each with its own key and budget"
    polling = config.polling
    lines = [
        f"upstream: {config.api.base_url} ({key_source})",
        *_account_lines(config, env),
        f"polling: {polling.strategy}, a cycle every {polling.cycle_interval_seconds:g} s, "
        f"at most {polling.requests_per_second:g} requests/s",
        "store: "
        + (
            f"SQLite {config.store.path}"
            if config.store.backend == "sqlite"
            else f"Redis {_redacted(config.store.redis_url)} (prefix {config.store.redis_prefix})"
        ),
        f"tasks in the config: {len(config.tasks)}",
    ]
    files = config.discovery.files
    lines.append(
        "watched files: "
        + (", ".join(f"{f.path} (source {f.name})" for f in files) if files else "none")
    )
    stream = config.discovery.redis_stream
    lines.append(
        "Redis stream: "
        + (
            f"{stream.stream} on {_redacted(stream.redis_url or config.store.redis_url)} "
            f"(group {stream.group})"
            if stream
            else "off"
        )
    )
    lines.append("proxy: " + _proxy_line(config.proxy, config.api.base_url))
    token_file = config.api_server.token_file
    token_source = (
        f"api_server.token_file {token_file}"
        if token_file
        else (f"${TOKEN_ENV}" if env.get(TOKEN_ENV, "").strip() else None)
    )
    lines.append(
        f"task API: on at /api/v1/ (token from {token_source})"
        if token_source
        else f"task API: off (set ${TOKEN_ENV} or api_server.token_file to turn it on)"
    )
    lines.append(f"web: {listen_address}: /metrics, / and the status page /status; {web_summary}")
    return lines


def _provenance(config: Config, origins: Mapping[str, str], config_file: str) -> list[str]:
    """Each setting not at its default, and whether the file or a variable set it."""
    changed = changed_settings(config, Config())
    if not changed:
        return ["settings: all defaults"]
    lines = ["settings not at their defaults:"]
    for path, value in changed:
        if isinstance(value, list):
            shown = f"{len(value)} item(s)"
        elif path.endswith("redis_url"):
            shown = _redacted(value)
        else:
            shown = json.dumps(value)
        lines.append(f"  {path} = {shown} (from {origin_of(path, origins, config_file)})")
    return lines


def _proxy_line(proxy: ProxyConfig, base_url: str) -> str:
    if not proxy.enabled:
        return "off (proxy.enabled)"
    return f"on {proxy.listen_address}, forwarding to {base_url}"


def _redacted(url: str | None) -> str:
    from exporter.store.redis import redact_url

    return redact_url(url or "")
