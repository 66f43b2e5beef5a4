"""`check-config` through the real command line: every problem at once, one format."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.support import KEY_ENV, TOKEN_ENV, check_config, lines

pytestmark = pytest.mark.integration
KEY = "sk-check-config-0123456789"
TOKEN = "token-check-config-0123456789"


def test_every_problem_in_one_run_in_one_format(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("short\n")
    (tmp_path / "a-file").write_text("")
    config = f"""
api:
  timout_seconds: 3
  key_file: {tmp_path}/secrets/key
api_server:
  token_file: {tmp_path}/token
polling:
  max_wait_seconds: 2
  task_interval_seconds: 5
store:
  path: {tmp_path}/a-file/store.db
"""
    result = check_config(tmp_path, config)
    path = tmp_path / "config.yaml"
    assert result.returncode == 1
    assert result.stdout == ""
    assert lines(result.stderr) == [
        f"{path}: api.timout_seconds: unknown setting; did you mean `timeout_seconds`?",
        f"{path}: polling.max_wait_seconds: 2 is below polling.task_interval_seconds (5): "
        "tasks would time out before their second poll; raise max_wait_seconds or lower "
        "task_interval_seconds",
        f"{path}: api.key_file: cannot read {tmp_path}/secrets/key: No such file or directory",
        f"{path}: api_server.token_file: {tmp_path}/token: the token must be at least 16 "
        "characters (e.g. the output of `openssl rand -hex 32`)",
        f"{path}: store.path: cannot create {tmp_path}/a-file/store.db: "
        f"{tmp_path}/a-file is not a folder",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "api:\n  timout_seconds: 3\n",
            "api.timout_seconds: unknown setting; did you mean `timeout_seconds`?",
        ),
        (
            "polling:\n  key_file: k\n",
            "polling.key_file: unknown setting here; did you mean `api.key_file`?",
        ),
        (
            "api_key: sk-do-not-print-me\n",
            "api_key: the API key must not be written in the "
            "config file; set $LEMONDATA_API_KEY or api.key_file",
        ),
        (
            "api:\n  key: sk-do-not-print-me\n",
            "api.key: the API key must not be written in the "
            "config file; set $LEMONDATA_API_KEY or api.key_file",
        ),
        (
            "proxy:\n  listen_address: 9849\n",
            'proxy.listen_address: must be text such as ":9849" '
            "(a bare port number is read as a number)",
        ),
        (
            'proxy:\n  listen_address: "9849"\n',
            "proxy.listen_address: a bare port number; "
            "write :9849 (every interface) or 127.0.0.1:9849",
        ),
        (
            "api:\n  timeout_seconds: 10s\n",
            "api.timeout_seconds: must be a number of seconds without a unit (e.g. 10)",
        ),
        (
            "tasks: [img_abc]\n",
            "tasks[0]: must be a mapping of settings (key: value), such as {id: img_abc}",
        ),
        (
            "api:\n  base_url: [\n",
            "not valid YAML (line 3, column 1): expected the node content, "
            "but found '<stream end>', while parsing a flow node",
        ),
        (
            "api:\n\tbase_url: x\n",
            "not valid YAML (line 2, column 1): found character '\\t' that "
            "cannot start any token, while scanning for the next token (indent with spaces; YAML "
            "does not allow tabs there)",
        ),
        (
            "polling:\n  backoff_base_seconds: 400\n",
            "polling.backoff_base_seconds: 400 is above "
            "polling.backoff_max_seconds (300): the first wait after an error would exceed the "
            "longest; lower backoff_base_seconds or raise backoff_max_seconds",
        ),
    ],
)
def test_messages_say_what_to_do(tmp_path: Path, text: str, expected: str) -> None:
    result = check_config(tmp_path, text, **{KEY_ENV: KEY})
    assert result.returncode == 1
    assert lines(result.stderr) == [f"{tmp_path / 'config.yaml'}: {expected}"]
    assert "do-not-print-me" not in result.stderr
    assert "(top level)" not in result.stderr


def test_no_api_key_is_a_warning_and_the_summary_lists_every_source(tmp_path: Path) -> None:
    (tmp_path / "tasks.jsonl").write_text("")
    config = {
        "discovery": {
            "files": [{"path": str(tmp_path / "tasks.jsonl")}],
            "redis_stream": {"redis_url": "redis://127.0.0.1:1/0"},
        },
        "proxy": {"enabled": True, "listen_address": "127.0.0.1:9849"},
        "store": {"path": str(tmp_path / "store.db")},
    }
    result = check_config(
        tmp_path,
        {**config, "discovery": {"files": config["discovery"]["files"]}},
        **{TOKEN_ENV: TOKEN},
    )
    path = tmp_path / "config.yaml"
    assert result.returncode == 0, result.stderr
    assert lines(result.stderr) == [
        f"{path}: api.key_file: warning: no API key: `run` needs $LEMONDATA_API_KEY or "
        "api.key_file (`lemondata-exporter demo` runs without one)"
    ]
    assert lines(result.stdout) == [
        f"{path}: OK, 1 warning(s)",
        "  upstream: https://api.lemondata.cc (no API key yet)",
        "  polling: adaptive, a cycle every 1 s, at most 5 requests/s",
        f"  store: SQLite {tmp_path}/store.db",
        "  tasks in the config: 0",
        f"  watched files: {tmp_path}/tasks.jsonl (source file)",
        "  Redis stream: off",
        "  proxy: on 127.0.0.1:9849, forwarding to https://api.lemondata.cc",
        "  task API: on at /api/v1/ (token from $LEMONDATA_EXPORTER_TOKEN)",
        "  web: :9847: /metrics, / and the status page /status; no TLS, no basic auth",
        "  settings not at their defaults:",
        f'    store.path = "{tmp_path}/store.db" (from {path})',
        f"    discovery.files = 1 item(s) (from {path})",
        f"    proxy.enabled = true (from {path})",
        f'    proxy.listen_address = "127.0.0.1:9849" (from {path})',
    ]
    # An unreachable Redis is a problem: `run` could not start.
    result = check_config(tmp_path, config, **{KEY_ENV: KEY})
    assert result.returncode == 1
    assert lines(result.stderr) == [
        f"{path}: discovery.redis_stream.redis_url: Redis at redis://127.0.0.1:1/0 does not "
        "answer: ConnectionError"
    ]


def test_summary_with_a_reachable_redis(tmp_path: Path) -> None:
    from tests.harness import RedisServer, require_redis_server

    require_redis_server()
    server = RedisServer(tmp_path).start()
    try:
        config = {
            "store": {"backend": "redis", "redis_url": server.url},
            "discovery": {"redis_stream": {}},
        }
        result = check_config(tmp_path, config, **{KEY_ENV: KEY})
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert f"  store: Redis {server.url} (prefix lemondata:)" in lines(result.stdout)
    assert f"  Redis stream: lemondata:tasks on {server.url} (group lemondata-exporter)" in lines(
        result.stdout
    )


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        (
            "sk-first-line\nsk-second-line",
            "holds more than one line (a line break inside it); keep only the key",
        ),
        ("sk-with\rreturn", "holds more than one line (a line break inside it); keep only the key"),
        ("sk-caf\u00e9-key", "contains a character outside ASCII (a pasted quote or space?)"),
    ],
)
def test_an_api_key_that_cannot_be_sent_is_refused(tmp_path: Path, key: str, problem: str) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    path = tmp_path / "config.yaml"
    result = check_config(tmp_path, {"api": {"key_file": str(key_file)}})
    assert result.returncode == 1
    assert lines(result.stderr) == [f"{path}: api.key_file: the key in {key_file} {problem}"]
    result = check_config(tmp_path, "", **{KEY_ENV: key})
    assert result.returncode == 1
    assert lines(result.stderr) == [f"{path}: $LEMONDATA_API_KEY: the key {problem}"]
    for part in key.split():
        assert part not in result.stderr


def test_world_readable_secret_files_are_warned_about(tmp_path: Path) -> None:
    key_file, token_file = tmp_path / "key", tmp_path / "token"
    key_file.write_text(KEY)
    token_file.write_text(TOKEN)
    key_file.chmod(0o644)
    token_file.chmod(0o604)
    config = {"api": {"key_file": str(key_file)}, "api_server": {"token_file": str(token_file)}}
    result = check_config(tmp_path, config)
    path = tmp_path / "config.yaml"
    assert result.returncode == 0
    assert lines(result.stderr) == [
        f"{path}: api.key_file: warning: {key_file} is readable by every user on this machine "
        f"(mode 0644); run `chmod 600 {key_file}`",
        f"{path}: api_server.token_file: warning: {token_file} is readable by every user on "
        f"this machine (mode 0604); run `chmod 600 {token_file}`",
    ]
    assert KEY not in result.stderr + result.stdout and TOKEN not in result.stderr + result.stdout
    key_file.chmod(0o600)
    token_file.chmod(0o640)
    assert check_config(tmp_path, config).stderr == ""


def test_store_path_and_watched_files_are_checked(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "not-sqlite.db").write_text("hello")
    path = tmp_path / "config.yaml"
    result = check_config(tmp_path, {"store": {"path": str(tmp_path / "folder")}}, **{KEY_ENV: KEY})
    assert lines(result.stderr) == [
        f"{path}: store.path: {tmp_path}/folder is a folder; store.path names the SQLite file "
        "inside it"
    ]
    result = check_config(
        tmp_path, {"store": {"path": str(tmp_path / "not-sqlite.db")}}, **{KEY_ENV: KEY}
    )
    assert lines(result.stderr) == [
        f"{path}: store.path: {tmp_path}/not-sqlite.db exists and is not a SQLite database"
    ]
    config = {
        "store": {"path": str(tmp_path / "new" / "store.db")},  # a folder it can create
        "discovery": {
            "files": [
                {"path": str(tmp_path / "taks.jsonl")},
                {"path": str(tmp_path / "nowhere" / "tasks.jsonl"), "name": "other"},
                {"path": str(tmp_path / "folder"), "name": "third"},
            ]
        },
    }
    result = check_config(tmp_path, config, **{KEY_ENV: KEY})
    assert result.returncode == 1
    assert lines(result.stderr) == [
        f"{path}: discovery.files[2].path: {tmp_path}/folder is a folder, not a file",
        f"{path}: discovery.files[0].path: warning: {tmp_path}/taks.jsonl does not exist yet; "
        "it is read once it appears (a typo in the path?)",
        f"{path}: discovery.files[1].path: warning: {tmp_path}/nowhere/tasks.jsonl: the folder "
        f"{tmp_path}/nowhere does not exist (a typo?)",
    ]


def test_the_readme_shows_what_check_config_prints_for_the_shipped_config() -> None:
    from tests.cli.support import ROOT, clean_env, cli

    readme = (ROOT / "README.md").read_text()
    start = readme.index("```\nconfig.yaml: OK\n") + len("```\n")
    shown = readme[start : readme.index("```", start)]
    result = cli(
        "check-config", "--config.file", "config.yaml", cwd=ROOT, env=clean_env(**{KEY_ENV: KEY})
    )
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout == shown
