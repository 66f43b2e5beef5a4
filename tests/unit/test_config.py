from pathlib import Path

import pytest

from exporter.config import ConfigError, load_config, read_api_key


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return caught.value.problems


def test_shipped_example_is_valid() -> None:
    config = load_config(Path(__file__).parents[2] / "config.yaml")
    assert config.polling.requests_per_second > 0


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")).api.base_url == "https://api.lemondata.cc"


def test_every_problem_names_file_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
polling:
  requests_per_second: 0
  typo_field: 1
tasks:
  - id: "bad id!"
  - id: ok_1
    poll_url: https://evil.example/v1/tasks/x
metrics:
  duration_buckets: [5, 1]
failure_reasons:
  - reason: broken
    pattern: "(unclosed"
""",
    )
    found = problems(path)
    assert all(p.startswith(f"{path}: ") for p in found)
    text = "\n".join(found)
    for field in (
        "polling.requests_per_second",
        "polling.typo_field",
        "tasks[0].id",
        "tasks[1].poll_url",
        "metrics.duration_buckets",
        "failure_reasons[0].pattern",
    ):
        assert field in text, field


def test_key_in_config_is_refused(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "api:\n  api_key: sk-secret-value\n"))
    assert "LEMONDATA_API_KEY" in found[0]
    assert "sk-secret-value" not in found[0]


def test_yaml_syntax_error_names_line(tmp_path: Path) -> None:
    found = problems(write(tmp_path, "api:\n  base_url: [\n"))
    assert "not valid YAML" in found[0] and "line" in found[0]


def test_missing_file(tmp_path: Path) -> None:
    assert "file not found" in problems(tmp_path / "nope.yaml")[0]


def test_api_key_from_env_or_file(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert read_api_key(config, {"LEMONDATA_API_KEY": " sk-env "}).get_secret_value() == "sk-env"  # type: ignore[union-attr]
    assert read_api_key(config, {}) is None
    key_file = tmp_path / "key"
    key_file.write_text("sk-file\n")
    with_file = load_config(write(tmp_path, f"api:\n  key_file: {key_file}\n"))
    assert read_api_key(with_file, {}).get_secret_value() == "sk-file"  # type: ignore[union-attr]
    missing = load_config(write(tmp_path, f"api:\n  key_file: {tmp_path / 'none'}\n"))
    with pytest.raises(ConfigError, match=r"api\.key_file"):
        read_api_key(missing, {})


def test_failure_classes_by_default_and_per_rule(tmp_path: Path) -> None:
    from exporter.classify import ReasonClassifier

    config = load_config(
        write(
            tmp_path,
            """
failure_reasons:
  - reason: content_policy
    pattern: "(?i)safety"
  - reason: quota
    pattern: "(?i)quota"
    class: user
  - reason: invalid_request
    pattern: "(?i)invalid"
    class: service
""",
        )
    )
    classes = ReasonClassifier(config.failure_reasons).classes
    assert classes == {
        "content_policy": "user",
        "quota": "user",
        "invalid_request": "service",
        "unknown": "service",
    }
    defaults = ReasonClassifier(load_config(write(tmp_path, "")).failure_reasons).classes
    assert {r for r, c in defaults.items() if c == "user"} == {"content_policy", "invalid_request"}


def test_a_reason_has_one_class(tmp_path: Path) -> None:
    both = (
        "failure_reasons:\n  - {reason: odd, pattern: a, class: user}\n"
        "  - {reason: odd, pattern: b}\n"
    )
    assert "reason odd is given both classes" in "\n".join(problems(write(tmp_path, both)))
    unknown = "failure_reasons:\n  - {reason: odd, pattern: a, class: nobody}\n"
    assert "failure_reasons[0].class" in "\n".join(problems(write(tmp_path, unknown)))
