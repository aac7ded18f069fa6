"""The documents every relying service fetches (JWKS and discovery), served from bytes built once per keyring.

These are the hottest paths of the IdP and their answer depends only on the keyring, so a small WSGI layer
answers GET and HEAD for them before Flask's routing, hooks and context setup run (a Flask request costs about
a hundred times more than these bytes). Everything else, and every other method, goes on to Flask.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from idp.keyring import Keyring, KeyringError, LoadedKeys
from idp.oidc.discovery import MetadataCache
from idp.settings import Settings

JWKS_PATH = "/jwks"
DISCOVERY_PATHS = ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server")
log = logging.getLogger("idp.request")

StartResponse = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class Document:
    body: bytes
    etag: str
    headers: list[tuple[str, str]]
    not_modified_headers: list[tuple[str, str]]


class PublishedDocuments:
    """Builds the JWKS and discovery answers once per keyring version and serves them as WSGI."""

    def __init__(self, keyring: Keyring, metadata: MetadataCache, settings: Settings) -> None:
        self.keyring = keyring
        self.metadata = metadata
        # Shorter than the time a `next` key is published before it signs (docs/admin.md section 4).
        self.cache_control = f"public, max-age={settings.jwks_max_age}"
        self._for: LoadedKeys | None = None
        self._documents: dict[str, Document] = {}

    def document(self, path: str) -> Document:
        """The answer for `path` (one of the published paths).

        Raises:
            KeyringError: the keyring was never loaded.
        """
        keys = self.keyring.current()
        if keys is not self._for:
            self._documents = self._build(keys)
            self._for = keys
        return self._documents[path]

    def _build(self, keys: LoadedKeys) -> dict[str, Document]:
        metadata = self.metadata.body(keys)
        documents = {JWKS_PATH: self._document(keys.jwks_json, "application/jwk-set+json", keys.etag)}
        discovery = self._document(metadata, "application/json", None)
        for path in DISCOVERY_PATHS:
            documents[path] = discovery
        return documents

    def _document(self, body: bytes, mimetype: str, etag: str | None) -> Document:
        etag = etag or '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        common = [
            ("Cache-Control", self.cache_control),
            ("ETag", etag),
            # Browser-based relying services read discovery and keys from another origin (OIDC Discovery §4).
            ("Access-Control-Allow-Origin", "*"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
        ]
        headers = [("Content-Type", mimetype), ("Content-Length", str(len(body))), *common]
        return Document(body=body, etag=etag, headers=headers, not_modified_headers=common)


class PublishedDocumentsMiddleware:
    """WSGI: GET/HEAD of a published path answered here; anything else passed to the wrapped app."""

    def __init__(self, app: Callable[..., Iterable[bytes]], documents: PublishedDocuments) -> None:
        self.app = app
        self.documents = documents
        self.paths = frozenset({JWKS_PATH, *DISCOVERY_PATHS})

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        path = environ.get("PATH_INFO")
        if path not in self.paths or method not in ("GET", "HEAD"):
            return self.app(environ, start_response)
        started = time.perf_counter()
        try:
            document = self.documents.document(path)
        except KeyringError:
            return self.app(environ, start_response)  # Flask answers 503 and logs it
        if _matches(environ.get("HTTP_IF_NONE_MATCH"), document.etag):
            status, headers, body = "304 Not Modified", document.not_modified_headers, b""
        else:
            status, headers, body = "200 OK", document.headers, document.body
        start_response(status, list(headers))
        if log.isEnabledFor(logging.INFO):
            code = int(status[:3])
            log.info(
                "%s %s",
                method,
                path,
                extra={
                    "status": code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                    "client_ip": environ.get("REMOTE_ADDR"),
                },
            )
        return [b""] if method == "HEAD" else [body]


def _matches(if_none_match: str | None, etag: str) -> bool:
    """RFC 9110 §13.1.2: weak comparison against each listed entity tag, or `*`."""
    if not if_none_match:
        return False
    bare = etag.strip('"')
    for candidate in if_none_match.split(","):
        tag = candidate.strip().removeprefix("W/").strip('"')
        if tag in ("*", bare):
            return True
    return False
