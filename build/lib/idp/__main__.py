"""`python -m idp` is the `idp` command."""

from idp.cli import main

main()
