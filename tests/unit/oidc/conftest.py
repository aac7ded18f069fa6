"""Fixtures of the oidc service tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from idp.db import make_engine


@pytest.fixture
def fresh_engine(fresh_database_url: str) -> Iterator[Engine]:
    """An engine on a database of the test's own, for tests where several connections commit (two workers, two
    token requests racing)."""
    engine = make_engine(fresh_database_url)
    yield engine
    engine.dispose()
