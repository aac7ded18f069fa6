"""The OpenID Connect provider: init_app lists its endpoints in one readable place."""

from __future__ import annotations

from flask import Flask

from idp.oidc import views
from idp.oidc.discovery import MetadataCache
from idp.oidc.published import PublishedDocuments, PublishedDocumentsMiddleware
from idp.settings import Settings


def init_app(app: Flask, settings: Settings) -> None:
    documents = PublishedDocuments(app.extensions["idp.keyring"], MetadataCache(settings), settings)
    app.extensions["idp.published"] = documents
    app.register_blueprint(views.bp)
    # JWKS and discovery are answered before Flask's request handling (see idp.oidc.published).
    app.wsgi_app = PublishedDocumentsMiddleware(app.wsgi_app, documents)  # type: ignore[method-assign]
