"""`idp init` and `idp serve`: set up the database and keyring, and run the production server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import click

from idp.authn.attestation import AttestationPolicy
from idp.cli.context import echo_json, keyring, one_line_errors, settings
from idp.cli.keys import record_json
from idp.db import database_is_current, upgrade_database
from idp.settings import Settings

SANDBOX_FIRST_PORT = 8100
SANDBOX_START_TIMEOUT = 15  # seconds for the sandbox agency to answer before `idp serve` gives up


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def init(as_json: bool) -> None:
    """Create or upgrade the database and create the keyring if absent; safe to run again."""
    current = settings()
    ring = keyring()
    with one_line_errors():
        # Before the database too: a folder of keys without its manifest stops `init` with nothing touched.
        ring.check_creatable()
        before, after = upgrade_database(current.sqlalchemy_url)
        created = ring.ensure_default()
    if as_json:
        echo_json({"database": {"before": before, "after": after}, "keys_created": [record_json(k) for k in created]})
        return
    if before == after:
        click.echo(f"database: up to date (revision {after})")
    else:
        click.echo(f"database: upgraded from {before or 'empty'} to revision {after}")
    if created:
        click.echo(f"keyring: created in {current.keys_dir} with {len(created)} keys")
    else:
        click.echo(f"keyring: {current.keys_dir} already exists")


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="Port to listen on.")
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1, 256),
    help="Worker processes (default: one per core).",
)
@click.option(
    "--keep-alive-timeout",
    default=None,
    type=click.IntRange(1, 3600),
    help="Seconds a connection may wait for its next request before it is closed (default: 5).",
)
def serve(host: str, port: int, workers: int | None, keep_alive_timeout: int | None) -> None:
    """Run the IdP with the production WSGI server."""
    current = settings()
    with one_line_errors():
        keyring().records()
        if not database_is_current(current.sqlalchemy_url):
            raise click.ClickException("the database is not at the newest migration: run `idp init` first")
        _check_attestation_metadata(current)
    # granian loads for this command only.
    from idp.server import KEEP_ALIVE_TIMEOUT, run

    sandbox = _start_sandbox(current)
    try:
        run(
            host=host,
            port=port,
            workers=workers or os.cpu_count() or 1,
            keep_alive_timeout=KEEP_ALIVE_TIMEOUT if keep_alive_timeout is None else keep_alive_timeout,
        )
    finally:
        if sandbox is not None:
            sandbox.terminate()
            sandbox.wait(timeout=10)


def _check_attestation_metadata(current: Settings) -> None:
    """A broken FIDO metadata file stops `serve` with one line here, not a crash loop in every worker."""
    try:
        AttestationPolicy.from_metadata_file(current.fido_metadata_path, require=current.webauthn_require_attestation)
    except ValueError as error:
        raise click.ClickException(f"IDP_FIDO_METADATA_PATH: {error}") from None


def _start_sandbox(current: Settings) -> subprocess.Popen[bytes] | None:
    """In development without IDP_CARRIER_AGENCY_URL, run the sandbox agency beside the IdP (docs/admin.md
    section 2)."""
    if current.carrier_agency_url is not None:
        return None
    port = _free_port(SANDBOX_FIRST_PORT)
    process = subprocess.Popen([sys.executable, "-m", "idp", "sandbox", "serve", "--port", str(port)])  # noqa: S603
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SANDBOX_START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException("the sandbox carrier agency did not start")
        try:
            with urllib.request.urlopen(f"{url}/v1/jwks", timeout=1):  # noqa: S310  (our own sandbox on loopback)
                break
        except OSError:
            time.sleep(0.1)
    else:
        process.terminate()
        raise click.ClickException(f"the sandbox carrier agency did not answer on {url}")
    return process


def _free_port(first: int) -> int:
    for port in range(first, first + 100):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise click.ClickException(f"no free port from {first} for the sandbox carrier agency")
