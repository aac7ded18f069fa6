"""`idp residents`: list and show resident accounts, lock and unlock them, remove their TOTP, erase them."""

from __future__ import annotations

import contextlib
import datetime as dt

import click
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from idp.authn.lockout import TOTP_FAILURES_PER_RESIDENT, make_rate_limiter
from idp.authn.residents import (
    AmbiguousResidentError,
    delete_resident,
    find_resident,
    list_residents,
    lock_resident,
    unlock_resident,
)
from idp.authn.totp import has_totp, remove_totp
from idp.cli.context import database, echo_json, json_option, now, rfc3339, settings
from idp.logs import mask_phone
from idp.models import Resident
from idp.phones import normalize_phone

# What `--json` prints of a resident: text, a flag, or null where the account has none.
ResidentJson = dict[str, str | bool | None]


@click.group()
def residents() -> None:
    """Resident accounts: list, show, lock, unlock, remove-totp, delete."""


@residents.command("list")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000), help="How many, newest first.")
@click.option("--locked", is_flag=True, help="Only locked residents.")
@json_option
def residents_list(limit: int, locked: bool, as_json: bool) -> None:
    """List residents, newest first (phone numbers masked)."""
    with database() as db:
        found = list_residents(db, limit=limit, locked_only=locked)
        rows = [_resident_json(resident, full=False) for resident in found]
    if as_json:
        echo_json(rows)
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
    with database() as db:
        resident = _find(db, reference)
        data = _resident_json(resident, full=True)
        data["totp"] = has_totp(db, resident.id)
    if as_json:
        echo_json(data)
    else:
        for key, value in data.items():
            click.echo(f"{key}: {value if value is not None else '-'}")


@residents.command("lock")
@click.argument("reference")
@json_option
def residents_lock(reference: str, as_json: bool) -> None:
    """Lock a resident: no sign-in succeeds and their sessions end."""
    with database() as db:
        resident = _find(db, reference)
        lock_resident(db, resident, now=now())
        data = _resident_json(resident, full=False)
    echo_json(data) if as_json else click.echo(f"{data['id']}: locked")


@residents.command("unlock")
@click.argument("reference")
@json_option
def residents_unlock(reference: str, as_json: bool) -> None:
    """Unlock a resident, and forget their wrong TOTP codes (a lockout from someone guessing lifts too)."""
    current = settings()
    with database() as db:
        resident = _find(db, reference)
        unlock_resident(db, resident)
        engine = db.get_bind()
        assert isinstance(engine, Engine)  # database() binds its sessions to an engine, never to one connection
        limiter = make_rate_limiter(current.ratelimit_storage, engine, secret=current.secret_key)
        # In this command's transaction (with database storage): its audit event holds SQLite's write lock already.
        limiter.reset(TOTP_FAILURES_PER_RESIDENT, str(resident.id), db=db)
        data = _resident_json(resident, full=False)
    echo_json(data) if as_json else click.echo(f"{data['id']}: unlocked")


@residents.command("remove-totp")
@click.argument("reference")
@json_option
def residents_remove_totp(reference: str, as_json: bool) -> None:
    """Remove a resident's authenticator app and recovery codes (they lost both; after an identity check)."""
    with database() as db:
        resident = _find(db, reference)
        removed = remove_totp(db, resident.id, actor="admin", now=now())
        data = {"id": str(resident.id), "totp_removed": removed}
    if as_json:
        echo_json(data)
    else:
        click.echo(f"{data['id']}: {'authenticator app removed' if removed else 'no authenticator app'}")


@residents.command("delete")
@click.argument("reference")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option
def residents_delete(reference: str, yes: bool, as_json: bool) -> None:
    """Erase a resident's personal data and sessions; audit records stay, without personal data."""
    with database() as db:
        resident = _find(db, reference)
        resident_id = str(resident.id)
        if not yes and not click.confirm(f"Erase resident {resident_id} and end their sessions?", err=True):
            raise click.Abort
        delete_resident(db, resident, now=now())
    echo_json({"id": resident_id, "deleted": True}) if as_json else click.echo(f"{resident_id}: deleted")


def _find(db: Session, reference: str) -> Resident:
    """The resident a command names by id or by phone number in any form a resident would type."""
    with contextlib.suppress(ValueError):
        reference = normalize_phone(reference)
    try:
        resident = find_resident(db, reference)
    except AmbiguousResidentError:
        raise click.ClickException(f"several residents have phone {reference}: give the resident id") from None
    if resident is None:
        raise click.ClickException(f"no resident {reference!r}: give a resident id or phone number")
    return resident


def _resident_json(resident: Resident, *, full: bool) -> ResidentJson:
    """A resident as the commands print it; `full` adds what only `show` prints, and the unmasked phone."""
    data: ResidentJson = {
        "id": str(resident.id),
        "name": resident.name,
        "phone": resident.phone if full else mask_phone(resident.phone),
        "carrier": resident.carrier,
        "created_at": rfc3339(resident.created_at),
        "verified_at": _rfc3339_or_none(resident.verified_at),
        "locked": resident.is_locked,
    }
    if full:
        data["birthdate"] = resident.birthdate.isoformat() if resident.birthdate else None
        data["verified_by"] = resident.verified_by
        data["locked_at"] = _rfc3339_or_none(resident.locked_at)
    return data


def _rfc3339_or_none(moment: dt.datetime | None) -> str | None:
    return rfc3339(moment) if moment else None
