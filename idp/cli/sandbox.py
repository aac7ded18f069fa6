"""`idp sandbox`: run the sandbox agency, and read its outbox or add residents to a running one over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from idp.cli.context import echo_json, json_option
from idp.phones import normalize_phone
from idp.sandbox.residents import Carrier, ResidentInvalidError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8100
DEFAULT_SITE_CODE = "GG-IDP-SANDBOX"
DEFAULT_SITE_SECRET = "sandbox-site-secret"  # noqa: S105  (the sandbox's well-known development secret)
URL_FILE = "sandbox.url"  # in IDP_INSTANCE_DIR: where a running sandbox says where it listens
HTTP_TIMEOUT = 5.0  # seconds; the sandbox answers its own endpoints at once


@click.group()
def sandbox() -> None:
    """The sandbox carrier verification agency (development only)."""


# -- serve -------------------------------------------------------------------------------------------------------


@sandbox.command()
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
def serve(host: str, port: int) -> None:
    """Run the sandbox agency with werkzeug's development server until interrupted."""
    if os.environ.get("IDP_ENV", "").strip() == "production":
        raise click.ClickException("the sandbox agency is for development: it refuses to start with IDP_ENV=production")
    from werkzeug.serving import make_server

    from idp.sandbox import create_app

    instance_dir = _instance_dir()
    # Bind first, so that a taken port is one line (werkzeug would print two and exit) and --port 0 still gives
    # the results the right `iss`.
    try:
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    with listener:
        url = f"http://{_url_host(host)}:{listener.getsockname()[1]}"
        try:
            app = create_app(
                instance_dir / "sandbox",
                issuer=url,
                site_code=os.environ.get("IDP_CARRIER_SITE_CODE", "").strip() or DEFAULT_SITE_CODE,
                site_secret=os.environ.get("IDP_CARRIER_SITE_SECRET", "").strip() or DEFAULT_SITE_SECRET,
            )
        except (OSError, ResidentInvalidError) as exc:
            raise click.ClickException(f"cannot start the sandbox agency: {exc}") from None
        # werkzeug duplicates the descriptor, so closing `listener` leaves the server's socket open.
        server = make_server(host, port, app, threaded=True, fd=listener.fileno())
    url_file = instance_dir / URL_FILE
    with _stop_on_sigterm():
        try:
            url_file.parent.mkdir(parents=True, exist_ok=True)
            url_file.write_text(url + "\n")
            click.echo(f"sandbox agency on {url} (virtual phones at {url}/); Ctrl-C stops it", err=True)
            server.serve_forever()
        finally:
            server.server_close()
            # Another sandbox may have started since and written its own URL: leave that one.
            with contextlib.suppress(OSError):
                if url_file.read_text().strip() == url:
                    url_file.unlink()


@contextlib.contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into a normal exit so that the URL file is removed; only the main thread may set handlers."""

    def stop(signum: int, frame: FrameType | None) -> None:
        sys.exit(0)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0", "::"):  # noqa: S104  (naming the wildcard, not binding it)
        return DEFAULT_HOST
    return f"[{host}]" if ":" in host else host


# -- talking to a running sandbox --------------------------------------------------------------------------------


@sandbox.command()
@click.option("--phone", help="Only messages to this number (any form: 010-1234-5678, +821012345678 …).")
@json_option
def outbox(phone: str | None, as_json: bool) -> None:
    """The SMS messages the sandbox sent, oldest first."""
    path = "/sandbox/outbox"
    if phone is not None:
        path += "?" + urllib.parse.urlencode({"phone": _phone(phone)})
    messages = _call("GET", path)
    if as_json:
        echo_json(messages)
        return
    if not messages:
        click.echo("no messages")
    for message in messages:
        click.echo(f"{message['sent_at']} {message['phone']} {message['code']} {message['text']}")


@sandbox.group()
def residents() -> None:
    """The sandbox's synthetic residents."""


@residents.command("list")
@json_option
def residents_list(as_json: bool) -> None:
    """Every line the sandbox knows: shipped and added."""
    lines = _call("GET", "/sandbox/residents")
    if as_json:
        echo_json(lines)
        return
    for line in lines:
        click.echo(
            f"{line['person_id']} {line['phone']} {line['carrier']} {line['name']} — {line['note']}".rstrip(" —")
        )


@residents.command("add")
@click.option("--name", required=True, help="The person's name.")
@click.option("--birthdate", required=True, help="YYYY-MM-DD.")
@click.option("--rrn-digit7", required=True, type=click.Choice(list("12345678")), help="Registration digit 1-8.")
@click.option("--phone", required=True, help="The line's number (any form).")
@click.option("--carrier", required=True, type=click.Choice([c.value for c in Carrier]), help="The line's carrier.")
@click.option("--person-id", help="Add a line for this existing person instead of a new person.")
@click.option("--no-app", is_flag=True, help="The line has no carrier app (only SMS works).")
@click.option("--not-eligible", is_flag=True, help="A line that cannot verify (a corporate line).")
@click.option("--note", default="", help="What edge case this resident is for.")
@json_option
def residents_add(
    name: str,
    birthdate: str,
    rrn_digit7: str,
    phone: str,
    carrier: str,
    person_id: str | None,
    no_app: bool,
    not_eligible: bool,
    note: str,
    as_json: bool,
) -> None:
    """Add a synthetic resident (kept across sandbox restarts)."""
    body: dict[str, str | bool] = {
        "name": name,
        "birthdate": birthdate,
        "rrn_digit7": rrn_digit7,
        "phone": _phone(phone),
        "carrier": carrier,
        "has_app": not no_app,
        "eligible": not not_eligible,
        "note": note,
    }
    if person_id:
        body["person_id"] = person_id
    line = _call("POST", "/sandbox/residents", body)
    if as_json:
        echo_json(line)
    else:
        click.echo(f"added {line['person_id']}: {line['name']} {line['phone']} {line['carrier']}")


def agency_url() -> str:
    """IDP_CARRIER_AGENCY_URL, else the URL a running sandbox wrote into the instance folder, else the default."""
    configured = os.environ.get("IDP_CARRIER_AGENCY_URL", "").strip()
    if not configured:
        with contextlib.suppress(OSError):
            configured = (_instance_dir() / URL_FILE).read_text().strip()
    return (configured or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}").rstrip("/")


def _call(method: str, path: str, body: object = None) -> Any:
    """The agency's JSON answer to METHOD PATH (its shapes are the console's, idp/sandbox/console.py)."""
    base = agency_url()
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise click.ClickException(f"the sandbox agency URL must be http(s), not {base!r}")
    request = urllib.request.Request(  # noqa: S310  (scheme checked above)
        base + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:  # noqa: S310  (scheme checked)
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read())["message"]
        except (ValueError, KeyError, TypeError, OSError):
            message = f"HTTP {exc.code}"
        raise click.ClickException(f"the sandbox agency refused: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise click.ClickException(
            f"the sandbox agency at {base} is not answering ({reason}): start it with `idp sandbox serve`"
        ) from None
    except ValueError:
        raise click.ClickException(f"{base} answered something other than JSON: is it the sandbox agency?") from None


def _phone(value: str) -> str:
    try:
        return normalize_phone(value)
    except ValueError:
        raise click.ClickException(f"{value!r} is not a Korean mobile number such as 010-1234-5678") from None


def _instance_dir() -> Path:
    return Path(os.environ.get("IDP_INSTANCE_DIR", "").strip() or "instance")
