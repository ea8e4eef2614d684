"""Startup `options` (PGOPTIONS): safe settings are applied, others refuse the login."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from .conftest import Backend, Hoopy, start_hoopy, stop_hoopy

HIDDEN = """\
mode: enforce
rules:
  - name: nothing-from-hidden
    effect: deny
    reason: the hidden schema is off limits
    match: {sql: {tables: ["hidden.*"]}}
"""


@pytest.fixture(scope="module")
def gw(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    h = start_hoopy(tmp_path_factory.mktemp("opts"), backend, policies={"hidden": HIDDEN})
    try:
        yield h
    finally:
        stop_hoopy(h)


def psql(h: Hoopy, options: str, sql: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": h.token(), "PGOPTIONS": options}
    return subprocess.run(
        ["psql", h.conninfo(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def test_settings_are_applied(gw: Hoopy) -> None:
    r = psql(
        gw, "-c intervalstyle=postgres_verbose --statement-timeout=7s", "select interval '1 day'"
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "@ 1 day"
    r = psql(gw, "-c statement_timeout=7s", "show statement_timeout")
    assert r.stdout.strip() == "7s"


def test_pooled_backend_does_not_keep_them(gw: Hoopy) -> None:
    assert psql(gw, "-c intervalstyle=postgres_verbose", "select 1").returncode == 0
    r = psql(gw, "", "select interval '1 day'")
    assert r.stdout.strip() == "1 day"


def test_search_path_moves_unqualified_names(gw: Hoopy) -> None:
    assert psql(gw, "", "select count(*) from orders").returncode == 0
    r = psql(gw, "-c search_path=hidden,public", "select count(*) from orders")
    assert r.returncode != 0
    assert "nothing-from-hidden" in r.stderr  # orders may now be hidden.orders


def test_unsafe_setting_refuses_login(gw: Hoopy) -> None:
    r = psql(gw, "-c role=postgres", "select current_user")
    assert r.returncode != 0
    assert "setting 'role'" in r.stderr and "not allowed through hoopy" in r.stderr
    assert "app_rw" not in r.stdout
