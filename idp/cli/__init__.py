"""The `idp` command: init, serve, and one subgroup per noun (keys, clients, residents, sandbox), one command per verb.

Each noun has its module here; context.py holds what they share. Nothing else in idp imports this package.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import NoReturn

import click
from click.exceptions import NoArgsIsHelpError

from idp.cli.clients import clients
from idp.cli.keys import keys
from idp.cli.residents import residents
from idp.cli.sandbox import sandbox
from idp.cli.setup import init, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The identity provider of Gyeonggi-do residents: set up, run and administer it."""


for command in (init, serve, keys, clients, residents, sandbox):
    cli.add_command(command)


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
