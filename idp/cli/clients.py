"""`idp clients`: register relying services, show, list and delete them, rotate secrets, mint registration tokens."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from idp.cli.context import database, echo_json, json_option, now, rfc3339, settings
from idp.keyring import ALGORITHMS
from idp.models import Client
from idp.oidc.claims import AUTH_METHODS, GRANT_TYPES, SCOPES, SUBJECT_TYPES
from idp.oidc.clients import (
    DEFAULT_SCOPES,
    ClientInvalidError,
    ClientSpec,
    InitialAccessTokenInvalidError,
    client_to_json,
    create_client,
    delete_client,
    find_client,
    list_clients,
    mint_initial_access_token,
    rotate_client_secret,
    secret_digest_key,
)
from idp.oidc.outbound import allows_local_destinations

MAX_JWKS_FILE_BYTES = 64 * 1024  # a JWKS of a few public keys is a few kilobytes
SHOWN_ONCE = "shown only once: store it now, the IdP keeps only a digest"


@contextmanager
def _database() -> Iterator[Session]:
    """The shared committed-on-success session, where a refused client or token is one line and exit status 1."""
    with database() as db:
        try:
            yield db
        except (ClientInvalidError, InitialAccessTokenInvalidError) as exc:
            raise click.ClickException(str(exc)) from None


def _find(db: Session, client_id: str) -> Client:
    client = find_client(db, client_id)
    if client is None:
        raise click.ClickException(f"no client {client_id!r}: `idp clients list` shows every client id")
    return client


def _print_client(data: dict[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, bool):
            value = "yes" if value else "no"
        elif isinstance(value, list):
            value = " ".join(value)
        click.echo(f"{key}: {value if value not in (None, '') else '-'}")


@click.group()
def clients() -> None:
    """Relying services (OIDC clients): create, list, show, delete, rotate-secret, registration-token."""


@clients.command("create")
@click.option("--name", required=True, help="The service's name, shown to residents on the consent page.")
@click.option("--redirect-uri", "redirect_uris", multiple=True, help="Where codes are sent (repeat for several).")
@click.option(
    "--post-logout-redirect-uri", "post_logout_redirect_uris", multiple=True, help="Where logout may return to."
)
@click.option("--public", is_flag=True, help="A browser or native app that cannot keep a secret (PKCE required).")
@click.option("--auth-method", help=f"Token endpoint authentication: {', '.join(AUTH_METHODS)}.")
@click.option("--jwks-uri", help="URL of the client's public keys (private_key_jwt).")
@click.option(
    "--jwks-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A JSON file with the client's public keys (private_key_jwt).",
)
@click.option("--grant-type", "grant_types", multiple=True, help=f"Repeat for several: {', '.join(GRANT_TYPES)}.")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    help=f"What the client may ask for, repeated: {', '.join(SCOPES)} (default: {' '.join(DEFAULT_SCOPES)}).",
)
@click.option("--backchannel-logout-uri", help="Where logout tokens are posted when a resident signs out.")
@click.option("--first-party", is_flag=True, help="A provincial service: residents are not asked for consent.")
@click.option("--subject-type", help=f"{' or '.join(SUBJECT_TYPES)} `sub` values (default: pairwise).")
@click.option("--id-token-alg", help=f"ID token signing algorithm: {', '.join(ALGORITHMS)} (default: RS256).")
@click.option("--default-acr", help="The acr asked for when a request names none.")
@json_option
def clients_create(
    name: str,
    redirect_uris: tuple[str, ...],
    post_logout_redirect_uris: tuple[str, ...],
    public: bool,
    auth_method: str | None,
    jwks_uri: str | None,
    jwks_file: Path | None,
    grant_types: tuple[str, ...],
    scopes: tuple[str, ...],
    backchannel_logout_uri: str | None,
    first_party: bool,
    subject_type: str | None,
    id_token_alg: str | None,
    default_acr: str | None,
    as_json: bool,
) -> None:
    """Register a relying service; prints its client_id, and its client_secret once."""
    spec = ClientSpec(
        name=name,
        redirect_uris=redirect_uris,
        post_logout_redirect_uris=post_logout_redirect_uris,
        public=public,
        auth_method=auth_method,
        jwks_uri=jwks_uri,
        jwks=_read_jwks(jwks_file) if jwks_file is not None else None,
        grant_types=grant_types or None,
        # RFC 7591 writes scopes space-separated; `--scope "openid profile"` is taken as two scopes.
        scopes=tuple(scope for value in scopes for scope in value.split()) or None,
        backchannel_logout_uri=backchannel_logout_uri,
        first_party=first_party,
        subject_type=subject_type,
        id_token_alg=id_token_alg,
        default_acr=default_acr,
    )
    current = settings()
    with _database() as db:
        created = create_client(
            db,
            spec,
            secret_key=secret_digest_key(current.secret_key),
            issuer=current.issuer,
            now=now(),
            allow_restricted_scopes=True,
            # The admin is held to the same rule as dynamic registration: outside development, the IdP calls
            # only https URLs on public hosts.
            allow_local_server_uris=allows_local_destinations(current),
        )
        data = client_to_json(created.client)
    if as_json:
        echo_json({**data, "client_secret": created.secret})
        return
    _print_client(data)
    if created.secret is not None:
        click.echo(f"client_secret: {created.secret}")
        click.echo(f"({SHOWN_ONCE})")


def _read_jwks(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_JWKS_FILE_BYTES + 1)
    except OSError as exc:
        raise click.ClickException(f"cannot read --jwks-file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_JWKS_FILE_BYTES:
        raise click.ClickException(f"--jwks-file {path} is larger than {MAX_JWKS_FILE_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise click.ClickException(f"--jwks-file {path} is not JSON: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise click.ClickException(f'--jwks-file {path} must hold a JSON object {{"keys": [...]}}')
    return data


@clients.command("list")
@json_option
def clients_list(as_json: bool) -> None:
    """List the clients, oldest first."""
    with _database() as db:
        rows = [client_to_json(client) for client in list_clients(db)]
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no clients")
        return
    columns = ("client_id", "client_name", "token_endpoint_auth_method", "grant_types")
    table = [[" ".join(row[c]) if isinstance(row[c], list) else str(row[c]) for c in columns] for row in rows]
    headers = ("CLIENT_ID", "NAME", "AUTH", "GRANTS")
    widths = [max(len(header), *(len(line[i]) for line in table)) for i, header in enumerate(headers)]
    click.echo("  ".join(header.ljust(width) for header, width in zip(headers, widths, strict=True)).rstrip())
    for line in table:
        click.echo("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip())


@clients.command("show")
@click.argument("client_id")
@json_option
def clients_show(client_id: str, as_json: bool) -> None:
    """Show one client's registration."""
    with _database() as db:
        data = client_to_json(_find(db, client_id))
    echo_json(data) if as_json else _print_client(data)


@clients.command("delete")
@click.argument("client_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def clients_delete(client_id: str, yes: bool, as_json: bool) -> None:
    """Delete a client with its codes, tokens and consents; its residents' sign-ins stop working at once."""
    with _database() as db:
        client = _find(db, client_id)
        if not yes and not click.confirm(f"Delete client {client.id} ({client.name}) and its tokens?", err=True):
            raise click.Abort
        delete_client(db, client)
    echo_json({"client_id": client_id, "deleted": True}) if as_json else click.echo(f"{client_id}: deleted")


@clients.command("rotate-secret")
@click.argument("client_id")
@json_option
def clients_rotate_secret(client_id: str, as_json: bool) -> None:
    """Give a client a new secret; the old one stops working at once."""
    current = settings()
    with _database() as db:
        client = _find(db, client_id)
        rotated_at = now()
        secret = rotate_client_secret(db, client, key=secret_digest_key(current.secret_key), now=rotated_at)
    if as_json:
        echo_json({"client_id": client_id, "client_secret": secret, "secret_rotated_at": rfc3339(rotated_at)})
        return
    click.echo(f"client_secret: {secret}")
    click.echo(f"({SHOWN_ONCE}; the old secret no longer works)")


@clients.command("registration-token")
@click.option("--uses", default=1, show_default=True, type=int, help="How many registrations it allows.")
@click.option("--expires-in", default=86400, show_default=True, type=int, help="Lifetime in seconds.")
@click.option("--note", help="What it is for (kept with the token's digest).")
@json_option
def clients_registration_token(uses: int, expires_in: int, note: str | None, as_json: bool) -> None:
    """Mint an initial access token that lets a relying service register itself (RFC 7591 §3)."""
    minted_at = now()
    with _database() as db:
        token = mint_initial_access_token(db, uses=uses, expires_in=expires_in, note=note, now=minted_at)
    expires_at = rfc3339(minted_at + dt.timedelta(seconds=expires_in))
    if as_json:
        echo_json({"initial_access_token": token, "uses": uses, "expires_at": expires_at, "note": note})
        return
    click.echo(f"initial_access_token: {token}")
    click.echo(f"({SHOWN_ONCE}; good for {uses} registration{'s' if uses != 1 else ''} until {expires_at})")
