"""A watched file of task IDs, read as it grows.

One entry per line: a bare task ID, or a JSON object with `task_id` (or `id`)
and optional `model` and `poll_url`. Blank lines and lines starting with `#`
are skipped. The read position (inode, offset and line number) is kept in the
store, so a restart neither skips nor repeats lines; a rotated or truncated
file is read again from its start. A file that does not exist is reported once
(a typo in the path would otherwise be silent) and read once it appears.
Problems name the line, counted from 1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import BinaryIO

from exporter.config import check_poll_path
from exporter.discovery.base import DiscoveryBatch
from exporter.model import DEFAULT_ACCOUNT, DiscoveredTask, valid_task_id

MAX_LINE_BYTES = 4096
MAX_READ_BYTES = 1 << 20  # per pass; a large backlog is taken in steps


class FileSource:
    def __init__(self, path: Path, name: str = "file", account: str = DEFAULT_ACCOUNT) -> None:
        self.path = path
        self.name = name
        self.account = account  # of every task in the file
        self._missing_reported = False

    def discover(self, state: str | None) -> DiscoveryBatch:
        inode, offset, line = _parse_state(state)
        try:
            with self.path.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                if stat.st_ino != inode or stat.st_size < offset:
                    inode, offset, line = stat.st_ino, 0, 0  # new or truncated file
                elif line < 0:  # a position saved before line numbers were kept
                    line = _count_lines(handle, offset)
                handle.seek(offset)
                chunk = handle.read(MAX_READ_BYTES)
        except FileNotFoundError:
            if self._missing_reported:
                return DiscoveryBatch()
            self._missing_reported = True  # once, until the file has been seen again
            return DiscoveryBatch(
                errors=[
                    f"{self.path} does not exist; tasks appended to it are read once it "
                    "appears (is the path in discovery.files right?)"
                ]
            )
        except OSError as exc:
            return DiscoveryBatch(errors=[f"cannot read {self.path}: {exc.strerror}"])
        self._missing_reported = False
        end = chunk.rfind(b"\n") + 1
        if end == 0:
            if len(chunk) < MAX_LINE_BYTES:
                return DiscoveryBatch()  # an unfinished line; wait for its newline
            end = len(chunk)  # a line too long to ever be valid: skip it
        tasks, errors = [], []
        for raw in chunk[:end].splitlines(keepends=True):
            number = line + 1
            line += raw.endswith(b"\n")
            entry = self._parse_line(raw.rstrip(b"\r\n"))
            if isinstance(entry, DiscoveredTask):
                tasks.append(entry)
            elif entry:
                errors.append(f"{self.path}: line {number}: {entry}")
        return DiscoveryBatch(tasks, errors, json.dumps([inode, offset + end, line]))

    def _parse_line(self, raw: bytes) -> DiscoveredTask | str | None:
        """A task, an error message, or None for a line to skip."""
        if len(raw) > MAX_LINE_BYTES:
            return "line too long"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            return "not UTF-8"
        if not line or line.startswith("#"):
            return None
        if not line.startswith("{"):
            if not valid_task_id(line):
                return "not a valid task ID"
            return DiscoveredTask(line, self.name, account=self.account)
        try:
            data = json.loads(line)
        except ValueError:
            return "not valid JSON"
        if not isinstance(data, dict):
            return "not a JSON object"
        task_id = data.get("task_id", data.get("id"))
        model, poll_url = data.get("model"), data.get("poll_url")
        if not isinstance(task_id, str) or not valid_task_id(task_id):
            return "task_id missing or not valid"
        if model is not None and not isinstance(model, str):
            return "model is not a string"
        if poll_url is not None:
            try:
                check_poll_path(poll_url if isinstance(poll_url, str) else "")
            except ValueError as exc:
                return f"poll_url {exc}"
        return DiscoveredTask(
            task_id, self.name, model=model or None, poll_url=poll_url, account=self.account
        )


def _parse_state(state: str | None) -> tuple[int, int, int]:
    """(inode, offset, lines before offset); lines is -1 when the state predates it."""
    try:
        saved = json.loads(state) if state else [0, 0, 0]
        inode, offset, *rest = saved
        return int(inode), int(offset), int(rest[0]) if rest else -1
    except (ValueError, TypeError):
        return 0, 0, 0


def _count_lines(handle: BinaryIO, offset: int) -> int:
    handle.seek(0)
    lines, left = 0, offset
    while left > 0:
        block = handle.read(min(left, MAX_READ_BYTES))
        if not block:
            break
        lines += block.count(b"\n")
        left -= len(block)
    return lines
