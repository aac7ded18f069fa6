"""The sandbox carrier agency as tests drive it: a running server and its sandbox-only controls."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from waiting import wait_until

IDP_COMMAND = str(Path(sys.executable).with_name("idp"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class SandboxAgency:
    """A running `idp sandbox serve` and its sandbox-only controls (outbox, faults, clock, virtual phone)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def call(self, method: str, path: str, body: object = None, *, form: dict[str, str] | None = None) -> Any:
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                text_body = response.read().decode()
        except urllib.error.HTTPError as error:
            text_body = error.read().decode()
        try:
            return json.loads(text_body)
        except ValueError:
            return text_body

    def reset(self) -> None:
        self.call("POST", "/sandbox/reset")

    def outbox(self, phone: str | None = None) -> list[dict[str, Any]]:
        query = "?" + urllib.parse.urlencode({"phone": phone}) if phone else ""
        messages: list[dict[str, Any]] = self.call("GET", f"/sandbox/outbox{query}")
        return messages

    def last_code(self, phone: str) -> str:
        code: str = self.outbox(phone)[-1]["code"]
        return code

    def fault(self, mode: str, count: int | None = None) -> None:
        body: dict[str, Any] = {"mode": mode}
        if count is not None:
            body["count"] = count
        self.call("POST", "/sandbox/faults", body)

    def advance(self, seconds: int) -> None:
        self.call("POST", "/sandbox/clock", {"advance": seconds})

    def pass_poll_interval(self) -> None:
        """Move the agency's clock past its poll interval (one second, idp/sandbox/agency.py POLL_INTERVAL), so
        that the next poll of a transaction is answered instead of told to slow down."""
        self.advance(2)

    def answer(self, phone: str, txn_id: str, *, number: str | None = None, deny: bool = False) -> None:
        form = {"deny": "1"} if deny else {"number": number or ""}
        self.call("POST", f"/phone/{phone}/approvals/{txn_id}", form=form)

    def reissue_ci(self, person_id: str) -> None:
        self.call("POST", f"/sandbox/residents/{person_id}/reissue-ci")


@contextlib.contextmanager
def running_sandbox(instance_dir: Path) -> Iterator[SandboxAgency]:
    """`idp sandbox serve` on a free port with its state in `instance_dir`, stopped when the block ends."""
    instance_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("IDP_")}
    env["IDP_INSTANCE_DIR"] = str(instance_dir)
    log_path = instance_dir / "sandbox.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [IDP_COMMAND, "sandbox", "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}"

        def answers() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"the sandbox agency exited: {log_path.read_text()}")
            with urllib.request.urlopen(f"{url}/v1/jwks", timeout=1):
                return True

        try:
            wait_until(
                answers,
                timeout=20,
                waiting_for=f"the sandbox agency to answer at {url}",
                ignoring=(OSError,),
                detail=log_path.read_text,
            )
            yield SandboxAgency(url)
        finally:
            process.terminate()
            process.wait(timeout=10)
