"""The connection limit of `idp serve`'s workers and the file descriptor limit it needs."""

from __future__ import annotations

import resource

import pytest

from idp import server
from idp.server import MAX_CONNECTIONS_PER_WORKER, RESERVED_FILE_DESCRIPTORS, connection_limit


class FileLimit:
    """RLIMIT_NOFILE as getrlimit and setrlimit see it, without touching the test process's own."""

    def __init__(self, soft: int, hard: int) -> None:
        self.soft, self.hard = soft, hard

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def set(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        self.soft, self.hard = limits


@pytest.fixture
def file_limit(monkeypatch: pytest.MonkeyPatch) -> FileLimit:
    limit = FileLimit(1024, 1024)
    monkeypatch.setattr(server.resource, "getrlimit", limit.get)
    monkeypatch.setattr(server.resource, "setrlimit", limit.set)
    return limit


def test_systemds_soft_file_limit_of_1024_is_raised_to_fit_every_connection(file_limit: FileLimit) -> None:
    file_limit.soft, file_limit.hard = 1024, 524288
    assert connection_limit() == MAX_CONNECTIONS_PER_WORKER
    assert (file_limit.soft, file_limit.hard) == (MAX_CONNECTIONS_PER_WORKER + RESERVED_FILE_DESCRIPTORS, 524288)


def test_a_higher_or_unlimited_soft_file_limit_is_left_alone(file_limit: FileLimit) -> None:
    for soft, hard in [(20000, 20000), (resource.RLIM_INFINITY, resource.RLIM_INFINITY)]:
        file_limit.soft, file_limit.hard = soft, hard
        assert connection_limit() == MAX_CONNECTIONS_PER_WORKER
        assert (file_limit.soft, file_limit.hard) == (soft, hard)


def test_a_low_hard_file_limit_lowers_the_connection_limit_and_keeps_the_reserve(file_limit: FileLimit) -> None:
    file_limit.soft, file_limit.hard = 512, 1024
    assert connection_limit() == 1024 - RESERVED_FILE_DESCRIPTORS
    assert file_limit.soft == 1024
