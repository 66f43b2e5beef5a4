"""Register tasks with a running exporter, from Python or the shell.

Python, one line::

    from exporter.track import track_task
    track_task("img_123", model="flux-pro", url="http://localhost:9847", token="...")

Shell::

    lemondata-exporter track img_123 img_456 --model flux-pro --token-file /run/secrets/token

With several `accounts:` configured, `--account NAME` (`account=` in Python) says
whose key polls the tasks; without it, the first account's.

The token comes from the argument, else `--token-file`, else
$LEMONDATA_EXPORTER_TOKEN; the exporter's URL from the argument, else
$LEMONDATA_EXPORTER_URL, else http://localhost:9847. Registration is
idempotent: a task the exporter already knows is left as it is.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from exporter.api.auth import TOKEN_ENV
from exporter.config import read_secret_file

URL_ENV = "LEMONDATA_EXPORTER_URL"
DEFAULT_URL = "http://localhost:9847"
TASKS_PATH = "/api/v1/tasks"
# Tasks per request: well under the server's default batch and body limits.
CHUNK = 50


class TrackError(Exception):
    """The exporter refused the tasks, or could not be reached."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class TrackResult:
    added: list[str] = field(default_factory=list)  # tracked from now on
    known: list[str] = field(default_factory=list)  # already tracked; left as they were


def track_tasks(
    task_ids: Iterable[str],
    model: str | None = None,
    poll_url: str | None = None,
    *,
    account: str | None = None,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 10.0,
    session: requests.Session | None = None,
) -> TrackResult:
    """Register tasks; `poll_url` may hold `{task_id}`, replaced by each task's ID.

    Raises TrackError when the exporter refuses them or cannot be reached.
    """
    ids = list(task_ids)
    if poll_url is not None and len(ids) > 1 and "{task_id}" not in poll_url:
        raise TrackError("with several tasks, poll_url must contain {task_id}")
    token = token or os.environ.get(TOKEN_ENV, "").strip()
    if not token:
        raise TrackError(f"no token: pass one, or set ${TOKEN_ENV}")
    endpoint = (url or os.environ.get(URL_ENV) or DEFAULT_URL).rstrip("/") + TASKS_PATH
    result = TrackResult()
    http = session or requests.Session()
    try:
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            batch = [_entry(task_id, model, poll_url, account) for task_id in chunk]
            answer = _post(http, endpoint, token, {"tasks": batch}, timeout)
            result.added.extend(answer.get("added", []))
            result.known.extend(answer.get("known", []))
    finally:
        if session is None:
            http.close()
    return result


def track_task(
    task_id: str,
    model: str | None = None,
    poll_url: str | None = None,
    *,
    account: str | None = None,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 10.0,
) -> bool:
    """Register one task; True if it is new, False if the exporter knew it already."""
    result = track_tasks(
        [task_id], model, poll_url, account=account, url=url, token=token, timeout=timeout
    )
    return bool(result.added)


def _entry(
    task_id: str, model: str | None, poll_url: str | None, account: str | None
) -> dict[str, str]:
    entry = {"task_id": task_id}
    if model:
        entry["model"] = model
    if account:
        entry["account"] = account
    if poll_url:
        entry["poll_url"] = poll_url.replace("{task_id}", task_id)
    return entry


def _post(
    http: requests.Session, endpoint: str, token: str, body: dict[str, Any], timeout: float
) -> dict[str, Any]:
    try:
        response = http.post(
            endpoint,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        raise TrackError(f"cannot reach the exporter at {endpoint}: {type(exc).__name__}") from None
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.status_code in (200, 201) and isinstance(data, dict):
        return data
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        code, message = str(error.get("code", "")), str(error.get("message", ""))
        raise TrackError(
            f"{message} (HTTP {response.status_code} {code})", response.status_code, code
        )
    raise TrackError(
        f"unexpected answer from {endpoint}: HTTP {response.status_code}", response.status_code
    )


# ---- command line -------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("task_ids", nargs="+", metavar="ID", help="task IDs to watch")
    parser.add_argument("--model", default=None, help="the tasks' model")
    parser.add_argument(
        "--account",
        default=None,
        help="with several accounts configured, the account whose key polls the tasks",
    )
    parser.add_argument(
        "--poll-url",
        default=None,
        help="path to poll on the API base, e.g. /v1/tasks/{task_id} ({task_id} is replaced)",
    )
    parser.add_argument(
        "--url",
        default=None,
        help=f"the exporter (default ${URL_ENV} or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--token-file", default=None, help=f"file holding the API token (default ${TOKEN_ENV})"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")


def run(args: argparse.Namespace) -> int:
    token = None
    if args.token_file:
        try:
            token = read_secret_file(Path(args.token_file))
        except ValueError as exc:
            print(f"--token-file: {exc}", file=sys.stderr)
            return 2
    elif not os.environ.get(TOKEN_ENV, "").strip():
        print(f"no token: pass --token-file or set ${TOKEN_ENV}", file=sys.stderr)
        return 2
    try:
        result = track_tasks(
            args.task_ids,
            args.model,
            args.poll_url,
            account=args.account,
            url=args.url,
            token=token,
            timeout=args.timeout,
        )
    except TrackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for task_id in result.added:
        print(f"added {task_id}")
    for task_id in result.known:
        print(f"known {task_id}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lemondata-exporter track", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
