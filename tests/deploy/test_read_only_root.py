"""The overlays' exporter on a read-only root file system, for real: each overlay's
config and arguments, run in a mount namespace where every mount is read-only except
the volumes the overlay mounts writable, registering tasks and counting their finish."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import redis
import requests
import yaml

from exporter.track import track_tasks
from tests.deploy.support import container, objects, one
from tests.harness import (
    RedisServer,
    free_port,
    parse_metrics,
    require_redis_server,
    total,
    wait_for,
)
from tests.harness.fixtures import KEY

TOKEN = "read-only-root-test-token-0123456789"
TASKS = 4
# Every mount read-only, then a fresh tmpfs on each writable volume, as the
# container runtime lays them out; a write elsewhere must fail, or the check is void.
SANDBOX = """
set -eu
mount --make-rprivate /
awk '{print $2}' /proc/self/mounts | sort -u | while read -r mount_point; do
    mount -o remount,bind,ro "$mount_point" 2>/dev/null || true
done
for dir in $WRITABLE; do mount -t tmpfs -o mode=0777 tmpfs "$dir"; done
if touch "$MUST_FAIL" 2>/dev/null; then echo "the root file system is writable" >&2; exit 97; fi
exec "$@"
"""


def mount_namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = [unshare, "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "t", "/mnt"]
    return subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0


pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not mount_namespaces_work(), reason="needs root and mount namespaces (unshare)"
    ),
]


@pytest.fixture(scope="module", name="redis_server")
def _redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer(Path(tmp_path_factory.mktemp("redis"))).start()
    yield server
    server.stop()


def start(overlay: str, root: Path, config_changes: dict[str, Any]) -> tuple[Any, str]:
    """The overlay's exporter under a read-only root, its container paths under `root`."""
    exporter = container(overlay)
    volumes = {
        v["name"]: v for v in one(overlay, "Deployment")["spec"]["template"]["spec"]["volumes"]
    }
    maps = {cm["metadata"]["name"]: cm for cm in objects(overlay, "ConfigMap")}

    def here(path: str) -> Path:
        return root / PurePosixPath(path).relative_to("/")

    writable = []
    for mount in exporter["volumeMounts"]:
        here(mount["mountPath"]).mkdir(parents=True, exist_ok=True)
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            for key, text in maps[volume["configMap"]["name"]]["data"].items():
                (here(mount["mountPath"]) / key).write_text(text)
        if not mount.get("readOnly"):
            writable.append(str(here(mount["mountPath"])))
    assert "/tmp" in {m["mountPath"] for m in exporter["volumeMounts"] if not m.get("readOnly")}

    (flag,) = [arg for arg in exporter["args"] if arg.startswith("--config.file=")]
    config_path = here(flag.split("=", 1)[1])
    config = yaml.safe_load(config_path.read_text())
    for section, values in config_changes.items():
        config.setdefault(section, {}).update(values)
    if config.get("store", {}).get("path"):
        config["store"]["path"] = str(here(config["store"]["path"]))
    config_path.write_text(yaml.safe_dump(config))
    args = [f"--config.file={config_path}" if a == flag else a for a in exporter["args"]]

    workdir = here("/var/lib/lemondata-exporter")  # the image's WORKDIR and HOME
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "TMPDIR": str(here("/tmp")),
        "PYTHONDONTWRITEBYTECODE": "1",  # as the image sets
        "LEMONDATA_API_KEY": KEY,
        "LEMONDATA_EXPORTER_TOKEN": TOKEN,
        "WRITABLE": " ".join(writable),
        "MUST_FAIL": str(root / "written-on-the-root"),
    }
    log = (root / "exporter.log").open("wb")
    process = subprocess.Popen(
        [
            *("unshare", "--mount", "--propagation", "private", "sh", "-c", SANDBOX, "sh"),
            *(sys.executable, "-m", "exporter", *args, f"--web.listen-address=127.0.0.1:{port}"),
        ],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    return process, f"http://127.0.0.1:{port}"


def finished(process: Any, url: str, log: Path) -> float:
    if process.poll() is not None:
        raise AssertionError(f"exited {process.returncode}: {log.read_text()}")
    text = requests.get(f"{url}/metrics", timeout=5).text
    return total(parse_metrics(text), "lemondata_tasks_finished_total")


FAST = {
    "polling": {"strategy": "fixed", "cycle_interval_seconds": 0.2, "task_interval_seconds": 0.5},
}


def stop(process: Any, log: Path) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0, log.read_text()
    assert "Read-only file system" not in log.read_text()


def test_sqlite_overlay(simulator: Any, tmp_path: Path) -> None:
    process, url = start("sqlite", tmp_path, {"api": {"base_url": simulator.url}, **FAST})
    log = tmp_path / "exporter.log"
    try:
        wait_for(lambda: finished(process, url, log) >= 0, 30, "the exporter")
        created = [simulator.create_task(model="flux-pro", kind="image") for _ in range(TASKS)]
        result = track_tasks(
            [str(task["task_id"]) for task in created], "flux-pro", url=url, token=TOKEN
        )
        assert len(result.added) == TASKS
        wait_for(lambda: finished(process, url, log) >= TASKS, 60, "tasks finished")
    finally:
        stop(process, log)
    # The store was written on the volume's tmpfs, which went with the namespace.
    assert list((tmp_path / "var/lib/lemondata-exporter").iterdir()) == []


def test_redis_overlay(simulator: Any, redis_server: RedisServer, tmp_path: Path) -> None:
    changes = {
        "api": {"base_url": simulator.url},
        "store": {"redis_url": redis_server.url},
        **FAST,
    }
    process, url = start("redis", tmp_path, changes)
    log = tmp_path / "exporter.log"
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushdb()
        wait_for(lambda: finished(process, url, log) >= 0, 30, "the exporter")
        stream = yaml.safe_load(
            (tmp_path / "etc/lemondata-exporter/config/config.yaml").read_text()
        )["discovery"]["redis_stream"]["stream"]
        for _ in range(TASKS):
            task = simulator.create_task(model="flux-pro", kind="image")
            client.xadd(stream, {"task_id": task["task_id"], "model": "flux-pro"})
        wait_for(lambda: finished(process, url, log) >= TASKS, 60, "tasks finished")
    finally:
        client.close()
        stop(process, log)
