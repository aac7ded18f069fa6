"""Fixtures for the sandbox agency: its app on a temporary state folder, and a client that speaks its protocol."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sandbox_support import ISSUER, SITE_CODE, SITE_SECRET, AgencyClient, FakeMonotonic

from idp.sandbox import create_app


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "sandbox"


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def sandbox_app(state_dir: Path, monotonic: FakeMonotonic, sleeps: list[float]) -> Flask:
    app = create_app(
        state_dir,
        issuer=ISSUER,
        site_code=SITE_CODE,
        site_secret=SITE_SECRET,
        sleep=sleeps.append,
        monotonic=monotonic,
    )
    app.config["TESTING"] = True
    return app


@pytest.fixture
def agency(sandbox_app: Flask, monotonic: FakeMonotonic, sleeps: list[float]) -> Iterator[AgencyClient]:
    with sandbox_app.test_client() as client:
        yield AgencyClient(client, monotonic, sleeps)
