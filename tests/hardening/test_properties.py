"""Property-based tests over bad input: config files, status bodies, outcome sequences."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from exporter.config import Config, ConfigError, load_config, parse_config
from exporter.model import (
    FINISHED_STATUSES,
    DiscoveredTask,
    OutcomeKind,
    PollOutcome,
    Status,
    StatusReport,
)
from exporter.poller.transitions import PollPolicy, decide
from exporter.store.sqlite import SqliteTaskStore
from exporter.upstream.parse import (
    MAX_ERROR_CHARS,
    MAX_FIELD_CHARS,
    InvalidResponse,
    parse_status_body,
)

SOURCE = "config.yaml"
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---- config files ------------------------------------------------------------------

VALID: dict[str, Any] = {
    "api": {
        "base_url": "https://api.lemondata.cc",
        "status_path": "/v1/images/generations/{task_id}",
        "timeout_seconds": 10,
        "max_response_bytes": 1048576,
        "max_connections": 8,
    },
    "polling": {
        "cycle_interval_seconds": 1,
        "task_interval_seconds": 5,
        "requests_per_second": 5,
        "max_wait_seconds": 1800,
        "backoff_base_seconds": 2,
        "backoff_max_seconds": 300,
        "shutdown_timeout_seconds": 10,
    },
    "store": {"path": "store.db", "retention_seconds": 86400},
    "tasks": [{"id": "img_1", "model": "flux-pro", "poll_url": "/v1/tasks/img_1"}],
    "discovery": {"interval_seconds": 2, "files": [{"path": "tasks.jsonl", "name": "file"}]},
    "failure_reasons": [{"reason": "quota", "pattern": "(?i)quota"}],
    "metrics": {"duration_buckets": [1, 2, 5], "pending_buckets": [1, 2], "max_models": 50},
    "log_level": "info",
}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", "0", "-1", "1e400", "nan", ".inf", "/", "//x", "{task_id}", "\x00"])
)
yaml_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, (*prefix, index))


VALID_PATHS = [p for p in paths(VALID) if p]


def dotted(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def check_error(error: ConfigError) -> None:
    assert error.problems
    for problem in error.problems:
        assert isinstance(problem, str) and problem.startswith(f"{SOURCE}: ")


def usable(config: Config, folder: Path) -> None:
    """A config that validates must also start: the agent can be built from it."""
    from exporter.agent import Agent

    store = {"path": str(folder / "store.db")}
    config = config.model_copy(update={"store": config.store.model_copy(update=store)})
    agent = Agent(config, SecretStr("sk-property-test"))
    agent.cycle.stop()
    agent.client.close()
    agent.store.close()


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@FAST
@given(data=yaml_values)
def test_any_yaml_structure_validates_or_names_a_problem(data: Any) -> None:
    try:
        parse_config(data, SOURCE)
    except ConfigError as error:
        check_error(error)


@FAST
@given(
    path=st.sampled_from(VALID_PATHS),
    action=st.sampled_from(["replace", "delete", "add"]),
    value=yaml_values,
    key=st.text(min_size=1, max_size=10),
)
def test_mutated_configs_name_the_field(
    folder: Path, path: tuple[Any, ...], action: str, value: Any, key: str
) -> None:
    data = copy.deepcopy(VALID)
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    else:
        target = parent[last]
        assume(isinstance(target, dict) and key not in target)
        target[key] = value
    try:
        config = parse_config(data, SOURCE)
    except ConfigError as error:
        check_error(error)
        text = "\n".join(error.problems)
        # The problem is reported at the mutated field or one of its parents.
        prefixes = [dotted(path[:n]) for n in range(len(path), 0, -1)]
        assert any(f"{SOURCE}: {prefix}" in text for prefix in prefixes), (path, text)
        return
    usable(config, folder)


@FAST
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_file_text_loads_or_names_the_file(folder: Path, text: str) -> None:
    path = folder / SOURCE
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        load_config(path)
    except ConfigError as error:
        assert all(problem.startswith(str(path)) for problem in error.problems)


@FAST
@given(data=yaml_values.map(lambda v: {"api": v}) | yaml_values.map(lambda v: {"polling": v}))
def test_yaml_dumped_sections_validate_or_name_a_problem(folder: Path, data: Any) -> None:
    path = folder / SOURCE
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    try:
        config = load_config(path)
    except ConfigError as error:
        assert all(problem.startswith(f"{path}: ") for problem in error.problems)
        return
    usable(config, folder)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("api: [\n", "not valid YAML (line"),
        ("polling:\n  requests_per_second: -1\n", "polling.requests_per_second: Input should be"),
        ("polling:\n  cycle_interval_seconds: .inf\n", "polling.cycle_interval_seconds: "),
        ("discovery:\n  files: [{path: a, nam: x}]\n", "discovery.files[0].nam: unknown setting"),
        ("metrics:\n  duration_buckets: [2, 1]\n", "metrics.duration_buckets: must be"),
        ('store:\n  path: "a\\0b"\n', "store.path: "),
        ("- 1\n- 2\n", "the top level must be a mapping"),
    ],
)
def test_check_config_reports_without_a_traceback(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--config.file", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "LEMONDATA_API_KEY": "sk-x"},
    )
    assert result.returncode == 1, result
    assert f"{path}: {expected}" in result.stderr
    assert "Traceback" not in result.stderr


# ---- status bodies -----------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)
FIELDS = ("status", "created", "created_at", "updated", "updated_at", "model", "error")
FIELDS += ("cancelled", "progress", "task_id")
status_like = st.dictionaries(st.sampled_from(FIELDS), json_values) | st.fixed_dictionaries(
    {"status": st.sampled_from(["completed", "failed", "pending", "x" * 300, ""])},
    optional={field: json_values for field in FIELDS[1:]},
)


def check_report(report: StatusReport) -> None:
    assert isinstance(report.status, str) and 0 < len(report.status) <= MAX_FIELD_CHARS
    for value in (report.created, report.updated):
        assert value is None or (isinstance(value, float) and math.isfinite(value) and value > 0)
    assert report.model is None or 0 < len(report.model) <= MAX_FIELD_CHARS
    assert report.error is None or len(report.error) <= MAX_ERROR_CHARS
    assert report.progress is None or 0 <= report.progress <= 100
    assert isinstance(report.cancelled, bool)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | status_like.map(lambda v: json.dumps(v).encode())
    | st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)
)
def test_status_bodies_parse_or_are_invalid(body: bytes) -> None:
    try:
        report = parse_status_body(body)
    except InvalidResponse:
        return
    check_report(report)


# ---- decide: any sequence of outcomes ------------------------------------------------

timestamps = st.none() | st.floats(min_value=1e-3, max_value=1e11) | st.just(NOW_GUESS := 1.7e9)
reports = st.builds(
    StatusReport,
    status=st.sampled_from(["pending", "processing", "completed", "failed", "queued", "x"]),
    created=timestamps,
    updated=timestamps,
    model=st.none() | st.text(max_size=10),
    error=st.none() | st.text(max_size=30) | st.just("Cancelled by user"),
    cancelled=st.booleans(),
    progress=st.none() | st.floats(0, 100),
)
outcomes = st.one_of(
    st.builds(PollOutcome, kind=st.just(OutcomeKind.REPORT), code=st.just(200), report=reports),
    st.builds(
        PollOutcome,
        kind=st.sampled_from([k for k in OutcomeKind if k is not OutcomeKind.REPORT]),
        code=st.none() | st.integers(100, 999),
        retry_after=st.none() | st.floats(0, 3600),
    ),
)
policies = st.builds(
    PollPolicy,
    task_interval=st.floats(1e-3, 1e6),
    max_wait=st.floats(1e-3, 1e9),
    backoff_base=st.floats(1e-3, 1e6),
    backoff_max=st.floats(1e-3, 1e7),
)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(outcomes, st.floats(1e-3, 1e5), st.floats(0, 1, exclude_max=True), st.booleans()),
        min_size=1,
        max_size=30,
    ),
    policy=policies,
    errors=st.integers(0, 10**6),
)
def test_decide_never_raises_finishes_once_and_moves_on(
    steps: list[tuple[PollOutcome, float, float, bool]], policy: PollPolicy, errors: int
) -> None:
    store = SqliteTaskStore(":memory:")
    now = NOW_GUESS
    store.add([DiscoveredTask("img_1", "config")], now)
    # A task far into a run of errors: backoff must not overflow.
    store._db.execute("UPDATE tasks SET consecutive_errors = ?", (errors,))
    finishes = 0
    stale = store.get("img_1")
    finished_row = None
    try:
        for outcome, gap, jitter, use_stale in steps:
            now += gap
            fresh = store.get("img_1")
            assert fresh is not None and stale is not None
            task = stale if use_stale else fresh  # a racing poller may hold an old copy
            update = decide(task, outcome, now, policy, jitter)
            assert update.task.next_poll_at > now
            assert update.task.consecutive_errors >= 0
            if task.status not in FINISHED_STATUSES:
                assert (update.finish is not None) == (update.task.status in FINISHED_STATUSES)
            if update.finish is not None:
                finish = update.finish
                assert finish.status is update.task.status
                assert finish.duration is None or finish.duration >= 0
                assert finish.uncertainty is None or finish.uncertainty >= 0
            assert update.pending_seconds is None or update.pending_seconds >= 0
            if store.apply("img_1", update, now, None) and update.finish is not None:
                finishes += 1
                finished_row = store.get("img_1")
            if finished_row is not None:
                assert store.get("img_1") == finished_row  # nothing changes it afterwards
            stale = fresh
    finally:
        store.close()
    assert finishes <= 1
    if finished_row is not None:
        assert (
            finished_row.status in FINISHED_STATUSES and finished_row.status is not Status.UNKNOWN
        )
