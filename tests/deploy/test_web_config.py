"""The web-config overlay for real: the exporter started with the files the overlay
mounts, scraped the way its ServiceMonitor says, and probed by its probe commands."""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import bcrypt
import pytest
import urllib3
import yaml

from tests.deploy.support import OVERLAYS_DIR, Object, container, objects, one
from tests.hardening.certs import CA
from tests.harness import free_port, wait_for
from tests.harness.fixtures import KEY

pytestmark = pytest.mark.integration  # every test here starts a server

OVERLAY = "web-config"
PLACEHOLDER = "REPLACE-WITH-THE-BCRYPT-HASH-OF-THE-SCRAPE-PASSWORD"


class Pod:
    """The container's file system as the overlay lays it out, under a temp folder."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.exporter = container(OVERLAY)
        self.volumes = {
            v["name"]: v for v in one(OVERLAY, "Deployment")["spec"]["template"]["spec"]["volumes"]
        }
        self.mounts = {m["name"]: m["mountPath"] for m in self.exporter["volumeMounts"]}

    def path(self, in_container: str) -> Path:
        """Where a path of the container lies here; it must be on a mounted volume."""
        pure = PurePosixPath(in_container)
        for mount in self.mounts.values():
            if pure.is_relative_to(mount):
                return self.root / pure.relative_to("/")
        raise AssertionError(f"{in_container} is on the read-only root file system")

    def localize(self, text: str) -> str:
        """`text` with every mounted path replaced by where it lies here, in one pass."""
        mounts = sorted(self.mounts.values(), key=len, reverse=True)
        pattern = "|".join(re.escape(mount) for mount in mounts)
        return re.sub(pattern, lambda match: str(self.path(match.group())), text)

    def secret_folder(self, secret_name: str) -> Path:
        for name, volume in self.volumes.items():
            if volume.get("secret", {}).get("secretName") == secret_name:
                folder = self.path(self.mounts[name])
                folder.mkdir(parents=True, exist_ok=True)
                return folder
        raise AssertionError(f"Secret {secret_name} is not mounted")

    def fill_config_maps(self, config_maps: list[Object]) -> None:
        by_name = {cm["metadata"]["name"]: cm for cm in config_maps}
        for name, volume in self.volumes.items():
            folder = self.path(self.mounts[name])
            folder.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                for key, text in by_name[volume["configMap"]["name"]]["data"].items():
                    (folder / key).write_text(text, encoding="utf-8")


@pytest.fixture(name="pod")
def _pod(tmp_path: Path) -> Pod:
    return Pod(tmp_path / "pod")


@pytest.fixture(name="secrets_made")
def _secrets_made(pod: Pod, tmp_path: Path) -> dict[str, Any]:
    """The three Secrets, made the way docs/deployment.md says, as mounted files."""
    monitor = one(OVERLAY, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    server_name = endpoint["tlsConfig"]["serverName"]
    pki = tmp_path / "pki"
    pki.mkdir()
    ca = CA(pki)
    server = ca.issue("server", server=True, dns_names=(server_name,))
    tls = pod.secret_folder(endpoint["tlsConfig"]["ca"]["secret"]["name"])
    shutil.copy(server.cert, tls / "tls.crt")
    shutil.copy(server.key, tls / "tls.key")
    shutil.copy(ca.cert_file, tls / "ca.crt")

    auth = endpoint["basicAuth"]
    scrape = pod.secret_folder(auth["username"]["name"])
    password = secrets.token_urlsafe(24)
    (scrape / auth["username"]["key"]).write_text("prometheus\n")
    (scrape / auth["password"]["key"]).write_text(password + "\n")

    web_config = (OVERLAYS_DIR / OVERLAY / "web-config.yml").read_text(encoding="utf-8")
    assert PLACEHOLDER in web_config
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    web_config = pod.localize(web_config.replace(PLACEHOLDER, hashed))
    (pod.secret_folder("lemondata-exporter-web") / "web-config.yml").write_text(web_config)
    return {"endpoint": endpoint, "password": password, "ca": tls / "ca.crt"}


@pytest.fixture(name="exporter")
def _exporter(
    pod: Pod, secrets_made: dict[str, Any], simulator: Any, tmp_path: Path
) -> Iterator[int]:
    pod.fill_config_maps(objects(OVERLAY, "ConfigMap"))
    config_file = next(a for a in pod.exporter["args"] if a.startswith("--config.file="))
    config_path = pod.path(config_file.split("=", 1)[1])
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    # The simulator stands in for the API: nothing leaves this machine.
    config["api"]["base_url"] = simulator.url
    config["store"]["path"] = str(pod.path(config["store"]["path"]))
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    args = [pod.localize(arg) for arg in pod.exporter["args"]]
    log = (tmp_path / "exporter.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", *args, f"--web.listen-address=127.0.0.1:{port}"],
        env={"LEMONDATA_API_KEY": KEY, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield port
    finally:
        process.terminate()
        assert process.wait(30) == 0, (tmp_path / "exporter.log").read_text()


def scrape(port: int, endpoint: Object, ca: Path, server_name: str, auth: str | None) -> int:
    """GET the ServiceMonitor's path the way Prometheus would."""
    assert endpoint["scheme"] == "https"
    pool = urllib3.HTTPSConnectionPool(
        "127.0.0.1",
        port,
        ca_certs=str(ca),
        cert_reqs="CERT_REQUIRED",
        server_hostname=server_name,
        assert_hostname=server_name,
        retries=False,
        timeout=5,
    )
    headers = urllib3.make_headers(basic_auth=auth) if auth else {}
    with pool:
        return int(pool.request("GET", endpoint["path"], headers=headers).status)


def test_service_monitor_settings_match_the_web_config(
    exporter: int, secrets_made: dict[str, Any], pod: Pod
) -> None:
    endpoint = secrets_made["endpoint"]
    server_name = endpoint["tlsConfig"]["serverName"]
    auth = f"prometheus:{secrets_made['password']}"
    ca = secrets_made["ca"]

    def scraped() -> bool:
        try:
            return scrape(exporter, endpoint, ca, server_name, auth) == 200
        except urllib3.exceptions.HTTPError:
            return False

    wait_for(scraped, 30, "a scrape as the ServiceMonitor says")
    assert scrape(exporter, endpoint, ca, server_name, None) == 401
    assert scrape(exporter, endpoint, ca, server_name, "prometheus:wrong") == 401
    with pytest.raises(urllib3.exceptions.SSLError):
        scrape(exporter, endpoint, ca, "another-name", auth)

    for probe, path in (("livenessProbe", "/-/live"), ("readinessProbe", "/-/ready")):
        command = [pod.localize(part) for part in pod.exporter[probe]["exec"]["command"]]
        assert command[0] == "python" and command[2] == path
        run = [sys.executable, *command[1:], str(exporter)]

        def passes(run: list[str] = run) -> bool:
            return subprocess.run(run, timeout=10, check=False).returncode == 0

        wait_for(passes, 30, probe)
        wrong = pod.root / "wrong-password"
        wrong.write_text("not-it")
        failed = subprocess.run(
            [*run[:5], str(wrong), run[6]], capture_output=True, text=True, check=False
        )
        assert failed.returncode == 1
        assert "HTTP 401" in failed.stderr
