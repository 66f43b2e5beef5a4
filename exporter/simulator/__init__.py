"""A real HTTP imitation of the LemonData async task API, for demos, tests and benchmarks.

The user's guide, with a worked example, is docs/simulator.md.

Endpoints (all need ``Authorization: Bearer <key>``; the default key is
``sk-simulator``):

- ``POST /v1/images/generations``, ``POST /v1/videos/generations``: body
  ``{"model": ..., "prompt": ..., "n": ...}``; answers ``task_id``/``id``
  (``img_<24 hex>`` or ``vid_<24 hex>``), ``status: "pending"``, ``created``,
  ``model`` and ``poll_url`` (``/v1/tasks/<id>``).
- ``GET /v1/images/generations/{id}`` and ``GET /v1/images/{id}``: the image
  shape (``created``, ``task_id``, ``status``, ``data``, ``error`` when failed;
  no ``updated``, ``model``, ``progress`` or ``cancelled``).
- ``GET /v1/tasks/{id}`` and ``GET /v1/videos/generations/{id}``: the unified
  shape (``id``, ``task_id``, ``status``, ``created``, ``updated``, ``model``,
  ``progress``, ``poll_url``, ``error``, ``cancelled``, ``video_url``, ``data``).

Unknown, lost and expired tasks answer 404 ``async_task_not_found``. Every
authenticated answer carries ``X-RateLimit-Limit/-Remaining/-Reset`` (except
fault answers that imitate a proxy: 429/502/503/HTML faults); over the
per-key, per-minute budget (real time) the answer is 429
``rate_limit_exceeded`` with ``Retry-After``.

Tasks go pending -> processing -> completed | failed | cancelled (reported as
``failed`` with ``cancelled: true``), with durations and failure rates from a
per-model profile (``models.PROFILES``). The whole life of a task is drawn at
creation from ``seed`` and the task's number, so runs are reproducible, and the
state at any time is a pure function of the plan (``lifecycle.observe``).
``time_scale`` divides durations and retention (not rate-limit windows).
A fraction of tasks (``lost_fraction``) vanishes before finishing; finished
tasks answer 404 after ``retention_seconds``.

Test helpers, without auth: ``GET /_sim/ground_truth`` (every task's real
status, times, error and error family ``reason``, plus request counts by code
and path kind), ``POST /_sim/reset``, ``GET /_sim/faults``, ``PUT /_sim/faults``,
``GET /_sim/health``.

Faults never change the ground truth. ``PUT /_sim/faults`` replaces the whole
configuration with a JSON object from fault name to either a probability
(applied per status request), ``true``, ``null`` (off), or an object of
``probability`` (default 1, or 0 when only a window is given) and parameters::

    {"http_500": 0.1,
     "slow": {"probability": 0.2, "delay_seconds": 3},
     "http_503": {"burst_seconds": 10},
     "unauthorized": {"unauthorized_for_seconds": 10}}

Payload faults (each drawn on its own):
  ``unknown_status``      status like "queued" or "running_v2"
  ``status_backwards``    a completed task reported as processing
  ``bad_timestamps``      created/updated missing, negative, far-future or in ms
  ``hostile_error_text``  failed tasks' errors hold HTML/script or control characters,
                          sometimes megabytes (``huge_probability``, ``huge_bytes``)
Response faults (at most one per request, in this order):
  ``unauthorized``        401; ``unauthorized_for_seconds`` = every API request for a while
  ``rate_limit_429``      429 with Retry-After only sometimes
                          (``retry_after_probability``, ``retry_after_seconds``)
  ``http_500``, ``http_502``, ``http_503``  (``burst_seconds`` = every API request for a while)
  ``html_error``          an HTML page as 200 or 502 (``ok_probability``)
  ``malformed_json``      a body that is not JSON
  ``huge_body``           valid JSON padded to ``size_bytes`` (default 20 MB)
  ``wrong_content_type``  valid JSON labelled text/plain
Delivery faults (at most one per request, in this order):
  ``timeout``             no answer for ``seconds`` (default 30)
  ``reset``               headers and ``fraction`` of the body, then a TCP reset
  ``drip``                the body a byte every ``interval_seconds``
  ``slow``                the answer after ``delay_seconds``

Python::

    sim = Simulator(SimulatorSettings(port=0, api_keys=("sk-sim",), time_scale=60.0, seed=1))
    sim.start(); sim.url; sim.create_task(model="flux-pro", kind="image")
    sim.ground_truth(); sim.set_faults({"http_502": 0.05}); sim.stop()

Command line: ``lemondata-exporter simulate`` or ``python -m exporter.simulator``
(``--help`` lists the flags; ``--fault NAME=VALUE`` takes the JSON values above).
"""

from exporter.simulator.app import Simulator
from exporter.simulator.faults import FAULT_NAMES, FaultConfigError
from exporter.simulator.lifecycle import PlanOverrides, TaskPlan, observe, plan_task
from exporter.simulator.models import PROFILES, ModelProfile
from exporter.simulator.settings import DEFAULT_API_KEY, SimulatorSettings

__all__ = [
    "DEFAULT_API_KEY",
    "FAULT_NAMES",
    "PROFILES",
    "FaultConfigError",
    "ModelProfile",
    "PlanOverrides",
    "Simulator",
    "SimulatorSettings",
    "TaskPlan",
    "observe",
    "plan_task",
]
