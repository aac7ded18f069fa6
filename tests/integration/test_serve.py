"""`idp serve` as a real server process: rotation without restart, refusals in one line, log formats."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

IDP = str(Path(sys.executable).with_name("idp"))
PRODUCTION = {
    "IDP_ENV": "production",
    "IDP_ISSUER": "https://login.gg.go.kr",
    "IDP_SECRET_KEY": "s" * 43,
    "IDP_DATA_KEY": "d" * 43,
    "IDP_CI_PEPPER": "p" * 43,
    "IDP_PAIRWISE_SECRET": "w" * 43,
    "IDP_CARRIER_AGENCY_URL": "https://agency.example.kr",
    "IDP_CARRIER_SITE_SECRET": "agency-issued-secret",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def env(tmp_path: Path, keys_dir: Path, database_url: str) -> dict[str, str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    return {
        **clean,
        "IDP_INSTANCE_DIR": str(tmp_path / "instance"),
        "IDP_KEYS_DIR": str(keys_dir),
        "IDP_DATABASE_URL": database_url,
    }


class Server:
    def __init__(self, env: dict[str, str], log_path: Path, workers: int = 1) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [IDP, "serve", "--port", str(self.port), "--workers", str(workers)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"idp serve exited: {log_path.read_text()}")
            try:
                if self.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"idp serve did not become ready: {log_path.read_text()}")

    def get(self, path: str) -> tuple[int, bytes]:
        with urllib.request.urlopen(self.base + path, timeout=5) as response:
            return response.status, response.read()

    def stop(self) -> str:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.log_path.read_text()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[type[Server]]:
    started: list[Server] = []

    class Tracked(Server):
        def __init__(self, env: dict[str, str], log_path: Path = tmp_path / "serve.log", workers: int = 1) -> None:
            super().__init__(env, log_path, workers)
            started.append(self)

    yield Tracked
    for server in started:
        server.stop()


def jwks_kids(server: Server) -> set[str]:
    return {key["kid"] for key in json.loads(server.get("/jwks")[1])["keys"]}


def test_running_server_serves_a_rotation_within_five_seconds(env: dict[str, str], start_server: type[Server]) -> None:
    server = start_server(env, workers=2)
    before = jwks_kids(server)
    rotated = time.monotonic()
    subprocess.run([IDP, "keys", "rotate"], env=env, check=True, capture_output=True)
    # Every worker must show it: ask until several answers in a row carry the new keys.
    in_a_row = 0
    while in_a_row < 10:
        assert time.monotonic() - rotated < 5, "the rotation was not served within 5 s"
        in_a_row = in_a_row + 1 if jwks_kids(server) - before else 0
        time.sleep(0.02)


def run_idp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([IDP, *args], env=env, capture_output=True, text=True, timeout=60)


def assert_one_line_error(result: subprocess.CompletedProcess[str], expected: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_serve_refuses_a_corrupt_key_file_and_names_it(env: dict[str, str], keys_dir: Path) -> None:
    pem = sorted(keys_dir.glob("*.pem"))[0]
    pem.write_bytes(b"not a key")
    assert_one_line_error(run_idp(env, "serve", "--port", str(free_port())), f"{pem} is not a readable private key")


def test_serve_refuses_unsafe_production_settings(env: dict[str, str]) -> None:
    result = run_idp({**env, **PRODUCTION, "IDP_ISSUER": "http://login.gg.go.kr"}, "serve")
    assert_one_line_error(result, "IDP_ENV=production needs an https IDP_ISSUER")


def test_serve_refuses_generated_secret_key_in_production(env: dict[str, str]) -> None:
    production = {k: v for k, v in PRODUCTION.items() if k != "IDP_SECRET_KEY"}
    result = run_idp({**env, **production}, "serve")
    assert_one_line_error(result, "not generated: IDP_SECRET_KEY")


def test_serve_refuses_a_database_that_is_not_migrated(env: dict[str, str], tmp_path: Path) -> None:
    result = run_idp({**env, "IDP_DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}"}, "serve")
    assert_one_line_error(result, "run `idp init` first")


def test_serve_refuses_an_unreachable_database(env: dict[str, str]) -> None:
    result = run_idp({**env, "IDP_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/idp"}, "serve")
    assert_one_line_error(result, "database: ")


def test_production_logs_one_json_object_per_line_without_query_strings(
    env: dict[str, str], start_server: type[Server]
) -> None:
    server = start_server({**env, **PRODUCTION})
    server.get("/jwks?code=SECRETCODE123&login_hint=01012345678")
    output = server.stop()
    request_lines = [json.loads(line) for line in output.splitlines() if '"idp.request"' in line]
    jwks = next(line for line in request_lines if line["message"] == "GET /jwks")
    assert jwks["level"] == "info"
    assert jwks["status"] == 200
    assert jwks["time"].endswith("Z")
    assert "SECRETCODE123" not in output
    assert "01012345678" not in output
    # Every line the IdP writes is JSON (the server's own start-up lines come from granian).
    for line in output.splitlines():
        if "idp." in line:
            json.loads(line)


def test_development_logs_are_readable_lines(env: dict[str, str], start_server: type[Server]) -> None:
    server = start_server(env)
    server.get("/.well-known/openid-configuration")
    output = server.stop()
    expected = "INFO    idp.request: GET /.well-known/openid-configuration status=200"
    assert any(expected in line for line in output.splitlines()), output
