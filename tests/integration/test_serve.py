"""`idp serve` as a real server process: rotation without restart, refusals in one line, log formats."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from idp_server import IdpServer
from sandbox_agency import IDP_COMMAND as IDP
from sandbox_agency import free_port
from waiting import wait_until

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


@pytest.fixture
def env(tmp_path: Path, keys_dir: Path, database_url: str) -> dict[str, str]:
    clean = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    return {
        **clean,
        "IDP_INSTANCE_DIR": str(tmp_path / "instance"),
        "IDP_KEYS_DIR": str(keys_dir),
        "IDP_DATABASE_URL": database_url,
    }


def jwks_kids(server: IdpServer) -> set[str]:
    return {key["kid"] for key in json.loads(server.get("/jwks")[1])["keys"]}


def test_running_server_serves_a_rotation_within_five_seconds(
    env: dict[str, str], start_server: Callable[..., IdpServer]
) -> None:
    server = start_server(env, workers=2)
    before = jwks_kids(server)
    rotated = time.monotonic()
    subprocess.run([IDP, "keys", "rotate"], env=env, check=True, capture_output=True)
    # Every worker must show it: ask until several answers in a row carry the new keys.
    answers: list[bool] = []

    def ten_in_a_row() -> bool:
        answers.append(bool(jwks_kids(server) - before))
        return len(answers) >= 10 and all(answers[-10:])

    wait_until(
        ten_in_a_row,
        timeout=5 - (time.monotonic() - rotated),
        interval=0.02,
        waiting_for="every worker to serve the rotated keys (ten answers in a row) within 5 s of the rotation",
    )


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
    env: dict[str, str], start_server: Callable[..., IdpServer]
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


def test_development_logs_are_readable_lines(env: dict[str, str], start_server: Callable[..., IdpServer]) -> None:
    server = start_server(env)
    server.get("/.well-known/openid-configuration")
    output = server.stop()
    expected = "INFO    idp.request: GET /.well-known/openid-configuration status=200"
    assert any(expected in line for line in output.splitlines()), output
