"""Shared fixtures: a fresh SQLite CDM, and a throwaway PostgreSQL database per test run.

PostgreSQL is the machine's real server (``RADFED_TEST_PG``, default
``postgresql://postgres@127.0.0.1:5432/postgres``).  Under CI (``CI=true``) an unreachable server
fails the run; on a developer machine without PostgreSQL those tests are reported as errors too —
nothing is skipped silently.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from cdm.db import create_cdm, open_engine

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("RADFED_SHARED", REPO.parent / "shared"))
PG_ADMIN_URL = os.environ.get("RADFED_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    assert SHARED.is_dir(), f"../shared not found at {SHARED} (set RADFED_SHARED)"
    return SHARED


@pytest.fixture(scope="session")
def pg_server_url():
    """URL of a throwaway PostgreSQL database, created for this run and dropped after it."""
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.Error as exc:
        pytest.fail(f"PostgreSQL at {PG_ADMIN_URL} unreachable: {exc}")
    name = f"radfed_test_{uuid.uuid4().hex[:12]}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    admin.close()


@pytest.fixture
def pg_url(pg_server_url):
    """A PostgreSQL database with an empty schema for one test (tables dropped afterwards)."""
    engine = open_engine(pg_server_url)
    from cdm.db import drop_cdm

    drop_cdm(engine)
    yield pg_server_url
    drop_cdm(engine)
    engine.dispose()


@pytest.fixture
def sqlite_cdm(tmp_path):
    """An initialised SQLite CDM; yields its engine."""
    engine = open_engine(tmp_path / "cdm.sqlite")
    create_cdm(engine, source_name="test-site")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_cdm(pg_url):
    """An initialised PostgreSQL CDM; yields its engine."""
    engine = open_engine(pg_url)
    create_cdm(engine, source_name="test-site")
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def any_cdm(request):
    """The same test on SQLite and PostgreSQL."""
    return request.getfixturevalue("sqlite_cdm" if request.param == "sqlite" else "pg_cdm")
