"""`--web.config.file`: TLS, client certificates and basic auth, with real TLS clients."""

from __future__ import annotations

import base64
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bcrypt
import pytest
import requests
import yaml

from exporter.config import ConfigError
from exporter.simulator import Simulator
from exporter.web import security
from exporter.web.httpserver import HttpServer
from exporter.web.security import BasicAuth, load_web_security
from tests.hardening.certs import CA, Pair
from tests.harness import ExporterProcess, free_port, parse_metrics, total, wait_for
from tests.harness.fixtures import KEY, create_tasks, exporter_config

PASSWORD = "correct horse battery staple"
# Cost 4 keeps the tests quick; the format is the same as cost 10.
HASH = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)).decode().replace("$2b$", "$2y$", 1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("pki")
    ca = CA(folder, "ca")
    other = CA(folder, "other-ca")
    return {
        "ca": ca.cert_file,
        "server": ca.issue("server", server=True),
        "client": ca.issue("client", server=False),
        "stranger": other.issue("stranger", server=False),
    }


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
    return [b"ok\n"]


def write_config(folder: Path, data: dict[str, Any], name: str = "web.yml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data))
    return path


def tls_section(pki: dict[str, Any], **extra: Any) -> dict[str, Any]:
    server: Pair = pki["server"]
    return {"cert_file": str(server.cert), "key_file": str(server.key), **extra}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    servers: list[HttpServer] = []

    def start(data: dict[str, Any]) -> str:
        web_security = load_web_security(write_config(tmp_path, data))
        assert web_security is not None
        server = HttpServer(web_security.wrap(hello), "127.0.0.1:0", tls=web_security.tls)
        server.start()
        servers.append(server)
        scheme = "https" if web_security.tls else "http"
        return f"{scheme}://127.0.0.1:{server.port}"

    yield start
    for server in servers:
        server.stop()


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# ---- the file: parse and validate ------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"basic_auth_users": {"alice": "plain-SECRET-pw"}}, "basic_auth_users: the password of"),
        ({"basic_auth_users": {"a:b": HASH}}, "basic_auth_users: user names"),
        ({"tls_server_config": {"cert_file": "x.crt"}}, "tls_server_config.key_file: Field"),
        ({"tls_server_config": {"cert_file": "a", "key_file": "b", "x": 1}}, ".x: unknown setting"),
        (
            {"tls_server_config": {"cert_file": "a", "key_file": "b", "min_version": "TLS14"}},
            "tls_server_config.min_version: must be one of",
        ),
        (
            {
                "tls_server_config": {
                    "cert_file": "a",
                    "key_file": "b",
                    "client_auth_type": "RequireAnyClientCert",
                }
            },
            "tls_server_config.client_auth_type: RequireAnyClientCert accepts unverified",
        ),
        (
            {
                "tls_server_config": {
                    "cert_file": "a",
                    "key_file": "b",
                    "key": "-----BEGIN PRIVATE KEY----- SECRET",
                }
            },
            "tls_server_config.key: inline PEM is not supported",
        ),
        ({"tls_server_config": {"cert_file": "/nonexistent.crt", "key_file": "b"}}, "cert_file:"),
        ({"rate_limit": {"interval": "1s", "burst": 2}}, "rate_limit: is not supported"),
        ({"http_server_config": {"headers": {"X-Evil": "1"}}}, "http_server_config.headers:"),
        ({"basic_auth_users": ["alice"]}, "basic_auth_users: Input should be a valid dictionary"),
    ],
)
def test_bad_files_name_the_file_and_field(
    tmp_path: Path, data: dict[str, Any], expected: str
) -> None:
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        load_web_security(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ")
    assert expected in text
    for secret in ("SECRET", HASH):
        assert secret not in text


def test_bad_files_about_certificates(tmp_path: Path, pki: dict[str, Any]) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    cases = [
        (tls_section(pki, key_file=str(garbage)), "cert_file/key_file: "),
        (tls_section(pki, client_auth_type="RequireAndVerifyClientCert"), "client_ca_file: needed"),
        (tls_section(pki, client_ca_file=str(garbage)), "client_ca_file: "),
        (tls_section(pki, min_version="TLS13", max_version="TLS12"), "max_version: must not"),
    ]
    for section, expected in cases:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_web_security(write_config(tmp_path, {"tls_server_config": section}))
    for text, expected in (("a: [", "not valid YAML (line"), ("- 1", "top level must be")):
        (tmp_path / "raw.yml").write_text(text)
        with pytest.raises(ConfigError, match=re.escape(expected)):
            load_web_security(tmp_path / "raw.yml")
    with pytest.raises(ConfigError, match="file not found"):
        load_web_security(tmp_path / "missing.yml")
    assert load_web_security(None) is None


def test_the_config_repr_hides_hashes(tmp_path: Path) -> None:
    loaded = load_web_security(write_config(tmp_path, {"basic_auth_users": {"alice": HASH}}))
    assert loaded is not None
    for text in (repr(loaded), repr(loaded.config), str(loaded.config), loaded.describe()):
        assert HASH not in text and HASH[7:] not in text


# ---- basic auth ------------------------------------------------------------------


@pytest.mark.integration
def test_basic_auth_on_every_path(serve: Any) -> None:
    url = serve(
        {
            "basic_auth_users": {"alice": HASH},
            "http_server_config": {"headers": {"X-Content-Type-Options": "nosniff"}},
        }
    )
    for path in ("/", "/metrics", "/-/healthy", "/-/ready", "/nope", "/api/v1/x"):
        refused = requests.get(url + path, timeout=5)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"].startswith('Basic realm="')
        assert refused.headers["X-Content-Type-Options"] == "nosniff"
    assert requests.get(url, headers=basic("alice", "wrong"), timeout=5).status_code == 401
    assert requests.get(url, headers=basic("bob", PASSWORD), timeout=5).status_code == 401
    accepted = requests.get(url + "/metrics", headers=basic("alice", PASSWORD), timeout=5)
    assert accepted.status_code == 200 and accepted.text == "ok\n"
    assert requests.get(url, auth=("alice", PASSWORD), timeout=5).status_code == 200


def test_basic_auth_leaves_own_auth_paths_to_their_app() -> None:
    from pydantic import SecretStr

    seen: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"ok"]

    guarded = BasicAuth(app, {"alice": SecretStr(HASH)}, own_auth_prefixes=("/api/",))

    def status(path: str, header: str = "") -> str:
        result: list[str] = []
        guarded({"PATH_INFO": path, "HTTP_AUTHORIZATION": header}, lambda s, h: result.append(s))
        return result[0]

    assert status("/api/v1/tasks", "Bearer the-api-token").startswith("200")
    assert status("/metrics", "Bearer the-api-token").startswith("401")
    assert status("/apix").startswith("401")
    assert status("/metrics", basic("alice", PASSWORD)["Authorization"]).startswith("200")
    assert seen == ["/api/v1/tasks", "/metrics"]


@pytest.mark.parametrize(
    "header",
    [
        "Basic",
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon").decode(),
        "Basic " + base64.b64encode(b"alice:" + b"x" * 100).decode(),  # over bcrypt's 72 bytes
        "Basic " + base64.b64encode(b"alice:pass\x00word").decode(),
        "Basic " + base64.b64encode(b"\xff\xfe:\xff").decode(),
        "Bearer " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode(),
        "basic " + base64.b64encode(f"alice:{PASSWORD}x".encode()).decode(),
    ],
)
def test_odd_credentials_are_refused_without_errors(header: str) -> None:
    auth = BasicAuth(hello, {"alice": security.SecretStr(HASH)})
    assert auth.check(header) is False


def test_successful_checks_are_cached(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(security.bcrypt, "checkpw", counting)
    auth = BasicAuth(hello, {"alice": security.SecretStr(HASH)})
    good = basic("alice", PASSWORD)["Authorization"]
    assert all(auth.check(good) for _ in range(20))
    assert len(calls) == 1
    assert not any(auth.check(basic("alice", "nope")["Authorization"]) for _ in range(3))
    assert len(calls) == 4  # wrong passwords are never cached
    assert not auth.check(basic("mallory", "x")["Authorization"])
    assert len(calls) == 5  # unknown users cost a bcrypt check too
    assert auth.check(good) and len(calls) == 5


# ---- TLS -------------------------------------------------------------------------


@pytest.mark.integration
def test_tls_with_basic_auth(serve: Any, pki: dict[str, Any]) -> None:
    url = serve({"tls_server_config": tls_section(pki), "basic_auth_users": {"alice": HASH}})
    ok = requests.get(url + "/metrics", auth=("alice", PASSWORD), verify=str(pki["ca"]), timeout=5)
    assert ok.status_code == 200
    assert requests.get(url, verify=str(pki["ca"]), timeout=5).status_code == 401
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url, timeout=5)  # the system trust store does not know our CA
    with pytest.raises(requests.ConnectionError):
        requests.get(url.replace("https", "http"), timeout=5)


@pytest.mark.integration
def test_client_certificates_when_required(serve: Any, pki: dict[str, Any]) -> None:
    section = tls_section(
        pki, client_auth_type="RequireAndVerifyClientCert", client_ca_file=str(pki["ca"])
    )
    url = serve({"tls_server_config": section})
    ca = str(pki["ca"])
    client, stranger = pki["client"], pki["stranger"]
    good = requests.get(url, verify=ca, cert=(str(client.cert), str(client.key)), timeout=5)
    assert good.status_code == 200
    for cert in (None, (str(stranger.cert), str(stranger.key))):
        with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
            requests.get(url, verify=ca, cert=cert, timeout=5)


@pytest.mark.integration
def test_client_certificates_when_given(serve: Any, pki: dict[str, Any]) -> None:
    section = tls_section(
        pki, client_auth_type="VerifyClientCertIfGiven", client_ca_file=str(pki["ca"])
    )
    url = serve({"tls_server_config": section})
    ca = str(pki["ca"])
    assert requests.get(url, verify=ca, timeout=5).status_code == 200
    stranger = pki["stranger"]
    with pytest.raises((requests.exceptions.SSLError, requests.ConnectionError)):
        requests.get(url, verify=ca, cert=(str(stranger.cert), str(stranger.key)), timeout=5)


def _handshake(port: int, ca: Path, version: ssl.TLSVersion) -> str:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = context.maximum_version = version
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return str(tls.version())


@pytest.mark.integration
def test_min_version(serve: Any, pki: dict[str, Any]) -> None:
    url = serve({"tls_server_config": tls_section(pki, min_version="TLS13")})
    port = int(url.rsplit(":", 1)[1])
    assert _handshake(port, pki["ca"], ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError):
        _handshake(port, pki["ca"], ssl.TLSVersion.TLSv1_2)
    default = serve({"tls_server_config": tls_section(pki)})
    assert _handshake(int(default.rsplit(":", 1)[1]), pki["ca"], ssl.TLSVersion.TLSv1_2)


@pytest.mark.integration
def test_a_stalled_handshake_does_not_block_other_clients(serve: Any, pki: dict[str, Any]) -> None:
    url = serve({"tls_server_config": tls_section(pki)})
    port = int(url.rsplit(":", 1)[1])
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello
    try:
        started = time.monotonic()
        response = requests.get(url, verify=str(pki["ca"]), timeout=5)
        assert response.status_code == 200
        # Far less than the handshake timeout the stalled clients are allowed.
        assert time.monotonic() - started < handshake_timeout() / 2
    finally:
        for sock in [*silent, half]:
            sock.close()


def handshake_timeout() -> float:
    from exporter.web.httpserver import ServerLimits

    return ServerLimits().head_seconds


# ---- through the command line ----------------------------------------------------


@pytest.mark.integration
def test_run_with_tls_and_basic_auth(
    simulator: Simulator, tmp_path: Path, pki: dict[str, Any]
) -> None:
    web = write_config(
        tmp_path, {"tls_server_config": tls_section(pki), "basic_auth_users": {"alice": HASH}}
    )
    exporter = ExporterProcess(tmp_path, exporter_config(simulator.url, tmp_path), KEY)
    exporter.url = exporter.url.replace("http://", "https://")
    exporter.extra_args = ["--web.config.file", str(web)]
    ca = str(pki["ca"])
    exporter.start(wait_ready=False)
    try:

        def ready() -> bool:
            got = requests.get(f"{exporter.url}/-/ready", auth=("alice", PASSWORD), verify=ca)
            return got.status_code == 200

        wait_for(ready, 30, "the exporter behind TLS")
        create_tasks(simulator, tmp_path / "tasks.jsonl", 5)

        def finished() -> float:
            text = requests.get(
                f"{exporter.url}/metrics", auth=("alice", PASSWORD), verify=ca, timeout=5
            ).text
            return total(parse_metrics(text), "lemondata_tasks_finished_total") == 5

        wait_for(finished, 60, "tasks finished, seen through TLS")
        assert requests.get(f"{exporter.url}/metrics", verify=ca, timeout=5).status_code == 401
    finally:
        assert exporter.terminate() == 0
    assert "web: TLS on (min TLS12" in exporter.log_text()


@pytest.mark.integration
def test_demo_and_check_config_honour_the_flag(tmp_path: Path) -> None:
    bad = write_config(tmp_path, {"basic_auth_users": {"alice": "SECRET-not-a-hash"}})
    for command in (
        ["demo", "--web.listen-address", f"127.0.0.1:{free_port()}"],
        ["check-config", "--config.file", str(write_config(tmp_path, {}, "c.yml"))],
    ):
        result = subprocess.run(
            [sys.executable, "-m", "exporter", *command, "--web.config.file", str(bad)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={"LEMONDATA_API_KEY": KEY, "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode in (1, 2), result
        assert f"{bad}: basic_auth_users: the password of user 'alice'" in result.stderr
        assert "SECRET" not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr
