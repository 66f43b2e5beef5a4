"""The test harness, in one place: ports, waits, processes, metrics, a fake upstream.

- net: `free_port`, `wait_for` (polls; never sleep to wait for something)
- metrics: `parse_metrics`, `total`, `by_label`
- processes: the exporter, the simulator and redis-server as processes, `process`
  for any other binary (Prometheus, Alertmanager), `stop`
- upstream: `FakeUpstream`, where the simulator cannot serve
- fixtures: the in-process `simulator` fixture (registered for every test by
  tests/conftest.py), `exporter_config`, `create_tasks`
- guard: keeps processes out of the fast lane (`-m "not integration"`)
"""

from tests.harness.metrics import Samples, by_label, parse_metrics, total
from tests.harness.net import free_port, wait_for
from tests.harness.processes import (
    ExporterProcess,
    RedisServer,
    SimulatorProcess,
    alertmanager_process,
    process,
    require_redis_server,
    stop,
)
from tests.harness.upstream import FakeUpstream, Handler, Request, serving

__all__ = [
    "ExporterProcess",
    "FakeUpstream",
    "Handler",
    "RedisServer",
    "Request",
    "Samples",
    "SimulatorProcess",
    "alertmanager_process",
    "by_label",
    "free_port",
    "parse_metrics",
    "process",
    "require_redis_server",
    "serving",
    "stop",
    "total",
    "wait_for",
]
