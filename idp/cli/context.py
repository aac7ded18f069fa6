"""What every `idp` command shares: settings read once, the keyring, a session, JSON output, one-line errors."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager

import click
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from idp.db import make_engine, make_session_factory, session_scope
from idp.keyring import Keyring, KeyringError
from idp.settings import Settings, SettingsError

SETTINGS_KEY = "idp.settings"  # in click's ctx.meta, shared by a command and the groups above it

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn the errors an admin can fix into one line and exit status 1, never a traceback."""
    try:
        yield
    except (SettingsError, KeyringError) as exc:
        raise click.ClickException(str(exc)) from None
    except SQLAlchemyError as exc:
        origin = getattr(exc, "orig", None) or exc
        first_line = str(origin).strip().splitlines()[0] if str(origin).strip() else type(origin).__name__
        raise click.ClickException(f"database: {first_line}") from None


def settings() -> Settings:
    """The IDP_* settings, read once per invocation (reading may create the development secrets file)."""
    meta = click.get_current_context().meta
    found = meta.get(SETTINGS_KEY)
    if isinstance(found, Settings):
        return found
    with one_line_errors():
        read = Settings.from_env()
    meta[SETTINGS_KEY] = read
    return read


def keyring() -> Keyring:
    """The keyring in IDP_KEYS_DIR; nothing is read until a method asks."""
    current = settings()
    return Keyring.from_directory(current.keys_dir, current.keys_passphrase)


@contextmanager
def database() -> Iterator[Session]:
    """A session on IDP_DATABASE_URL, committed when the block succeeds; database errors become one line."""
    url = settings().sqlalchemy_url
    with one_line_errors():
        engine = make_engine(url)
        try:
            with session_scope(make_session_factory(engine)) as db:
                yield db
        finally:
            engine.dispose()


def now() -> dt.datetime:
    """The time a command acts at: the edge where time is read, so services can take it as an argument."""
    return dt.datetime.now(dt.UTC)


def rfc3339(moment: dt.datetime) -> str:
    """`2026-11-26T06:35:32.605000Z`: UTC with a Z, as `--json` prints times."""
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def echo_json(data: object) -> None:
    """Print `--json` output: indented, and Korean names as they are rather than \\u escapes."""
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))
