"""Pure validation: registration bodies, list queries, tokens, the config section."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.api.auth import MIN_TOKEN_CHARS, TOKEN_ENV, BearerCheck, TokenError, read_token
from exporter.api.validation import (
    MODEL_PATTERN,
    POLL_URL_PATTERN,
    ApiError,
    ListQuery,
    parse_json,
    parse_list_query,
    parse_registration,
)
from exporter.config import ConfigError, check_poll_path, parse_config
from exporter.model import DiscoveredTask, Status, valid_task_id
from tests.api.support import TOKEN


def refused(call: object, *args: object) -> ApiError:
    with pytest.raises(ApiError) as info:
        call(*args)  # type: ignore[operator]
    assert info.value.status == 400
    return info.value


def test_one_task_and_a_batch() -> None:
    assert parse_registration({"task_id": "img_1"}, 10) == [DiscoveredTask("img_1", "api")]
    full = {"task_id": "ldtask_a:b.c-d", "model": "flux-pro", "poll_url": "/v1/tasks/ldtask_a"}
    assert parse_registration(full, 10) == [
        DiscoveredTask("ldtask_a:b.c-d", "api", model="flux-pro", poll_url="/v1/tasks/ldtask_a")
    ]
    batch = {"tasks": [{"task_id": "a"}, {"task_id": "b", "model": "m"}, {"task_id": "a"}]}
    assert [t.task_id for t in parse_registration(batch, 3)] == ["a", "b"]


@pytest.mark.parametrize(
    ("body", "code", "words"),
    [
        ([], "invalid_body", "JSON object"),
        ("img_1", "invalid_body", "JSON object"),
        ({}, "missing_field", "task_id: required"),
        ({"task_id": "a", "extra": 1}, "unknown_field", '"extra"'),
        ({"task_id": "a", "tasks": []}, "unknown_field", "next to tasks"),
        ({"task_id": 5}, "invalid_task_id", "task_id"),
        ({"task_id": ""}, "invalid_task_id", "task_id"),
        ({"task_id": "img_1\n"}, "invalid_task_id", "task_id"),
        ({"task_id": "../etc/passwd"}, "invalid_task_id", "task_id"),
        ({"task_id": "-a"}, "invalid_task_id", "task_id"),
        ({"task_id": "a" * 129}, "invalid_task_id", "task_id"),
        ({"task_id": "a", "model": None}, "invalid_model", "model"),
        ({"task_id": "a", "model": ""}, "invalid_model", "model"),
        ({"task_id": "a", "model": "x" * 65}, "invalid_model", "model"),
        ({"task_id": "a", "model": "flux pro"}, "invalid_model", "model"),
        ({"task_id": "a", "model": 'm"}'}, "invalid_model", "model"),
        ({"task_id": "a", "poll_url": 3}, "invalid_poll_url", "poll_url"),
        (
            {"task_id": "a", "poll_url": "https://evil.example/v1/tasks/a"},
            "invalid_poll_url",
            "not a URL",
        ),
        (
            {"task_id": "a", "poll_url": "//evil.example/v1/tasks/a"},
            "invalid_poll_url",
            "not a URL",
        ),
        ({"task_id": "a", "poll_url": "v1/tasks/a"}, "invalid_poll_url", "path"),
        ({"task_id": "a", "poll_url": "/v1/tasks/a b"}, "invalid_poll_url", "poll_url"),
        ({"task_id": "a", "poll_url": "/v1/tasks/a#x"}, "invalid_poll_url", "poll_url"),
        ({"task_id": "a", "poll_url": "/v1/t\u00e4sks/a"}, "invalid_poll_url", "ASCII"),
        ({"task_id": "a", "poll_url": "/" + "a" * 512}, "invalid_poll_url", "poll_url"),
        ({"tasks": {}}, "invalid_body", "list"),
        ({"tasks": []}, "invalid_body", "at least one"),
        ({"tasks": ["img_1"]}, "invalid_body", "tasks[0]: must be a JSON object"),
        ({"tasks": [{"task_id": "a"}, {"task_id": "b", "x": 1}]}, "unknown_field", "tasks[1]"),
        ({"tasks": [{"task_id": "a"}, {"task_id": "!"}]}, "invalid_task_id", "tasks[1].task_id"),
        ({"tasks": [{"task_id": str(n)} for n in range(4)]}, "batch_too_large", "at most 3"),
    ],
)
def test_registration_errors(body: object, code: str, words: str) -> None:
    error = refused(parse_registration, body, 3)
    assert error.code == code
    assert words in error.message


def test_messages_never_echo_long_or_hostile_values() -> None:
    error = refused(parse_registration, {"task_id": "<script>" + "x" * 5000}, 3)
    assert "<script>" not in error.message and len(error.message) < 200
    error = refused(parse_registration, {"task_id": "a", "k" * 5000: 1}, 3)
    assert len(error.message) < 200


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"\xff\xfe", b'{"task_id": NaN}', b'{"task_id": Infinity}', b"[" * 100_000],
)
def test_bodies_that_are_not_json(body: bytes) -> None:
    assert refused(parse_json, body).code == "invalid_json"


def test_list_query() -> None:
    assert parse_list_query("") == ListQuery()
    assert parse_list_query("status=failed&model=flux-pro&limit=1000&cursor=img_9") == ListQuery(
        Status.FAILED, "flux-pro", 1000, "img_9"
    )


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("page=2", "unknown_parameter"),
        ("offset=2", "unknown_parameter"),
        ("status=done", "invalid_status"),
        ("status=", "invalid_status"),
        ("status=failed&status=completed", "invalid_query"),
        ("limit=0", "invalid_limit"),
        ("limit=1001", "invalid_limit"),
        ("limit=-1", "invalid_limit"),
        ("limit=1.5", "invalid_limit"),
        ("limit=", "invalid_limit"),
        ("limit=%EF%BC%91", "invalid_limit"),  # a full-width digit
        ("model=", "invalid_model"),
        ("model=a%20b", "invalid_model"),
        ("cursor=", "invalid_cursor"),
        ("cursor=a%0A", "invalid_cursor"),
        ("model=%FF", "invalid_query"),
        ("a=1&b=2&c=3&d=4&e=5", "invalid_query"),
    ],
)
def test_list_query_errors(query: str, code: str) -> None:
    assert refused(parse_list_query, query).code == code


@given(st.from_regex(POLL_URL_PATTERN, fullmatch=True).filter(lambda v: len(v) <= 512))
def test_every_published_poll_url_passes_the_config_rule(value: str) -> None:
    assert check_poll_path(value) == value
    assert parse_registration({"task_id": "a", "poll_url": value}, 1)[0].poll_url == value


@given(st.from_regex(MODEL_PATTERN, fullmatch=True))
def test_every_published_model_is_accepted(value: str) -> None:
    assert parse_registration({"task_id": "a", "model": value}, 1)[0].model == value


@given(st.text(max_size=140))
def test_task_ids_are_checked_in_full(value: str) -> None:
    expected = bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}", value))
    assert valid_task_id(value) is expected


# ---- the token ----------------------------------------------------------------


def test_token_from_env_or_file(tmp_path: Path) -> None:
    config = parse_config({}, "test")
    assert read_token(config, {}) is None
    token = read_token(config, {TOKEN_ENV: f"  {TOKEN}\n"})
    assert token is not None and token.get_secret_value() == TOKEN
    path = tmp_path / "token"
    path.write_text(TOKEN + "-from-file\n")
    with_file = parse_config({"api_server": {"token_file": str(path)}}, "test")
    token = read_token(with_file, {TOKEN_ENV: TOKEN})
    assert token is not None and token.get_secret_value() == TOKEN + "-from-file"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("", "is empty"),
        ("short", f"at least {MIN_TOKEN_CHARS} characters"),
        ("with a space in the middle of it", "printable ASCII"),
        ("t\u00f6ken-t\u00f6ken-t\u00f6ken-t\u00f6ken", "printable ASCII"),
    ],
)
def test_unusable_tokens_stop_the_start(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "token"
    path.write_text(content)
    config = parse_config({"api_server": {"token_file": str(path)}}, "test")
    with pytest.raises(TokenError, match=words):
        read_token(config, {})
    if content:
        with pytest.raises(TokenError, match=words):
            read_token(parse_config({}, "test"), {TOKEN_ENV: content})


def test_missing_token_file(tmp_path: Path) -> None:
    config = parse_config({"api_server": {"token_file": str(tmp_path / "nope")}}, "test")
    with pytest.raises(TokenError, match=r"api_server\.token_file: cannot read"):
        read_token(config, {TOKEN_ENV: TOKEN})
    assert issubclass(TokenError, ValueError)  # the CLI reports ValueErrors and exits 2


def test_bearer_check() -> None:
    from pydantic import SecretStr

    check = BearerCheck(SecretStr(TOKEN))
    assert check(f"Bearer {TOKEN}")
    assert check(f"bearer {TOKEN}")
    assert check(f"  Bearer   {TOKEN} ")
    for header in (
        None,
        "",
        "Bearer",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        f"Token {TOKEN}",
        "Bearer \u00ff\u00fe",
    ):
        assert not check(header), header


def test_config_section() -> None:
    config = parse_config({"api_server": {"max_body_bytes": 2048, "max_batch_size": 7}}, "c")
    assert (config.api_server.max_body_bytes, config.api_server.max_batch_size) == (2048, 7)
    assert config.api_server.token_file is None
    with pytest.raises(ConfigError, match=r"api_server\.token: the token must not be written"):
        parse_config({"api_server": {"token": TOKEN}}, "c")
    with pytest.raises(ConfigError, match=r"api_server\.max_body_bytes"):
        parse_config({"api_server": {"max_body_bytes": 10}}, "c")
    with pytest.raises(ConfigError, match=r"api_server\.max_batch_size"):
        parse_config({"api_server": {"max_batch_size": 0}}, "c")
    with pytest.raises(ConfigError, match=r"api_server\.tokenfile"):
        parse_config({"api_server": {"tokenfile": "x"}}, "c")


def test_check_config_reports_an_unusable_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from exporter.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(f"api_server:\n  token_file: {tmp_path / 'missing'}\n")
    monkeypatch.setenv("LEMONDATA_API_KEY", "sk-test")
    assert main(["check-config", "--config.file", str(config)]) == 1
    assert "api_server.token_file: cannot read" in capsys.readouterr().err
    monkeypatch.setenv(TOKEN_ENV, "too-short")
    config.write_text("api_server: {}\n")
    assert main(["check-config", "--config.file", str(config)]) == 1
    assert "at least 16 characters" in capsys.readouterr().err
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert main(["check-config", "--config.file", str(config)]) == 0
