"""Latency the proxy adds: the same calls to the simulator, direct and through the proxy.

Not a test. The simulator and the exporter (with `proxy.enabled` and a SQLite
store) are subprocesses on loopback; this process is the application. It
sends `--requests` create calls (`POST /v1/images/generations`, which the
proxy reads whole, registers and then answers) and as many status calls
(`GET /v1/tasks/{id}`, streamed through), alternating direct and proxied so
that drift hits both alike, each over one keep-alive connection. Meanwhile
the exporter polls the tasks it registered, as it would in production.

    python bench/proxy_latency.py --requests 1000 --out /tmp/proxy.md
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
import yaml

from tests.harness import free_port, wait_for

KEY = "sk-proxy-benchmark-key"


def wait_up(url: str, timeout: float = 30.0) -> None:
    wait_for(lambda: requests.get(url, timeout=1).status_code < 500, timeout, url)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="per call kind and path")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    sim_port, web_port, proxy_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    config = {
        "api": {"base_url": sim_url},
        "polling": {"cycle_interval_seconds": 0.5, "requests_per_second": 20},
        "store": {"path": str(workdir / "store.db")},
        "proxy": {"enabled": True, "listen_address": f"127.0.0.1:{proxy_port}"},
        "log_level": "warning",
    }
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "LEMONDATA_API_KEY": KEY}
    simulator = subprocess.Popen(
        [sys.executable, "-m", "exporter", "simulate", "--web.listen-address",
         f"127.0.0.1:{sim_port}", "--api-key", KEY, "--time-scale", "60",
         "--rate-limit-per-minute", "0", "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    exporter = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config.file", str(workdir / "config.yaml"),
         "--web.listen-address", f"127.0.0.1:{web_port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_up(f"{sim_url}/_sim/health")
        wait_up(f"http://127.0.0.1:{web_port}/-/ready")
        bases = {"direct": sim_url, "proxy": f"http://127.0.0.1:{proxy_port}"}
        sessions = {name: requests.Session() for name in bases}
        for session in sessions.values():
            session.headers["Authorization"] = f"Bearer {KEY}"
        timings: dict[tuple[str, str], list[float]] = {}
        task_ids: list[str] = []
        for number in range(args.warmup + args.requests):
            for name in ("direct", "proxy") if number % 2 else ("proxy", "direct"):
                session, base = sessions[name], bases[name]
                started = time.perf_counter()
                answer = session.post(
                    base + "/v1/images/generations", json={"model": "flux-schnell", "prompt": "b"}
                )
                create = time.perf_counter() - started
                assert answer.status_code == 200, answer.text
                task_id = answer.json()["task_id"]
                task_ids.append(task_id)
                started = time.perf_counter()
                status = session.get(f"{base}/v1/tasks/{task_id}")
                poll = time.perf_counter() - started
                assert status.status_code == 200, status.text
                if number >= args.warmup:
                    timings.setdefault(("create", name), []).append(create)
                    timings.setdefault(("status", name), []).append(poll)
        metrics = requests.get(f"http://127.0.0.1:{web_port}/metrics", timeout=5).text
        registered = next(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('lemondata_tasks_discovered_total{source="proxy"}')
        )
    finally:
        exporter.terminate()
        simulator.terminate()
        exporter.wait(30)
        simulator.wait(30)

    rows = [
        "| call | path | p50 ms | p99 ms | mean ms |",
        "| --- | --- | --- | --- | --- |",
    ]
    summary = []
    for kind in ("create", "status"):
        stats = {}
        for name in ("direct", "proxy"):
            values = timings[(kind, name)]
            stats[name] = (
                percentile(values, 0.5),
                percentile(values, 0.99),
                statistics.mean(values),
            )
            p50, p99, mean = (v * 1000 for v in stats[name])
            rows.append(f"| {kind} | {name} | {p50:.2f} | {p99:.2f} | {mean:.2f} |")
        added50 = (stats["proxy"][0] - stats["direct"][0]) * 1000
        added99 = (stats["proxy"][1] - stats["direct"][1]) * 1000
        ratio = stats["proxy"][0] / stats["direct"][0]
        summary.append(
            f"- {kind}: the proxy adds {added50:.2f} ms at p50 ({ratio:.2f}x), "
            f"{added99:.2f} ms at p99"
        )
    lines = [
        f"{args.requests} calls of each kind per path after {args.warmup} warm-up; "
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; tasks registered by the proxy: {registered:.0f} "
        f"of {len(task_ids) // 2} created through it.",
        "",
        *rows,
        "",
        *summary,
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
