"""Register the portal with the IdP once, as an admin would with `idp clients`, and keep its credentials in a
file only its owner can read: running it again finds the same client instead of making another."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

CLIENT_NAME = "경기 민원포털 (예제)"
CLIENT_SCOPES = "openid profile"
CREDENTIALS_FILE = "portal-client.json"  # in the IdP's instance folder, beside its own secrets


class RegistrationError(Exception):
    """`idp clients` refused or failed; the message is its one-line error."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the portal needs from its registration, and a key of its own for signing CSRF tokens."""

    client_id: str
    client_secret: str
    portal_url: str
    secret_key: str

    @classmethod
    def read(cls, path: Path) -> Credentials | None:
        """The stored credentials, or None when the file is absent or not ours."""
        try:
            data = json.loads(path.read_text())
            return cls(**{name: str(data[name]) for name in ("client_id", "client_secret", "portal_url", "secret_key")})
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write(self, path: Path) -> None:
        """Replace the file atomically, readable by its owner only (mode 0600) from the first byte on."""
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(asdict(self), handle, indent=2)
        os.replace(temporary, path)


def redirect_uri(portal_url: str) -> str:
    return f"{portal_url}/callback"


def ensure_client(
    portal_url: str, *, credentials_file: Path, idp_command: str = "idp", env: Mapping[str, str] | None = None
) -> tuple[Credentials, str]:
    """The portal's client, registered on the first call only; the credentials and what was done
    (`"kept"`, `"created"`, or `"secret rotated"` when the client exists but its secret file was lost).

    Raises:
        RegistrationError: an `idp clients` command failed.
    """
    stored = Credentials.read(credentials_file)
    clients: list[dict[str, Any]] = _idp(idp_command, env, "clients", "list")
    known = {client["client_id"] for client in clients}
    if stored is not None and stored.portal_url == portal_url and stored.client_id in known:
        return stored, "kept"
    secret_key = stored.secret_key if stored is not None else secrets.token_urlsafe(32)
    for client in clients:
        if client["client_name"] == CLIENT_NAME and redirect_uri(portal_url) in client["redirect_uris"]:
            rotated = _idp(idp_command, env, "clients", "rotate-secret", client["client_id"])
            credentials = Credentials(client["client_id"], rotated["client_secret"], portal_url, secret_key)
            credentials.write(credentials_file)
            return credentials, "secret rotated"
    created = _idp(
        idp_command,
        env,
        "clients",
        "create",
        "--name",
        CLIENT_NAME,
        "--redirect-uri",
        redirect_uri(portal_url),
        "--post-logout-redirect-uri",
        f"{portal_url}/",
        "--backchannel-logout-uri",
        f"{portal_url}/backchannel-logout",
        "--scope",
        CLIENT_SCOPES,
        "--auth-method",
        "client_secret_basic",
        "--first-party",
    )
    credentials = Credentials(created["client_id"], created["client_secret"], portal_url, secret_key)
    credentials.write(credentials_file)
    return credentials, "created"


def _idp(command: str, env: Mapping[str, str] | None, *args: str) -> Any:
    """Run `idp ARGS --json` and return what it printed; its secrets never reach a log, only this return value."""
    result = subprocess.run(  # noqa: S603  (our own command, arguments as a list)
        [command, *args, "--json"],
        env=dict(env) if env is not None else None,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else f"exit {result.returncode}"
        raise RegistrationError(f"idp {' '.join(args[:2])}: {message}")
    return json.loads(result.stdout)
