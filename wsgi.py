"""The WSGI entry for any WSGI server (`idp serve` uses granian with the `idp:create_app` factory)."""

from idp import create_app

app = create_app()
