from exporter.model import OutcomeKind, PollOutcome, Status, StatusReport, Task
from exporter.poller.transitions import PollPolicy, completion_duration, decide

POLICY = PollPolicy(task_interval=5, max_wait=600, backoff_base=2, backoff_max=60)
NOW = 1_700_000_100.0


def task(**changes: object) -> Task:
    values: dict[str, object] = dict(
        task_id="img_1",
        source="config",
        model=None,
        poll_url=None,
        status=Status.UNKNOWN,
        discovered_at=NOW - 50,
        next_poll_at=NOW,
    )
    values.update(changes)
    return Task(**values)  # type: ignore[arg-type]


def report(status: str, **fields: object) -> PollOutcome:
    return PollOutcome(OutcomeKind.REPORT, 200, StatusReport(status=status, **fields))  # type: ignore[arg-type]


def test_pending_then_processing_observes_pending_time_once() -> None:
    first = decide(task(), report("pending", created=NOW - 40), NOW, POLICY, 0.5)
    assert first.task.status is Status.PENDING
    assert first.task.created == NOW - 40
    assert first.pending_seconds is None
    assert first.task.next_poll_at == NOW + 5
    seen = task(status=Status.PENDING, created=NOW - 40, first_seen=NOW, last_polled=NOW)
    second = decide(seen, report("processing", created=NOW - 40), NOW + 5, POLICY, 0.5)
    assert second.task.status is Status.PROCESSING
    assert second.pending_seconds == 45
    assert second.task.processing_seen == NOW + 5
    again = task(status=Status.PROCESSING, created=NOW - 40, processing_seen=NOW + 5)
    assert decide(again, report("processing"), NOW + 10, POLICY, 0.5).pending_seconds is None


def test_completed_with_updated_is_exact() -> None:
    running = task(status=Status.PROCESSING, created=NOW - 90, last_polled=NOW - 5)
    update = decide(running, report("completed", created=NOW - 90, updated=NOW - 3), NOW, POLICY, 0)
    assert update.finish is not None
    assert update.finish.status is Status.COMPLETED
    assert update.finish.duration == 87
    assert update.finish.exact
    assert update.finish.uncertainty == 0


def test_completed_without_updated_is_the_midpoint_of_the_poll_gap() -> None:
    running = task(status=Status.PROCESSING, created=NOW - 90, last_polled=NOW - 5)
    update = decide(running, report("completed"), NOW, POLICY, 0)
    assert update.finish is not None
    # Finished between NOW - 5 (seen processing) and NOW (seen completed).
    assert update.finish.duration == 87.5
    assert not update.finish.exact
    assert update.finish.uncertainty == 2.5


def test_first_poll_seeing_a_finish_measures_from_creation() -> None:
    fresh = task(status=Status.UNKNOWN, created=NOW - 40)
    update = decide(fresh, report("failed", error="boom"), NOW, POLICY, 0)
    assert update.finish is not None
    assert (update.finish.duration, update.finish.uncertainty) == (20, 20)


def test_updated_before_created_or_in_future_is_ignored() -> None:
    assert completion_duration(100.0, 50.0, 90.0, 200.0, 300)[1] is False
    assert completion_duration(100.0, 10_000.0, 190.0, 200.0, 300) == (95.0, False, 5.0)
    assert completion_duration(None, 150.0, 90.0, 200.0, 300) == (None, False, None)


def test_failed_keeps_error_and_cancelled_is_its_own_status() -> None:
    failed = decide(
        task(created=NOW - 10), report("failed", error="content policy"), NOW, POLICY, 0
    )
    assert failed.finish is not None and failed.finish.status is Status.FAILED
    assert failed.finish.error_message == "content policy"
    cancelled = decide(task(), report("failed", cancelled=True, error="x"), NOW, POLICY, 0)
    assert cancelled.task.status is Status.CANCELLED
    assert cancelled.finish is not None and cancelled.finish.status is Status.CANCELLED
    # The image path has no `cancelled` field: the error text tells.
    by_text = decide(task(), report("failed", error="Task was cancelled by user"), NOW, POLICY, 0)
    assert by_text.task.status is Status.CANCELLED


def test_not_found_expires() -> None:
    update = decide(
        task(status=Status.PROCESSING), PollOutcome(OutcomeKind.NOT_FOUND, 404), NOW, POLICY, 0
    )
    assert update.task.status is Status.EXPIRED
    assert update.finish is not None and update.finish.duration is None


def test_unknown_status_is_an_error_and_keeps_last_status() -> None:
    update = decide(task(status=Status.PENDING), report("queued"), NOW, POLICY, 0)
    assert update.task.status is Status.PENDING
    assert update.error_kind == "unknown_status"
    assert update.task.consecutive_errors == 1
    assert update.finish is None


def test_errors_back_off_exponentially_and_429_waits_retry_after() -> None:
    failing = task(consecutive_errors=3)
    update = decide(failing, PollOutcome(OutcomeKind.SERVER_ERROR, 503), NOW, POLICY, 0.0)
    assert update.task.consecutive_errors == 4
    assert update.task.next_poll_at == NOW + 8  # 2 * 2**3, lower half of jitter
    limited = decide(
        task(), PollOutcome(OutcomeKind.RATE_LIMITED, 429, retry_after=17), NOW, POLICY, 0.9
    )
    assert limited.task.next_poll_at == NOW + 17
    # An error answer tells nothing about the task: it is not a poll that saw it unfinished.
    assert limited.task.last_polled is None
    network = decide(task(), PollOutcome(OutcomeKind.CONNECTION), NOW, POLICY, 0)
    assert network.task.last_polled is None


def test_uncertainty_counts_from_the_last_poll_that_saw_the_status() -> None:
    seen = decide(task(created=NOW - 30), report("processing"), NOW - 10, POLICY, 0)
    assert seen.task.last_polled == NOW - 10
    later = task(created=NOW - 30, status=Status.PROCESSING, last_polled=seen.task.last_polled)
    for error in (PollOutcome(OutcomeKind.SERVER_ERROR, 503), report("queued")):
        after_error = decide(later, error, NOW - 5, POLICY, 0)
        assert after_error.task.last_polled == NOW - 10
    done = decide(later, report("completed"), NOW, POLICY, 0)
    assert done.finish is not None and done.finish.uncertainty == 5


def test_gives_up_after_max_wait() -> None:
    old = task(status=Status.PROCESSING, created=NOW - 601)
    update = decide(old, report("processing"), NOW, POLICY, 0)
    assert update.task.status is Status.TIMEOUT
    assert update.finish is not None and update.finish.status is Status.TIMEOUT
    never_answered = task(discovered_at=NOW - 700)
    assert decide(never_answered, PollOutcome(OutcomeKind.TIMEOUT), NOW, POLICY, 0).task.status is (
        Status.TIMEOUT
    )


def test_model_from_discovery_wins_over_response() -> None:
    update = decide(task(model="flux-pro"), report("pending", model="other"), NOW, POLICY, 0)
    assert update.task.model == "flux-pro"
    assert decide(task(), report("pending", model="veo-3"), NOW, POLICY, 0).task.model == "veo-3"


def test_future_created_is_not_trusted() -> None:
    update = decide(task(), report("pending", created=NOW + 10_000), NOW, POLICY, 0)
    assert update.task.created is None
