import json

import pytest

from exporter.upstream.parse import InvalidResponse, parse_error_code, parse_status_body


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_seed_example() -> None:
    report = parse_status_body(
        body(
            created=1706000000,
            task_id="img_abc123def456",
            status="pending",
            data=[{"url": "", "revised_prompt": "x"}],
        )
    )
    assert report.status == "pending"
    assert report.created == 1706000000
    assert report.updated is None


def test_unified_shape() -> None:
    report = parse_status_body(
        body(
            id="t",
            status="failed",
            created=10,
            updated=20,
            model="veo-3",
            error={"message": "boom"},
            cancelled=True,
            progress=40,
        )
    )
    assert (report.updated, report.model, report.error, report.cancelled, report.progress) == (
        20.0,
        "veo-3",
        "boom",
        True,
        40.0,
    )


@pytest.mark.parametrize(
    "raw",
    [b"", b"<html>502</html>", b"[1,2]", b'{"status": 5}', b"{}", b'{"status": ""}', b"[" * 100000],
)
def test_unusable_bodies(raw: bytes) -> None:
    with pytest.raises(InvalidResponse):
        parse_status_body(raw)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (-5, None),
        (0, None),
        ("1706000000", 1706000000.0),
        ("2024-01-23T08:53:20Z", 1706000000.0),
        (1706000000123, 1706000000.123),
        (True, None),
        ("soon", None),
        (float("nan"), None),
    ],
)
def test_timestamps(value: object, expected: float | None) -> None:
    raw = json.dumps({"status": "pending", "created": value}).encode()
    assert parse_status_body(raw).created == expected


def test_huge_error_is_cut() -> None:
    assert len(parse_status_body(body(status="failed", error="x" * 10**6)).error or "") == 8192


def test_error_code() -> None:
    assert parse_error_code(body(error={"code": "async_task_not_found"})) == "async_task_not_found"
    assert parse_error_code(b"not json") is None


def test_lone_surrogates_become_encodable() -> None:
    report = parse_status_body(
        b'{"status": "failed", "error": "bad \\ud800 text", "model": "m\\udfff"}'
    )
    assert report.error == "bad ? text"
    assert report.model == "m?"
    assert report.error.encode("utf-8")
