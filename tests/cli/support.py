"""The real command line as a subprocess: exit codes and the lines a user reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KEY_ENV = "LEMONDATA_API_KEY"
TOKEN_ENV = "LEMONDATA_EXPORTER_TOKEN"


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any key, token or setting, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k != KEY_ENV and not k.startswith("LEMONDATA_EXPORTER_")
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env if env is not None else clean_env(),
        timeout=timeout,
        check=False,
    )


def write_config(folder: Path, config: dict[str, Any] | str) -> Path:
    path = folder / "config.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def check_config(
    folder: Path, config: dict[str, Any] | str, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    path = write_config(folder, config)
    return cli("check-config", "--config.file", str(path), *args, cwd=folder, env=clean_env(**env))


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]
