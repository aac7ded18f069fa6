"""The OpenID Connect provider: init_app lists its endpoints in one readable place."""

from __future__ import annotations

from flask import Flask

from idp.oidc import views
from idp.oidc.discovery import MetadataCache
from idp.settings import Settings


def init_app(app: Flask, settings: Settings) -> None:
    app.extensions["idp.metadata"] = MetadataCache(settings)
    app.register_blueprint(views.bp)
