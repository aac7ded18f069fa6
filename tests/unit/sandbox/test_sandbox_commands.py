"""`idp sandbox …`: serve (refusals, URL file), and outbox / residents against a running sandbox."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sandbox_support import AUTH, KIM, SITE_CODE, SITE_SECRET
from waiting import wait_until
from werkzeug.serving import make_server

from idp.cli.sandbox import sandbox
from idp.sandbox import create_app

SERVE = "from idp.cli.sandbox import sandbox; sandbox.main(['serve', '--port', '0'], prog_name='idp sandbox')"


@pytest.fixture
def live_url(tmp_path: Path) -> Iterator[str]:
    """A sandbox served over real HTTP on a free port, in a thread."""
    server = make_server("127.0.0.1", 0, app=None, threaded=True)  # type: ignore[arg-type]  # attached below
    url = f"http://127.0.0.1:{server.server_port}"
    server.app = create_app(tmp_path / "live", issuer=url, site_code=SITE_CODE, site_secret=SITE_SECRET)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield url
    server.shutdown()
    thread.join()
    server.server_close()


@pytest.fixture
def cli(tmp_path: Path, live_url: str) -> CliRunner:
    return CliRunner(env={"IDP_CARRIER_AGENCY_URL": live_url, "IDP_INSTANCE_DIR": str(tmp_path / "instance")})


def start_sms(url: str) -> None:
    body = {**KIM, "method": "sms", "session_binding": "s", "client_ip": "192.0.2.1", "consent": True}
    request = urllib.request.Request(
        f"{url}/v1/verifications",
        data=json.dumps(body).encode(),
        headers={**AUTH, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 201


# -- serve -------------------------------------------------------------------------------------------------------


def test_serve_refuses_to_start_in_production(tmp_path: Path) -> None:
    result = CliRunner(env={"IDP_ENV": "production", "IDP_INSTANCE_DIR": str(tmp_path)}).invoke(sandbox, ["serve"])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "IDP_ENV=production" in result.output
    assert not (tmp_path / "sandbox").exists()
    assert not (tmp_path / "sandbox.url").exists()


def test_serve_says_in_one_line_that_the_port_is_taken(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = CliRunner(env={"IDP_INSTANCE_DIR": str(tmp_path)}).invoke(sandbox, ["serve", "--port", str(port)])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_serve_records_its_url_while_running_and_removes_it_on_sigterm(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    env["IDP_INSTANCE_DIR"] = str(instance)
    process = subprocess.Popen([sys.executable, "-c", SERVE], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url_file = instance / "sandbox.url"

        def url_recorded() -> bool:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            return url_file.exists()

        wait_until(url_recorded, timeout=20, waiting_for=f"the sandbox to record its URL in {url_file}")
        url = url_file.read_text().strip()
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{url}/v1/jwks", timeout=5) as response:
            assert json.loads(response.read())["keys"]
        start_sms(url)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert not url_file.exists()
        assert (instance / "sandbox" / "signing-key.pem").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


# -- outbox ------------------------------------------------------------------------------------------------------


def test_outbox_prints_one_line_per_message(cli: CliRunner, live_url: str) -> None:
    assert cli.invoke(sandbox, ["outbox"]).output == "no messages\n"
    start_sms(live_url)
    result = cli.invoke(sandbox, ["outbox"])
    assert result.exit_code == 0, result.output
    (line,) = result.output.splitlines()
    sent_at, phone, code, text = line.split(" ", 3)
    assert sent_at.endswith("Z")
    assert phone == "+821000000001"
    assert code.isdigit()
    assert text.startswith("[경기도 통합 로그인]")
    assert code in text


def test_outbox_json_and_the_phone_filter(cli: CliRunner, live_url: str) -> None:
    start_sms(live_url)
    result = cli.invoke(sandbox, ["outbox", "--phone", "010-0000-0001", "--json"])
    assert result.exit_code == 0, result.output
    (message,) = json.loads(result.output)
    assert set(message) == {"phone", "text", "code", "txn_id", "sent_at"}
    result = cli.invoke(sandbox, ["outbox", "--phone", "+82 10 0000 0002", "--json"])
    assert json.loads(result.output) == []


def test_outbox_refuses_a_number_that_is_not_a_mobile_number(cli: CliRunner) -> None:
    result = cli.invoke(sandbox, ["outbox", "--phone", "02-123-4567"])
    assert result.exit_code == 1
    assert "not a Korean mobile number" in result.output


def test_a_sandbox_that_is_not_running_is_one_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    env = {"IDP_CARRIER_AGENCY_URL": f"http://127.0.0.1:{port}", "IDP_INSTANCE_DIR": str(tmp_path)}
    result = CliRunner(env=env).invoke(sandbox, ["outbox"])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "not answering" in result.output
    assert "idp sandbox serve" in result.output


def test_the_url_file_is_used_when_no_agency_url_is_set(tmp_path: Path, live_url: str) -> None:
    (tmp_path / "sandbox.url").write_text(live_url + "\n")
    result = CliRunner(env={"IDP_CARRIER_AGENCY_URL": "", "IDP_INSTANCE_DIR": str(tmp_path)}).invoke(
        sandbox, ["outbox", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == []


# -- residents ---------------------------------------------------------------------------------------------------

ADD = ["residents", "add", "--name", "문평택", "--birthdate", "2000-01-01", "--rrn-digit7", "4"]


def test_residents_add_then_list(cli: CliRunner) -> None:
    result = cli.invoke(sandbox, [*ADD, "--phone", "010-0000-0200", "--carrier", "KT"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("added p-")
    assert "+821000000200 KT" in result.output
    result = cli.invoke(sandbox, ["residents", "list", "--json"])
    lines = json.loads(result.output)
    added = [line for line in lines if line["source"] == "added"]
    assert [line["phone"] for line in added] == ["+821000000200"]
    assert "p-kim-gyeonggi" in cli.invoke(sandbox, ["residents", "list"]).output


def test_residents_add_json_with_options(cli: CliRunner) -> None:
    args = [*ADD, "--phone", "01000000201", "--carrier", "SKT_MVNO", "--no-app", "--not-eligible", "--json"]
    result = cli.invoke(sandbox, [*args, "--person-id", "p-cli", "--note", "from the CLI"])
    assert result.exit_code == 0, result.output
    line = json.loads(result.output)
    assert (line["person_id"], line["has_app"], line["eligible"], line["note"]) == (
        "p-cli",
        False,
        False,
        "from the CLI",
    )


def test_residents_add_reports_the_sandboxes_refusal_in_one_line(cli: CliRunner) -> None:
    args = ["residents", "add", "--name", "가", "--birthdate", "2000-13-01", "--rrn-digit7", "3"]
    result = cli.invoke(sandbox, [*args, "--phone", "010-0000-0202", "--carrier", "KT"])
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "birthdate" in result.output


def test_residents_add_refuses_a_bad_phone_before_calling(cli: CliRunner) -> None:
    result = cli.invoke(sandbox, [*ADD, "--phone", "123", "--carrier", "KT"])
    assert result.exit_code == 1
    assert "not a Korean mobile number" in result.output
