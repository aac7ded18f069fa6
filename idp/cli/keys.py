"""`idp keys`: list the signing keys, generate, rotate, retire and prune them (docs/admin.md section 4)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import click

from idp.cli.context import echo_json, json_option, keyring, one_line_errors, settings
from idp.keyring import ALGORITHMS, KeyRecord, Keyring, KeyringError, RotationResult

alg_choice = click.Choice(ALGORITHMS)


def record_json(record: KeyRecord) -> dict[str, Any]:
    """A key as `--json` prints it: the manifest's fields and whether the JWKS publishes it."""
    data = record.to_json()
    data.pop("encrypted")
    data["published"] = record.withdrawn is None
    return data


@click.group()
def keys() -> None:
    """The signing keys: list, generate, rotate, retire, prune."""


@keys.command("list")
@json_option
def keys_list(as_json: bool) -> None:
    """List the keys: kid, alg, state, and when each was created, activated and retired."""
    with one_line_errors():
        records = keyring().records()
    _print_records(records, as_json)


@keys.command("generate")
@click.option("--alg", required=True, type=alg_choice, help="The key's algorithm.")
@json_option
def keys_generate(alg: str, as_json: bool) -> None:
    """Add a `next` key: published at once, signing from the next rotation."""
    ring = keyring()
    with one_line_errors():
        was_encrypted = _was_encrypted(ring)
        record = ring.generate(alg)
    warnings, problem = _check_change(ring, was_encrypted)
    _print_warnings(warnings)
    if as_json:
        echo_json(record_json(record))
    else:
        click.echo(f"{alg}: {record.kid} is the next key; it signs after `idp keys rotate --alg {alg}`")
    _fail_if(problem)


@keys.command("rotate")
@click.option("--alg", type=alg_choice, help="Rotate only this algorithm (default: every algorithm).")
@json_option
def keys_rotate(alg: str | None, as_json: bool) -> None:
    """next → active, active → retired, and a new next key."""
    jwks_max_age = settings().jwks_max_age
    ring = keyring()
    with one_line_errors():
        was_encrypted = _was_encrypted(ring)
        result = ring.rotate(alg, min_published=jwks_max_age)
    warnings, problem = _check_change(ring, was_encrypted)
    _print_rotation(dataclasses.replace(result, warnings=result.warnings + warnings), as_json)
    _fail_if(problem)


@keys.command("retire")
@click.argument("kid")
@click.option("--now", "withdraw", is_flag=True, help="Also drop the key from the JWKS at once (compromise).")
@json_option
def keys_retire(kid: str, withdraw: bool, as_json: bool) -> None:
    """Stop signing with KID; its algorithm's next key takes over."""
    jwks_max_age = settings().jwks_max_age
    ring = keyring()
    with one_line_errors():
        was_encrypted = _was_encrypted(ring)
        result = ring.retire(kid, now=withdraw, min_published=jwks_max_age)
    warnings, problem = _check_change(ring, was_encrypted)
    _print_rotation(dataclasses.replace(result, warnings=result.warnings + warnings), as_json)
    if not as_json:
        click.echo(f"{kid}: retired" + (" and withdrawn from the JWKS" if withdraw else ""))
    _fail_if(problem)


@keys.command("prune")
@json_option
def keys_prune(as_json: bool) -> None:
    """Drop retired keys that no unexpired token or JWKS cache can still need."""
    current = settings()
    keep_for = dt.timedelta(seconds=current.longest_signed_token_ttl + current.jwks_max_age)
    ring = keyring()
    with one_line_errors():
        dropped = ring.prune(keep_for=keep_for)
    _, problem = _check_change(ring, None)
    if as_json:
        echo_json([record_json(record) for record in dropped])
    elif dropped:
        for record in dropped:
            click.echo(f"dropped {record.alg} key {record.kid}")
    else:
        click.echo(f"nothing to prune: retired keys are kept {int(keep_for.total_seconds())} s")
    _fail_if(problem)


def _was_encrypted(ring: Keyring) -> bool | None:
    """Whether any stored key is encrypted before a change; None when there is no keyring yet."""
    try:
        return any(record.encrypted for record in ring.stored_records())
    except KeyringError:
        return None


def _check_change(ring: Keyring, was_encrypted: bool | None) -> tuple[list[str], str | None]:
    """After a change, load the keyring as the servers will: warnings, and what stops them loading it (if any).

    Servers honour a withdrawal even then, but sign and publish the keys they held until the keyring loads.
    """
    try:
        records = ring.verify()
    except KeyringError as exc:
        return [], f"the keyring changed, but servers cannot load it: {exc}"
    if was_encrypted is False and any(record.encrypted for record in records):
        # The one case this command cannot check: servers that never needed the passphrase may not have it.
        return [
            "the keys this command added are the keyring's first encrypted keys: "
            "every server needs this IDP_KEYS_PASSPHRASE, or it cannot load them"
        ], None
    return [], None


def _print_records(records: Sequence[KeyRecord], as_json: bool) -> None:
    if as_json:
        echo_json([record_json(record) for record in records])
        return
    if not records:
        click.echo("no keys")
        return
    columns = ("kid", "alg", "state", "created", "activated", "retired")
    rows = [[str(record_json(record).get(column) or "-") for column in columns] for record in records]
    for record, row in zip(records, rows, strict=True):
        if record.withdrawn:
            row[2] = "retired (withdrawn)"
    widths = [max(len(column), *(len(row[i]) for row in rows)) for i, column in enumerate(columns)]
    click.echo("  ".join(column.upper().ljust(width) for column, width in zip(columns, widths, strict=True)))
    for row in rows:
        click.echo("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())


def _print_rotation(result: RotationResult, as_json: bool) -> None:
    _print_warnings(result.warnings)
    if as_json:
        echo_json({"activated": [record_json(r) for r in result.activated], "warnings": result.warnings})
    else:
        for record in result.activated:
            click.echo(f"{record.alg}: {record.kid} now signs")


def _print_warnings(warnings: Sequence[str]) -> None:
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)


def _fail_if(problem: str | None) -> None:
    if problem is not None:
        raise click.ClickException(problem)
