"""Settings from the environment: the naming rule, values, problems, provenance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from exporter.config import Config, check_config_data
from exporter.config_env import (
    _model,
    changed_settings,
    merge,
    origin_of,
    read_environment,
    variable_name,
)

SECRET = "sk-live-pasted-in-the-wrong-variable"


def leaf_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for name, info in model.model_fields.items():
        section = _model(info.annotation)
        path = (*prefix, name)
        paths += leaf_paths(section, path) if section is not None else [path]
    return paths


def test_every_field_has_a_variable_that_names_it() -> None:
    paths = leaf_paths(Config)
    assert ("polling", "requests_per_second") in paths
    assert ("discovery", "redis_stream", "stream") in paths
    for path in paths:
        settings = read_environment({variable_name(path): "1"}, Config)
        assert settings.problems == [], path
        assert settings.origins == {".".join(path): f"${variable_name(path)}"}


def test_the_naming_rule() -> None:
    assert (
        variable_name(("polling", "requests_per_second"))
        == "LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECOND"
    )
    assert variable_name(("log_level",)) == "LEMONDATA_EXPORTER_LOG_LEVEL"


def test_text_stays_text_and_the_rest_is_yaml() -> None:
    settings = read_environment(
        {
            "LEMONDATA_EXPORTER_PROXY__LISTEN_ADDRESS": ":9849",
            "LEMONDATA_EXPORTER_API__BASE_URL": "http://127.0.0.1:8000",
            "LEMONDATA_EXPORTER_STORE__PATH": "007",
            "LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECOND": "2.5",
            "LEMONDATA_EXPORTER_PROXY__ENABLED": "true",
            "LEMONDATA_EXPORTER_DISCOVERY__FILES": "[{path: /data/tasks.jsonl}]",
            "LEMONDATA_EXPORTER_TOKEN": "not a setting",
            "OTHER": "ignored",
        },
        Config,
    )
    assert settings.problems == []
    assert settings.values == {
        "proxy": {"listen_address": ":9849", "enabled": True},
        "api": {"base_url": "http://127.0.0.1:8000"},
        "store": {"path": "007"},
        "polling": {"requests_per_second": 2.5},
        "discovery": {"files": [{"path": "/data/tasks.jsonl"}]},
    }


def test_unknown_variables_are_problems_with_a_suggestion_and_no_value() -> None:
    settings = read_environment(
        {
            "LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECUND": SECRET,
            "LEMONDATA_EXPORTER_API__KEY": SECRET,
            "LEMONDATA_EXPORTER_LOG_LEVEL__X": SECRET,
            "LEMONDATA_EXPORTER_": SECRET,
        },
        Config,
    )
    assert settings.values == {}
    problems = dict(settings.problems)
    assert problems["LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECUND"] == (
        "unknown setting in polling; did you mean LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECOND?"
    )
    assert problems["LEMONDATA_EXPORTER_API__KEY"].startswith("unknown setting in api")
    assert problems["LEMONDATA_EXPORTER_LOG_LEVEL__X"] == "log_level has no sub-settings"
    assert "LEMONDATA_EXPORTER_" in problems
    assert not any(SECRET in problem for problem in problems.values())


def test_the_environment_wins_and_problems_name_the_variable() -> None:
    data = {"polling": {"requests_per_second": 3, "cycle_interval_seconds": 2}}
    environ = {
        "LEMONDATA_EXPORTER_POLLING__REQUESTS_PER_SECOND": "7",
        "LEMONDATA_EXPORTER_API__TIMEOUT_SECONDS": "soon",
    }
    report = check_config_data(data, "config.yaml", environ)
    assert report.problems == [
        "$LEMONDATA_EXPORTER_API__TIMEOUT_SECONDS: api.timeout_seconds: "
        "Input should be a valid number, unable to parse string as a number"
    ]
    del environ["LEMONDATA_EXPORTER_API__TIMEOUT_SECONDS"]
    config = check_config_data(data, "config.yaml", environ).config
    assert config is not None
    assert config.polling.requests_per_second == 7
    assert config.polling.cycle_interval_seconds == 2  # the file's, untouched


def test_merge_and_origin() -> None:
    base: dict[str, Any] = {"a": {"b": 1, "c": 2}, "d": [1]}
    assert merge(base, {"a": {"b": 5}, "d": [2]}) == {"a": {"b": 5, "c": 2}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}
    origins = {"discovery.files": "$V"}
    assert origin_of("discovery.files[0].path", origins, "f") == "$V"
    assert origin_of("discovery.files", origins, "f") == "$V"
    assert origin_of("polling.requests_per_second", origins, "f") == "f"
    assert origin_of("discovery.files.x", origins, "f") == "$V"


def test_changed_settings_lists_what_differs() -> None:
    config = Config.model_validate(
        {"polling": {"requests_per_second": 2}, "store": {"path": str(Path("x.db"))}}
    )
    assert changed_settings(config, Config()) == [
        ("polling.requests_per_second", 2.0),
        ("store.path", "x.db"),
    ]
    assert changed_settings(Config(), Config()) == []
