"""Response shapes of the upstream API, built from a plan and its observation."""

from __future__ import annotations

from typing import Any

from exporter.simulator.lifecycle import Observation, TaskPlan
from exporter.simulator.reply import Reply, error_reply

CDN = "https://cdn.lemondata.example"


def timestamp(value: float, as_float: bool) -> int | float:
    """Real API timestamps are integer unix seconds; scaled runs need finer ones."""
    return round(value, 3) if as_float else int(value)


def image_urls(plan: TaskPlan) -> list[str]:
    return [f"{CDN}/images/{plan.task_id}/{index}.png" for index in range(plan.n)]


def video_url(plan: TaskPlan) -> str:
    return f"{CDN}/videos/{plan.task_id}.mp4"


def _image_data(plan: TaskPlan, completed: bool) -> list[dict[str, str]]:
    urls = image_urls(plan) if completed else [""] * plan.n
    return [{"url": url, "revised_prompt": plan.prompt} for url in urls]


def create_payload(plan: TaskPlan, as_float: bool) -> dict[str, Any]:
    return {
        "task_id": plan.task_id,
        "id": plan.task_id,
        "status": "pending",
        "created": timestamp(plan.created, as_float),
        "model": plan.model,
        "poll_url": plan.poll_url,
    }


def image_status_payload(plan: TaskPlan, obs: Observation, as_float: bool) -> dict[str, Any]:
    """`GET /v1/images/generations/{id}`: no `updated`, `model`, `progress` or `cancelled`."""
    payload: dict[str, Any] = {
        "created": timestamp(plan.created, as_float),
        "task_id": plan.task_id,
        "status": obs.api_status,
        "data": _image_data(plan, obs.truth == "completed"),
    }
    if obs.api_status == "failed":
        payload["error"] = plan.error or ""
    return payload


def unified_status_payload(plan: TaskPlan, obs: Observation, as_float: bool) -> dict[str, Any]:
    """`GET /v1/tasks/{id}` and `GET /v1/videos/generations/{id}`."""
    payload: dict[str, Any] = {
        "id": plan.task_id,
        "task_id": plan.task_id,
        "status": obs.api_status,
        "created": timestamp(plan.created, as_float),
        "updated": timestamp(obs.updated, as_float),
        "model": plan.model,
        "progress": obs.progress,
        "poll_url": plan.poll_url,
    }
    if obs.api_status == "failed":
        payload["error"] = plan.error or ""
    if obs.cancelled:
        payload["cancelled"] = True
    if obs.truth == "completed":
        if plan.kind == "video":
            payload["video_url"] = video_url(plan)
        else:
            payload["data"] = _image_data(plan, True)
    return payload


def invalid_key_reply() -> Reply:
    return error_reply(401, "Invalid API key", "authentication_error", "invalid_api_key")


def task_not_found_reply() -> Reply:
    return error_reply(
        404,
        "Task not found or no longer available",
        "invalid_request_error",
        "async_task_not_found",
    )


def bad_request_reply(message: str, code: str = "invalid_request") -> Reply:
    return error_reply(400, message, "invalid_request_error", code)


def rate_limited_reply(retry_after: int | None) -> Reply:
    headers = (("Retry-After", str(retry_after)),) if retry_after is not None else ()
    return error_reply(
        429,
        "Rate limit exceeded, please slow down",
        "rate_limit_error",
        "rate_limit_exceeded",
        headers,
    )
