"""Liveness and readiness: /healthz answers while the process does, /readyz only when it can serve."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient

from idp.keyring import Keyring
from idp.settings import Settings


def test_healthz_answers(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_readyz_is_ok_with_database_and_keyring(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_reports_an_unreachable_database(settings: Settings, make_app: Callable[[Settings], Flask]) -> None:
    unreachable = replace(settings, database_url="postgresql+psycopg://nobody@127.0.0.1:1/idp")
    client = make_app(unreachable).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["reason"].startswith("database unreachable")
    assert client.get("/healthz").status_code == 200


def test_readyz_names_a_corrupt_key_file(client: FlaskClient, keyring: Keyring, keys_dir: Path) -> None:
    assert client.get("/jwks").status_code == 200
    kid = keyring.records()[0].kid
    (keys_dir / f"{kid}.pem").write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    # The server re-reads the keyring when the manifest changes, as it does after every `idp keys` command.
    manifest = keys_dir / "keyring.json"
    manifest.write_bytes(manifest.read_bytes() + b"\n")
    response = client.get("/readyz")
    assert response.status_code == 503
    reason = response.get_json()["reason"]
    assert reason.startswith("keyring: ")
    assert f"{kid}.pem" in reason
    # Relying services still get the last good keys meanwhile.
    assert client.get("/jwks").status_code == 200


def test_readyz_reports_a_keyring_that_never_loaded(
    settings: Settings, tmp_path: Path, make_app: Callable[[Settings], Flask]
) -> None:
    client = make_app(replace(settings, keys_dir=tmp_path / "nowhere")).test_client()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert "keyring.json is missing" in response.get_json()["reason"]
