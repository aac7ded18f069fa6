"""The WSGI entry for any server: `gunicorn wsgi:app`."""

from idp import create_app

app = create_app()
