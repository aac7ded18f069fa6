"""`make run`: the IdP (with the sandbox carrier agency it starts) and the sample portal, registered on first run,
until Ctrl-C stops them all. `python -m examples.portal.run --help` lists the ports it takes."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from examples.portal.registration import CREDENTIALS_FILE, RegistrationError, ensure_client

START_TIMEOUT = 60.0  # seconds for a server to answer; a first `idp serve` also starts the sandbox
STOP_TIMEOUT = 15.0
# A synthetic resident of the sandbox (docs/carrier.md lists them all), to try the first sign-in with.
SAMPLE_RESIDENT = ("김경기", "1985-03-14", "1", "SKT", "010-0000-0001")
SAMPLE_PHONE = "+821000000001"


def _wait_for(url: str, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310  (our own servers on loopback)
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not answer {url} within {START_TIMEOUT:.0f} s")


def _terminate(process: subprocess.Popen[bytes]) -> None:
    """End a server and what it started (each runs in its own process group: `idp serve` has workers and the
    sandbox agency)."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.portal.run", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="`idp serve --host`")
    parser.add_argument("--idp-port", type=int, default=8000)
    parser.add_argument("--portal-port", type=int, default=8001)
    parser.add_argument("--idp-workers", type=int, help="`idp serve --workers` (default: one per core)")
    args = parser.parse_args()

    env = dict(os.environ)
    # WebAuthn needs a host name, so the IdP is on localhost; the portal on 127.0.0.1 is another site, whose
    # cookies the browser keeps apart from the IdP's.
    issuer = env.setdefault("IDP_ISSUER", f"http://localhost:{args.idp_port}").rstrip("/")
    portal_url = f"http://127.0.0.1:{args.portal_port}"
    instance = Path(env.get("IDP_INSTANCE_DIR") or "instance")
    credentials_file = instance / CREDENTIALS_FILE
    idp = str(Path(sys.executable).with_name("idp"))

    subprocess.run([idp, "init"], env=env, check=True)  # noqa: S603
    try:
        credentials, done = ensure_client(portal_url, credentials_file=credentials_file, idp_command=idp, env=env)
    except RegistrationError as error:
        raise SystemExit(f"registering the portal: {error}") from None
    print(f"portal client: {credentials.client_id} ({done}; credentials in {credentials_file}, mode 0600)")

    # Ctrl-C and SIGTERM alike interrupt whatever runs below, and `finally` stops every server.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    servers: list[subprocess.Popen[bytes]] = []
    try:
        serve = [idp, "serve", "--host", args.host, "--port", str(args.idp_port)]
        if args.idp_workers:
            serve += ["--workers", str(args.idp_workers)]
        servers.append(subprocess.Popen(serve, env=env, start_new_session=True))  # noqa: S603
        _wait_for(f"{issuer}/readyz", servers[0], "idp serve")
        portal_env = {**env, "PORTAL_ISSUER": issuer, "PORTAL_CREDENTIALS": str(credentials_file)}
        portal = [sys.executable, "-m", "examples.portal", "--port", str(args.portal_port)]
        servers.append(subprocess.Popen(portal, env=portal_env, start_new_session=True))  # noqa: S603
        _wait_for(f"{portal_url}/", servers[1], "the portal")
        sandbox = env.get("IDP_CARRIER_AGENCY_URL") or (instance / "sandbox.url").read_text().strip()
        name, birthdate, digit, carrier, phone = SAMPLE_RESIDENT
        print(
            "\nReady. Open:\n"
            f"  portal:        {portal_url}/\n"
            f"  IdP:           {issuer}/account\n"
            f"  virtual phone: {sandbox}/phone/{SAMPLE_PHONE}   (the SMS codes of the resident below)\n"
            f"Sign in with the mobile carrier as {name}, {birthdate}, digit {digit}, {carrier}, {phone}.\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        while all(server.poll() is None for server in servers):
            time.sleep(0.5)
        print("a server stopped; stopping the others", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in reversed(servers):
            _terminate(server)


if __name__ == "__main__":
    sys.exit(main())
