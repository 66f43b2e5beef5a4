"""Several accounts without a network: config, keys, routing, the label at exposition."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from pydantic import SecretStr

from exporter.api.validation import ApiError, parse_registration
from exporter.config import (
    MAX_ACCOUNTS,
    ConfigError,
    check_config_data,
    parse_config,
    read_account_keys,
)
from exporter.config_check import check_everything
from exporter.discovery.redis_stream import parse_entry
from exporter.discovery.static import StaticSource
from exporter.intake import TaskIntake
from exporter.metrics.accounts import AccountsRegistry
from exporter.model import DEFAULT_ACCOUNT, DiscoveredTask, Status
from exporter.proxy.accounts import KeyAccounts
from exporter.store.guard import StoreUnavailable

TWO = [{"name": "team-a", "key_env": "KEY_A"}, {"name": "team-b", "key_env": "KEY_B"}]


def problems(data: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    return check_config_data(data, "c.yaml", environ).problems


def test_without_accounts_there_is_one_default_account() -> None:
    config = parse_config({}, "c.yaml")
    assert config.account_names == (DEFAULT_ACCOUNT,)
    assert config.default_account == DEFAULT_ACCOUNT


def test_accounts_are_named_and_the_first_is_the_default() -> None:
    config = parse_config({"accounts": TWO, "tasks": [{"id": "img_1"}]}, "c.yaml")
    assert config.account_names == ("team-a", "team-b")
    assert config.default_account == "team-a"


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            {"accounts": [{"name": "a", "key": "sk-secret"}]},
            "c.yaml: accounts[0].key: an account's key must not be written in the config file",
        ),
        (
            {"accounts": [{"name": "a"}]},
            "c.yaml: accounts[0]: give exactly one of key_env",
        ),
        (
            {"accounts": [{"name": "a", "key_env": "K", "key_file": "/k"}]},
            "c.yaml: accounts[0]: give exactly one of key_env",
        ),
        (
            {"accounts": [{"name": "Team A", "key_env": "K"}]},
            "c.yaml: accounts[0].name: String should match pattern",
        ),
        (
            {"accounts": [{"name": "a", "key_env": "sk-not-a-variable"}]},
            "c.yaml: accounts[0].key_env: String should match pattern",
        ),
        (
            {"accounts": [*TWO, {"name": "team-a", "key_env": "K"}]},
            "c.yaml: accounts[2].name: team-a is listed twice",
        ),
        (
            {"accounts": TWO, "tasks": [{"id": "img_1", "account": "team-z"}]},
            "c.yaml: tasks[0].account: no account is named 'team-z'; the accounts are "
            "team-a, team-b",
        ),
        (
            {"discovery": {"files": [{"path": "t.jsonl", "account": "team-a"}]}},
            "c.yaml: discovery.files[0].account: names an account, but the config lists no "
            "`accounts:`",
        ),
        (
            {"accounts": [{"name": f"a{i}", "key_env": "K"} for i in range(MAX_ACCOUNTS + 1)]},
            "c.yaml: accounts: List should have at most 50 items",
        ),
    ],
)
def test_a_wrong_account_names_the_file_and_the_field(data: dict[str, Any], problem: str) -> None:
    found = problems(data)
    assert any(line.startswith(problem) for line in found), found
    assert not any("sk-secret" in line or "sk-not-a" in line for line in found)


def test_accounts_from_the_environment() -> None:
    environ = {"LEMONDATA_EXPORTER_ACCOUNTS": "[{name: team-a, key_env: KEY_A}]"}
    report = check_config_data({}, "c.yaml", environ)
    assert report.config is not None and report.config.account_names == ("team-a",)
    environ = {"LEMONDATA_EXPORTER_ACCOUNTS": "[{name: team-a, key: sk-secret}]"}
    found = problems({}, environ)
    assert found and found[0].startswith("$LEMONDATA_EXPORTER_ACCOUNTS: accounts[0].key: ")
    assert "sk-secret" not in found[0]


def test_every_account_key_is_read_and_a_missing_one_named(tmp_path: Path) -> None:
    key_file = tmp_path / "b.key"
    key_file.write_text("sk-b-key\n")
    accounts = [TWO[0], {"name": "team-b", "key_file": str(key_file)}]
    config = parse_config({"accounts": accounts}, "c.yaml")
    keys = read_account_keys(config, {"KEY_A": "sk-a-key"})
    assert {name: key.get_secret_value() for name, key in keys.items()} == {
        "team-a": "sk-a-key",
        "team-b": "sk-b-key",
    }
    key_file.write_text("")
    with pytest.raises(ConfigError) as raised:
        read_account_keys(config, {}, "c.yaml")
    assert raised.value.problems == [
        "c.yaml: accounts[0].key_env: $KEY_A is not set (the key of account team-a)",
        f"c.yaml: accounts[1].key_file: {key_file} is empty",
    ]


def test_without_accounts_the_key_is_the_default_accounts() -> None:
    config = parse_config({}, "c.yaml")
    keys = read_account_keys(config, {"LEMONDATA_API_KEY": "sk-one"})
    assert list(keys) == [DEFAULT_ACCOUNT]
    assert read_account_keys(config, {}) == {}


def test_static_tasks_go_to_their_account_or_the_first() -> None:
    config = parse_config(
        {"accounts": TWO, "tasks": [{"id": "img_1"}, {"id": "img_2", "account": "team-b"}]},
        "c.yaml",
    )
    batch = StaticSource(config.tasks, config.default_account).discover(None)
    assert [(t.task_id, t.account) for t in batch.tasks] == [
        ("img_1", "team-a"),
        ("img_2", "team-b"),
    ]


def test_the_task_api_takes_an_account_and_refuses_unknown_ones() -> None:
    accounts = ("team-a", "team-b")
    tasks = parse_registration(
        {"tasks": [{"task_id": "img_1"}, {"task_id": "img_2", "account": "team-b"}]}, 10, accounts
    )
    assert [t.account for t in tasks] == ["team-a", "team-b"]
    with pytest.raises(ApiError) as raised:
        parse_registration({"task_id": "img_1", "account": "team-z"}, 10, accounts)
    assert (raised.value.status, raised.value.code) == (400, "unknown_account")
    assert raised.value.message == "account: not one of the configured accounts"
    with pytest.raises(ApiError) as raised:
        parse_registration({"tasks": [{"task_id": "i", "account": "sk-Secret"}]}, 10, accounts)
    assert raised.value.code == "invalid_account" and "sk-" not in raised.value.message


def test_stream_entries_name_their_account() -> None:
    accounts = ("team-a", "team-b")
    entry = parse_entry({"task_id": "img_1", "account": "team-b"}, accounts)
    assert isinstance(entry, DiscoveredTask) and entry.account == "team-b"
    entry = parse_entry({"task_id": "img_1"}, accounts)
    assert isinstance(entry, DiscoveredTask) and entry.account == "team-a"
    refused = parse_entry({"task_id": "img_1", "account": "sk-typo"}, accounts)
    assert refused == "account is not one of the configured accounts"


class FakeIntakeStore:
    def count_by_status(self) -> dict[Status, int]:
        return {}

    def get(self, task_id: str) -> None:
        return None


def test_intake_refuses_and_counts_an_unknown_account() -> None:
    registry = CollectorRegistry()
    intake = TaskIntake(FakeIntakeStore(), registry, 100, accounts=("team-a",))  # type: ignore[arg-type]
    intake.add_sources(["stream"])
    offered = [
        DiscoveredTask("img_1", "stream", account="team-a"),
        DiscoveredTask("img_2", "stream", account="team-z"),
    ]
    admitted = intake.admit("stream", offered)
    assert [t.task_id for t in admitted.tasks] == ["img_1"] and admitted.rejected == 1
    value = registry.get_sample_value(
        "lemondata_tasks_rejected_total", {"source": "stream", "reason": "account"}
    )
    assert value == 1


def test_without_accounts_the_intake_has_no_account_reason() -> None:
    registry = CollectorRegistry()
    TaskIntake(FakeIntakeStore(), registry, 100).add_sources(["file"])  # type: ignore[arg-type]
    assert b'reason="account"' not in generate_latest(registry)


def test_the_proxy_finds_the_account_by_its_key_digest() -> None:
    registry = CollectorRegistry()
    keys = KeyAccounts({"team-a": SecretStr("sk-a"), "team-b": SecretStr("sk-b")}, registry)
    assert keys.account_of("Bearer sk-b") == "team-b"
    assert keys.account_of("bearer  sk-a ") == "team-a"
    assert keys.account_of("Bearer sk-c") is None
    assert keys.account_of(None) is None
    assert keys.account_of("Basic sk-a") is None
    assert registry.get_sample_value("lemondata_proxy_unmatched_key_creates_total") == 3
    assert b"sk-" not in generate_latest(registry)


def test_each_accounts_series_get_its_label_in_one_family() -> None:
    main, first, second = CollectorRegistry(), CollectorRegistry(), CollectorRegistry()
    Counter("lemondata_api_requests", "Requests.", ["code"], registry=main).labels("200")
    Counter("lemondata_store_errors", "Store errors.", registry=main).inc()
    for registry, n in ((first, 1), (second, 2)):
        Counter("lemondata_api_requests", "Requests.", ["code"], registry=registry).labels(
            "200"
        ).inc(n)
        Counter("lemondata_tasks_discovered", "Shared.", ["source"], registry=registry)
    text = generate_latest(AccountsRegistry(main, {"team-a": first, "team-b": second})).decode()
    assert text.count("# HELP lemondata_api_requests_total") == 1
    assert 'lemondata_api_requests_total{account="team-a",code="200"} 1.0' in text
    assert 'lemondata_api_requests_total{account="team-b",code="200"} 2.0' in text
    assert 'lemondata_api_requests_total{code="200"}' not in text  # the main one: never fed
    assert "lemondata_store_errors_total 1.0" in text
    assert "lemondata_tasks_discovered" not in text  # an account's copy of a shared family


def test_check_config_lists_the_accounts_and_whether_each_key_is_there(tmp_path: Path) -> None:
    key_file = tmp_path / "b.key"
    key_file.write_text("sk-b-secret\n")
    key_file.chmod(0o600)
    config = tmp_path / "c.yaml"
    config.write_text(
        "accounts:\n  - {name: team-a, key_env: KEY_A}\n"
        f"  - {{name: team-b, key_file: {key_file}, requests_per_second: 2}}\n"
    )
    result = check_everything(str(config), environ={})
    assert result.problems == []
    assert result.warnings == [
        f"{config}: accounts[0].key_env: warning: $KEY_A is not set: `run` needs the key of "
        "account team-a"
    ]
    assert "  account team-a: key from $KEY_A (not found), at most 5 requests/s" in result.summary
    assert f"  account team-b: key from {key_file} (found), at most 2 requests/s" in result.summary
    found = check_everything(str(config), environ={"KEY_A": "sk-a-secret"})
    assert found.warnings == [] and "secret" not in "\n".join(found.summary)


def make_agent(tmp_path: Path, data: dict[str, Any], keys: Any) -> Any:
    from exporter.agent import Agent

    config = parse_config({"store": {"path": str(tmp_path / "store.db")}, **data}, "c.yaml")
    return Agent(config, keys)


def close(agent: Any) -> None:
    for loop in agent.loops:
        loop.cycle.stop()
        loop.client.close()
    agent.store.close()


def test_one_account_serves_no_account_label(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, {}, SecretStr("sk-one"))
    try:
        assert [loop.name for loop in agent.loops] == [DEFAULT_ACCOUNT]
        assert agent.account_registries == {}
        text = generate_latest(agent.registry).decode()
        assert "account=" not in text and 'lemondata_tasks{status="unknown"} 0.0' in text
    finally:
        close(agent)


def test_several_accounts_have_a_loop_and_labelled_series_each(tmp_path: Path) -> None:
    keys = {"team-a": SecretStr("sk-a"), "team-b": SecretStr("sk-b")}
    accounts = [TWO[0], {**TWO[1], "requests_per_second": 2}]
    agent = make_agent(tmp_path, {"accounts": accounts}, keys)
    try:
        assert [loop.name for loop in agent.loops] == ["team-a", "team-b"]
        served = AccountsRegistry(agent.registry, agent.account_registries)
        text = generate_latest(served).decode()
        assert 'lemondata_poll_budget_requests_per_second{account="team-a"} 5.0' in text
        assert 'lemondata_poll_budget_requests_per_second{account="team-b"} 2.0' in text
        assert 'lemondata_tasks{account="team-b",status="pending"} 0.0' in text
        assert 'lemondata_api_account_state{account="team-a",state="ok"} 1.0' in text
        assert "sk-a" not in text and "sk-b" not in text
        # Ready once every account's loop has run a cycle; healthy while each keeps on.
        agent.loops[0].health.cycle_finished()
        assert agent.ready() == (
            False,
            "not ready: the first poll cycle of account team-b has not run yet",
        )
        agent.loops[1].health.cycle_finished()
        assert agent.ready() == (True, "Ready")
        agent.loops[1].health.last_cycle_end = agent.loops[1].health.last_cycle_end - 1000
        healthy, why = agent.healthy()
        assert not healthy and why.startswith("unhealthy: no poll cycle of account team-b")
        alive, why = agent.alive()
        assert not alive and why.endswith("(account team-b)")
        # A store that fails for good is the store's, not one account's.
        (tmp_path / "store.db").unlink()
        with contextlib.suppress(StoreUnavailable):
            agent.store.add([DiscoveredTask("img_1", "file")], 100.0)
        alive, why = agent.alive()
        assert not alive and "was deleted" in why and "(account " not in why
    finally:
        close(agent)


def test_tasks_of_an_account_no_longer_configured_are_named_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = make_agent(tmp_path, {}, SecretStr("sk-one"))
    agent.store.add([DiscoveredTask("img_old", "file")], 100.0)
    close(agent)
    keys = {"team-a": SecretStr("sk-a"), "team-b": SecretStr("sk-b")}
    agent = make_agent(tmp_path, {"accounts": TWO}, keys)
    close(agent)
    assert (
        "1 unfinished task(s) in the store belong to account default, which is not in "
        "accounts:; no loop polls them (name an account default to poll them)" in caplog.text
    )
