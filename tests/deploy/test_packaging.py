"""Packaging: dependency ranges in pyproject.toml, exact pins in constraints.txt, and a
wheel and sdist that build, pass `twine check` and install into a fresh virtualenv."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import requests
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.harness import free_port, wait_for
from tests.monitoring.support import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
CONSTRAINTS = REPO / "constraints.txt"


def pins() -> dict[str, str]:
    found: dict[str, str] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep and version, f"constraints.txt: {line!r} is not name==version"
        name = canonicalize_name(name)
        assert name not in found, f"constraints.txt: {name} twice"
        found[name] = version
    return found


def requirements() -> list[Requirement]:
    project = PYPROJECT["project"]
    listed = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        listed.extend(extra)
    return [Requirement(text) for text in listed]


def test_runtime_dependencies_are_compatible_ranges() -> None:
    for text in PYPROJECT["project"]["dependencies"]:
        requirement = Requirement(text)
        operators = {spec.operator for spec in requirement.specifier}
        assert operators == {">=", "<"}, f"{text}: a lower and an upper bound, no exact pin"


def test_constraints_pin_every_dependency_within_its_range() -> None:
    pinned = pins()
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{requirement.name}: add its exact version to constraints.txt"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside {requirement}"
        )


def test_ci_and_the_image_install_with_the_constraints() -> None:
    assert "-c constraints.txt" in (REPO / "scripts" / "test.sh").read_text(encoding="utf-8")
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    assert "-c constraints.txt" in dockerfile
    assert "constraints.txt" in dockerfile.split("RUN pip wheel")[0]


def fresh_checkout(target: Path) -> Path:
    """The tracked files of the repository, as a fresh clone has them."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        [git, "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=60
    ).stdout.decode()
    for relative in filter(None, listed.split("\0")):
        source = REPO / relative
        if source.is_file():
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative)
    return target


def run(*args: str | Path, cwd: Path, timeout: float = 300) -> str:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    assert result.returncode == 0, f"{args}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.integration
def test_build_check_install_and_run_the_demo(tmp_path: Path) -> None:
    source = fresh_checkout(tmp_path / "src")
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--outdir", dist, source, cwd=tmp_path)
    (wheel,) = dist.glob("lemondata_exporter-*.whl")
    (sdist,) = dist.glob("lemondata_exporter-*.tar.gz")
    run(sys.executable, "-m", "twine", "check", "--strict", wheel, sdist, cwd=tmp_path)

    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [
            line
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line
        ]
    assert all(name.startswith(("exporter/", "lemondata_exporter-")) for name in names)
    assert "exporter/py.typed" in names
    assert requires and not any("==" in line for line in requires), requires

    venv = tmp_path / "venv"
    # No pip of its own (saves seconds): this environment's pip installs into it.
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp_path)
    run(
        sys.executable,
        "-m",
        "pip",
        "--python",
        venv / "bin" / "python",
        "install",
        "-q",
        "--disable-pip-version-check",
        "-c",
        CONSTRAINTS,
        wheel,
        cwd=tmp_path,
    )
    where = run(
        venv / "bin" / "python", "-c", "import exporter; print(exporter.__file__)", cwd=tmp_path
    )
    assert Path(where.strip()).is_relative_to(venv)

    port = free_port()
    log = (tmp_path / "demo.log").open("wb")
    demo = subprocess.Popen(
        [
            str(venv / "bin" / "lemondata-exporter"),
            "demo",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--data-dir={tmp_path / 'demo'}",
        ],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def metrics() -> bool:
            if demo.poll() is not None:
                raise AssertionError((tmp_path / "demo.log").read_text())
            answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
            return answer.status_code == 200 and "lemondata_tasks_discovered_total" in answer.text

        wait_for(metrics, 60, "the demo's /metrics")
    finally:
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(30)
    assert code == 0, (tmp_path / "demo.log").read_text()
