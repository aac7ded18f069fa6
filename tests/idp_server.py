"""`idp serve` as a real process on a free port, for tests that need real HTTP (and a browser)."""

from __future__ import annotations

import os
import signal
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from sandbox_agency import IDP_COMMAND, free_port
from waiting import wait_until


class IdpServer:
    """A running `idp serve`; `stop()` ends it and the sandbox it started, and returns what it logged."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        workers: int = 1,
        port: int | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [IDP_COMMAND, "serve", "--port", str(self.port), "--workers", str(workers), *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(
            self._ready,
            timeout=30,
            waiting_for=f"idp serve on port {self.port} to answer /readyz",
            ignoring=(OSError,),
            detail=log_path.read_text,
        )

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"idp serve exited: {self.log_path.read_text()}")
        return self.get("/readyz")[0] == 200

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
