"""The `idp` command: init, serve, and one subgroup per noun (keys …), one command per verb."""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from sqlalchemy.exc import SQLAlchemyError

from idp.keyring import ALGORITHMS, KeyRecord, Keyring, KeyringError, RotationResult
from idp.settings import Settings, SettingsError

F = TypeVar("F", bound=Callable[..., Any])
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


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


def upgrade_database(url: str) -> tuple[str | None, str | None]:
    """Migrate the database to the newest revision; the revisions before and after."""
    from alembic import command
    from alembic.config import Config
    from alembic.runtime.migration import MigrationContext

    from idp.db import make_engine

    config = Config(str(MIGRATIONS_DIR.parent / "alembic.ini"))
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = url
    config.attributes["configure_logger"] = False
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            before = MigrationContext.configure(connection).get_current_revision()
        command.upgrade(config, "head")
        with engine.connect() as connection:
            after = MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
    return before, after


def database_is_current(url: str) -> bool:
    """Whether the database is at the newest migration (servers refuse an old schema)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from idp.db import make_engine

    heads = set(ScriptDirectory(str(MIGRATIONS_DIR)).get_heads())
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return set(MigrationContext.configure(connection).get_current_heads()) == heads
    finally:
        engine.dispose()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def init(as_json: bool) -> None:
    """Create or upgrade the database and create the keyring if absent; safe to run again."""
    settings = _settings()
    with _one_line_errors():
        before, after = upgrade_database(settings.sqlalchemy_url)
        created = _keyring().ensure_default()
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
def serve(host: str, port: int, workers: int | None) -> None:
    """Run the IdP with the production WSGI server."""
    settings = _settings()
    with _one_line_errors():
        _keyring().records()
        if not database_is_current(settings.sqlalchemy_url):
            raise click.ClickException("the database is not at the newest migration: run `idp init` first")
    from idp.server import run

    run(host=host, port=port, workers=workers or os.cpu_count() or 1)


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


def _print_rotation(result: RotationResult, as_json: bool) -> None:
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
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
    with _one_line_errors():
        record = _keyring().generate(alg)
    if as_json:
        _echo_json(_record(record))
    else:
        click.echo(f"{alg}: {record.kid} is the next key; it signs after `idp keys rotate --alg {alg}`")


@keys.command("rotate")
@click.option("--alg", type=alg_choice, help="Rotate only this algorithm (default: every algorithm).")
@json_option
def keys_rotate(alg: str | None, as_json: bool) -> None:
    """next → active, active → retired, and a new next key."""
    settings = _settings()
    with _one_line_errors():
        result = _keyring().rotate(alg, min_published=settings.jwks_max_age)
    _print_rotation(result, as_json)


@keys.command("retire")
@click.argument("kid")
@click.option("--now", "withdraw", is_flag=True, help="Also drop the key from the JWKS at once (compromise).")
@json_option
def keys_retire(kid: str, withdraw: bool, as_json: bool) -> None:
    """Stop signing with KID; its algorithm's next key takes over."""
    settings = _settings()
    with _one_line_errors():
        result = _keyring().retire(kid, now=withdraw, min_published=settings.jwks_max_age)
    _print_rotation(result, as_json)
    if not as_json:
        click.echo(f"{kid}: retired" + (" and withdrawn from the JWKS" if withdraw else ""))


@keys.command("prune")
@json_option
def keys_prune(as_json: bool) -> None:
    """Drop retired keys that no unexpired token or JWKS cache can still need."""
    settings = _settings()
    keep_for = dt.timedelta(seconds=settings.longest_signed_token_ttl + settings.jwks_max_age)
    with _one_line_errors():
        dropped = _keyring().prune(keep_for=keep_for)
    if as_json:
        _echo_json([_record(record) for record in dropped])
    elif dropped:
        for record in dropped:
            click.echo(f"dropped {record.alg} key {record.kid}")
    else:
        click.echo(f"nothing to prune: retired keys are kept {int(keep_for.total_seconds())} s")


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Entry point: usage errors become one line on stderr (exit 2), like every other error."""
    try:
        status = cli.main(args=list(argv) if argv is not None else None, prog_name="idp", standalone_mode=False)
    except click.UsageError as exc:
        click.echo(f"idp: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except click.ClickException as exc:
        click.echo(f"idp: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("idp: aborted", err=True)
        sys.exit(1)
    sys.exit(status if isinstance(status, int) else 0)
