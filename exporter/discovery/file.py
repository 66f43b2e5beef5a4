"""A watched file of task IDs, read as it grows.

One entry per line: a bare task ID, or a JSON object with `task_id` (or `id`)
and optional `model` and `poll_url`. Blank lines and lines starting with `#`
are skipped. The read position (inode and offset) is kept in the store, so a
restart neither skips nor repeats lines; a rotated or truncated file is read
again from its start.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from exporter.config import check_poll_path
from exporter.discovery.base import DiscoveryBatch
from exporter.model import DiscoveredTask, valid_task_id

MAX_LINE_BYTES = 4096
MAX_READ_BYTES = 1 << 20  # per pass; a large backlog is taken in steps


class FileSource:
    def __init__(self, path: Path, name: str = "file") -> None:
        self.path = path
        self.name = name

    def discover(self, state: str | None) -> DiscoveryBatch:
        inode, offset = _parse_state(state)
        try:
            with self.path.open("rb") as handle:
                stat = os.fstat(handle.fileno())
                if stat.st_ino != inode or stat.st_size < offset:
                    inode, offset = stat.st_ino, 0  # new or truncated file
                handle.seek(offset)
                chunk = handle.read(MAX_READ_BYTES)
        except FileNotFoundError:
            return DiscoveryBatch()  # not written yet: normal, not an error
        except OSError as exc:
            return DiscoveryBatch(errors=[f"cannot read {self.path}: {exc.strerror}"])
        end = chunk.rfind(b"\n") + 1
        if end == 0:
            if len(chunk) < MAX_LINE_BYTES:
                return DiscoveryBatch()  # an unfinished line; wait for its newline
            end = len(chunk)  # a line too long to ever be valid: skip it
        tasks, errors = [], []
        for number, raw in enumerate(chunk[:end].splitlines(), start=1):
            entry = self._parse_line(raw)
            if isinstance(entry, DiscoveredTask):
                tasks.append(entry)
            elif entry:
                errors.append(f"{self.path}: entry {number} after byte {offset}: {entry}")
        return DiscoveryBatch(tasks, errors, json.dumps([inode, offset + end]))

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
            return DiscoveredTask(line, self.name)
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
        return DiscoveredTask(task_id, self.name, model=model or None, poll_url=poll_url)


def _parse_state(state: str | None) -> tuple[int, int]:
    try:
        inode, offset = json.loads(state) if state else (0, 0)
        return int(inode), int(offset)
    except (ValueError, TypeError):
        return 0, 0
