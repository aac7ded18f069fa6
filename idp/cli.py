"""The `idp` command: init, serve, and one subgroup per noun (keys …), one command per verb."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import click
from click.exceptions import NoArgsIsHelpError
from sqlalchemy.exc import SQLAlchemyError

from idp.db import database_is_current, upgrade_database
from idp.keyring import ALGORITHMS, KeyRecord, Keyring, KeyringError, RotationResult
from idp.settings import Settings, SettingsError

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """Turn the errors an admin can fix into one line and exit status 1, never a traceback."""
    try:
        yield
    except (SettingsError, KeyringError) as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        origin = getattr(exc, "orig", None) or exc
        first_line = str(origin).strip().splitlines()[0] if str(origin).strip() else type(origin).__name__
        raise click.ClickException(f"database: {first_line}") from None


def _settings() -> Settings:
    ctx = click.get_current_context()
    settings = ctx.meta.get("idp.settings")
    if settings is None:
        with _one_line_errors():
            settings = Settings.from_env()
        ctx.meta["idp.settings"] = settings
    return settings


def _keyring() -> Keyring:
    settings = _settings()
    return Keyring.from_directory(settings.keys_dir, settings.keys_passphrase)


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The identity provider of Gyeonggi-do residents: set up, run and administer it."""


# -- init and serve ----------------------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def init(as_json: bool) -> None:
    """Create or upgrade the database and create the keyring if absent; safe to run again."""
    settings = _settings()
    keyring = _keyring()
    with _one_line_errors():
        # Before the database too: a folder of keys without its manifest stops `init` with nothing touched.
        keyring.check_creatable()
        before, after = upgrade_database(settings.sqlalchemy_url)
        created = keyring.ensure_default()
    if as_json:
        _echo_json({"database": {"before": before, "after": after}, "keys_created": [_record(k) for k in created]})
        return
    if before == after:
        click.echo(f"database: up to date (revision {after})")
    else:
        click.echo(f"database: upgraded from {before or 'empty'} to revision {after}")
    if created:
        click.echo(f"keyring: created in {settings.keys_dir} with {len(created)} keys")
    else:
        click.echo(f"keyring: {settings.keys_dir} already exists")


@cli.command()
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
    settings = _settings()
    with _one_line_errors():
        _keyring().records()
        if not database_is_current(settings.sqlalchemy_url):
            raise click.ClickException("the database is not at the newest migration: run `idp init` first")
        _check_attestation_metadata(settings)
    from idp.server import KEEP_ALIVE_TIMEOUT, run

    sandbox = _start_sandbox(settings)
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


def _check_attestation_metadata(settings: Settings) -> None:
    """A broken FIDO metadata file stops `serve` with one line here, not a crash loop in every worker."""
    from idp.authn.attestation import AttestationPolicy

    try:
        AttestationPolicy.from_metadata_file(settings.fido_metadata_path, require=settings.webauthn_require_attestation)
    except ValueError as error:
        raise click.ClickException(f"IDP_FIDO_METADATA_PATH: {error}") from None


SANDBOX_FIRST_PORT = 8100


def _start_sandbox(settings: Settings) -> subprocess.Popen[bytes] | None:
    """In development without IDP_CARRIER_AGENCY_URL, run the sandbox agency beside the IdP (DESIGN section 3)."""
    if settings.carrier_agency_url is not None:
        return None
    port = _free_port(SANDBOX_FIRST_PORT)
    process = subprocess.Popen([sys.executable, "-m", "idp", "sandbox", "serve", "--port", str(port)])  # noqa: S603
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
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


from idp.oidc.commands import clients  # noqa: E402  (the OIDC package owns its commands)
from idp.sandbox.commands import sandbox  # noqa: E402  (the sandbox agency owns its commands)

cli.add_command(clients)
cli.add_command(sandbox)


# -- keys --------------------------------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """The signing keys: list, generate, rotate, retire, prune."""


def _record(record: KeyRecord) -> dict[str, Any]:
    data = record.to_json()
    data.pop("encrypted")
    data["published"] = record.withdrawn is None
    return data


def _print_records(records: Sequence[KeyRecord], as_json: bool) -> None:
    if as_json:
        _echo_json([_record(record) for record in records])
        return
    if not records:
        click.echo("no keys")
        return
    columns = ("kid", "alg", "state", "created", "activated", "retired")
    rows = [[str(_record(record).get(column) or "-") for column in columns] for record in records]
    for record, row in zip(records, rows, strict=True):
        if record.withdrawn:
            row[2] = "retired (withdrawn)"
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]
    click.echo("  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


def _was_encrypted(keyring: Keyring) -> bool | None:
    """Whether any stored key is encrypted before a change; None when there is no keyring yet."""
    try:
        return any(record.encrypted for record in keyring.stored_records())
    except KeyringError:
        return None


def _check_change(keyring: Keyring, was_encrypted: bool | None) -> tuple[list[str], str | None]:
    """After a change, load the keyring as the servers will: warnings, and what stops them loading it (if any).

    Servers honour a withdrawal even then, but sign and publish the keys they held until the keyring loads.
    """
    try:
        records = keyring.verify()
    except KeyringError as exc:
        return [], f"the keyring changed, but servers cannot load it: {exc}"
    if was_encrypted is False and any(record.encrypted for record in records):
        # The one case this command cannot check: servers that never needed the passphrase may not have it.
        return [
            "the keys this command added are the keyring's first encrypted keys: "
            "every server needs this IDP_KEYS_PASSPHRASE, or it cannot load them"
        ], None
    return [], None


def _print_warnings(warnings: Sequence[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def _fail_if(problem: str | None) -> None:
    if problem is not None:
        raise click.ClickException(problem)


def _print_rotation(result: RotationResult, as_json: bool) -> None:
    _print_warnings(result.warnings)
    if as_json:
        _echo_json({"activated": [_record(r) for r in result.activated], "warnings": result.warnings})
    else:
        for record in result.activated:
            click.echo(f"{record.alg}: {record.kid} now signs")


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
alg_choice = click.Choice(ALGORITHMS)


@keys.command("list")
@json_option
def keys_list(as_json: bool) -> None:
    """List the keys: kid, alg, state, and when each was created, activated and retired."""
    with _one_line_errors():
        records = _keyring().records()
    _print_records(records, as_json)


@keys.command("generate")
@click.option("--alg", required=True, type=alg_choice, help="The key's algorithm.")
@json_option
def keys_generate(alg: str, as_json: bool) -> None:
    """Add a `next` key: published at once, signing from the next rotation."""
    keyring = _keyring()
    with _one_line_errors():
        was_encrypted = _was_encrypted(keyring)
        record = keyring.generate(alg)
    warnings, problem = _check_change(keyring, was_encrypted)
    _print_warnings(warnings)
    if as_json:
        _echo_json(_record(record))
    else:
        click.echo(f"{alg}: {record.kid} is the next key; it signs after `idp keys rotate --alg {alg}`")
    _fail_if(problem)


@keys.command("rotate")
@click.option("--alg", type=alg_choice, help="Rotate only this algorithm (default: every algorithm).")
@json_option
def keys_rotate(alg: str | None, as_json: bool) -> None:
    """next → active, active → retired, and a new next key."""
    settings = _settings()
    keyring = _keyring()
    with _one_line_errors():
        was_encrypted = _was_encrypted(keyring)
        result = keyring.rotate(alg, min_published=settings.jwks_max_age)
    warnings, problem = _check_change(keyring, was_encrypted)
    _print_rotation(dataclasses.replace(result, warnings=result.warnings + warnings), as_json)
    _fail_if(problem)


@keys.command("retire")
@click.argument("kid")
@click.option("--now", "withdraw", is_flag=True, help="Also drop the key from the JWKS at once (compromise).")
@json_option
def keys_retire(kid: str, withdraw: bool, as_json: bool) -> None:
    """Stop signing with KID; its algorithm's next key takes over."""
    settings = _settings()
    keyring = _keyring()
    with _one_line_errors():
        was_encrypted = _was_encrypted(keyring)
        result = keyring.retire(kid, now=withdraw, min_published=settings.jwks_max_age)
    warnings, problem = _check_change(keyring, was_encrypted)
    _print_rotation(dataclasses.replace(result, warnings=result.warnings + warnings), as_json)
    if not as_json:
        click.echo(f"{kid}: retired" + (" and withdrawn from the JWKS" if withdraw else ""))
    _fail_if(problem)


@keys.command("prune")
@json_option
def keys_prune(as_json: bool) -> None:
    """Drop retired keys that no unexpired token or JWKS cache can still need."""
    settings = _settings()
    keep_for = dt.timedelta(seconds=settings.longest_signed_token_ttl + settings.jwks_max_age)
    keyring = _keyring()
    with _one_line_errors():
        dropped = keyring.prune(keep_for=keep_for)
    _, problem = _check_change(keyring, None)
    if as_json:
        _echo_json([_record(record) for record in dropped])
    elif dropped:
        for record in dropped:
            click.echo(f"dropped {record.alg} key {record.kid}")
    else:
        click.echo(f"nothing to prune: retired keys are kept {int(keep_for.total_seconds())} s")
    _fail_if(problem)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: usage errors become one line on stderr (exit 2), like every other error."""
    try:
        status = cli.main(args=list(argv) if argv is not None else None, prog_name="idp", standalone_mode=False)
    except NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        sys.exit(2)
    except click.UsageError as exc:
        # click lists choices on further lines; scripts and people both read one line better.
        click.echo(f"idp: error: {' '.join(exc.format_message().split())}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"idp: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("idp: aborted", err=True)
        sys.exit(1)
    sys.exit(status if isinstance(status, int) else 0)


# -- residents ---------------------------------------------------------------------------------------------------


@cli.group()
def residents() -> None:
    """Resident accounts: list, show, lock, unlock, remove-totp, delete."""


@contextmanager
def _database() -> Iterator[Any]:
    from idp.db import make_engine, make_session_factory, session_scope

    settings = _settings()
    with _one_line_errors():
        engine = make_engine(settings.sqlalchemy_url)
        try:
            with session_scope(make_session_factory(engine)) as db:
                yield db
        finally:
            engine.dispose()


def _resident_json(resident: Any, *, full: bool) -> dict[str, Any]:
    from idp.logs import mask_phone

    data: dict[str, Any] = {
        "id": str(resident.id),
        "name": resident.name,
        "phone": resident.phone if full else mask_phone(resident.phone),
        "carrier": resident.carrier,
        "created_at": _iso(resident.created_at),
        "verified_at": _iso(resident.verified_at),
        "locked": resident.is_locked,
    }
    if full:
        data["birthdate"] = resident.birthdate.isoformat() if resident.birthdate else None
        data["verified_by"] = resident.verified_by
        data["locked_at"] = _iso(resident.locked_at)
    return data


def _iso(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z") if value else None


def _find(db: Any, reference: str) -> Any:
    from idp.authn.residents import AmbiguousResidentError, find_resident
    from idp.phones import normalize_phone

    with contextlib.suppress(ValueError):
        reference = normalize_phone(reference)
    try:
        resident = find_resident(db, reference)
    except AmbiguousResidentError:
        raise click.ClickException(f"several residents have phone {reference}: give the resident id") from None
    if resident is None:
        raise click.ClickException(f"no resident {reference!r}: give a resident id or phone number")
    return resident


@residents.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000), help="How many, newest first.")
@click.option("--locked", is_flag=True, help="Only locked residents.")
@json_option
def residents_list(limit: int, locked: bool, as_json: bool) -> None:
    """List residents, newest first (phone numbers masked)."""
    from sqlalchemy import select

    from idp.models import Resident

    with _database() as db:
        query = select(Resident).order_by(Resident.created_at.desc()).limit(limit)
        if locked:
            query = query.where(Resident.locked_at.is_not(None))
        rows = [_resident_json(resident, full=False) for resident in db.scalars(query)]
    if as_json:
        _echo_json(rows)
        return
    if not rows:
        click.echo("no residents")
    for row in rows:
        state = " (locked)" if row["locked"] else ""
        click.echo(f"{row['id']}  {row['name'] or '-'}  {row['phone'] or '-'}  {row['carrier'] or '-'}{state}")


@residents.command("show")
@click.argument("reference")
@json_option
def residents_show(reference: str, as_json: bool) -> None:
    """Show one resident by id or phone number."""
    from idp.authn.totp import has_totp

    with _database() as db:
        resident = _find(db, reference)
        data = _resident_json(resident, full=True)
        data["totp"] = has_totp(db, resident.id)
    if as_json:
        _echo_json(data)
    else:
        for key, value in data.items():
            click.echo(f"{key}: {value if value is not None else '-'}")


@residents.command("lock")
@click.argument("reference")
@json_option
def residents_lock(reference: str, as_json: bool) -> None:
    """Lock a resident: no sign-in succeeds and their sessions end."""
    from idp.authn.residents import lock_resident

    with _database() as db:
        resident = _find(db, reference)
        lock_resident(db, resident, now=dt.datetime.now(dt.UTC))
        data = _resident_json(resident, full=False)
    _echo_json(data) if as_json else click.echo(f"{data['id']}: locked")


@residents.command("unlock")
@click.argument("reference")
@json_option
def residents_unlock(reference: str, as_json: bool) -> None:
    """Unlock a resident, and forget their wrong TOTP codes (a lockout from someone guessing lifts too)."""
    from idp.authn.lockout import TOTP_FAILURES_PER_RESIDENT, make_rate_limiter
    from idp.authn.residents import unlock_resident

    settings = _settings()
    with _database() as db:
        resident = _find(db, reference)
        unlock_resident(db, resident)
        limiter = make_rate_limiter(settings.ratelimit_storage, db.get_bind(), secret=settings.secret_key)
        limiter.reset(TOTP_FAILURES_PER_RESIDENT, str(resident.id))
        data = _resident_json(resident, full=False)
    _echo_json(data) if as_json else click.echo(f"{data['id']}: unlocked")


@residents.command("remove-totp")
@click.argument("reference")
@json_option
def residents_remove_totp(reference: str, as_json: bool) -> None:
    """Remove a resident's authenticator app and recovery codes (they lost both; after an identity check)."""
    from idp.authn.totp import remove_totp

    with _database() as db:
        resident = _find(db, reference)
        removed = remove_totp(db, resident.id, actor="admin", now=dt.datetime.now(dt.UTC))
        data = {"id": str(resident.id), "totp_removed": removed}
    if as_json:
        _echo_json(data)
    else:
        click.echo(f"{data['id']}: {'authenticator app removed' if removed else 'no authenticator app'}")


@residents.command("delete")
@click.argument("reference")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def residents_delete(reference: str, yes: bool, as_json: bool) -> None:
    """Erase a resident's personal data and sessions; audit records stay, without personal data."""
    from idp.authn.residents import delete_resident

    with _database() as db:
        resident = _find(db, reference)
        resident_id = str(resident.id)
        if not yes and not click.confirm(f"Erase resident {resident_id} and end their sessions?", err=True):
            raise click.Abort
        delete_resident(db, resident, now=dt.datetime.now(dt.UTC))
    _echo_json({"id": resident_id, "deleted": True}) if as_json else click.echo(f"{resident_id}: deleted")
