"""Real servers for integration tests: PostgreSQL (initdb, SCRAM), `hoopy serve`
as a subprocess with its dev OIDC issuer, and helpers to drive the real psql.

Everything listens on 127.0.0.1 with ports chosen at run time.  Readiness is
awaited on `hoopy ready` (printed by `hoopy serve`), never on sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from hoopy import pgcluster
from hoopy.demo import SCHEMA
from hoopy.devissuer import DevIssuer
from tests import serveproc

POLICY = """\
mode: enforce
rules:
  - name: agents-use-app-db
    effect: allow
    match: {groups: [agents], connectors: [app-db, app-db-tls]}
  - name: no-schema-changes
    effect: deny
    reason: schema changes go through migrations
    match: {sql: {statements: [drop, truncate, alter]}}
  - name: no-secrets-table
    effect: deny
    reason: the vault table is off limits
    match: {sql: {tables: [vault, "*.vault"]}}
  - name: no-sleeping
    effect: deny
    reason: no sleeping on the job
    match: {sql: {functions: [pg_sleep]}}
  - name: writes-need-a-dba
    effect: require_approval
    approvers: [dba]
    timeout: 10m
    match: {sql: {statements: [delete, update]}, groups: [agents]}
  - name: refunds-reusable
    effect: require_approval
    approvers: [dba]
    timeout: 10m
    grant: {reuse_for: 15m}
    match: {sql: {tables: [refunds]}, groups: [agents]}
  - name: expiring-fast
    effect: require_approval
    approvers: [dba]
    timeout: 2s
    match: {sql: {tables: [expiring]}, groups: [agents]}
  - name: admins-may-do
    effect: allow
    match: {groups: [admins], connectors: [app-db], sql: {statements: [do, create_function]}}
"""


@dataclass
class Backend:
    cluster: pgcluster.PgCluster
    app_password: str

    async def app_conn(self) -> asyncpg.Connection:
        """A direct connection as the connector's own user (what only hoopy holds)."""
        return await asyncpg.connect(
            user="app_rw",
            password=self.app_password,
            host="127.0.0.1",
            port=self.cluster.port,
            database="app",
        )


@dataclass
class Hoopy(serveproc.Served):
    @property
    def pg_port(self) -> int:
        return int(self.addresses["postgres"].rsplit(":", 1)[1])

    def conninfo(self, dbname: str = "app-db", sslmode: str = "require") -> str:
        return f"host=127.0.0.1 port={self.pg_port} dbname={dbname} user=agent sslmode={sslmode}"

    def psql(
        self,
        *args: str,
        token: str | None = None,
        dbname: str = "app-db",
        sslmode: str = "require",
        input: str | None = None,
        timeout: float = 30,
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "PGPASSWORD": token if token is not None else self.token(),
            "PGCONNECT_TIMEOUT": "10",
        }
        return subprocess.run(
            ["psql", self.conninfo(dbname, sslmode), "-X", "-v", "ON_ERROR_STOP=1", *args],
            capture_output=True,
            text=True,
            env=env,
            input=input,
            timeout=timeout,
        )

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hoopy.cli", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def log_text(self) -> str:
        return "".join(self.stderr_lines)


@pytest.fixture(scope="session")
def backend() -> Iterator[Backend]:
    cluster = pgcluster.create()
    app_password = "app-" + secrets.token_urlsafe(18)

    async def seed() -> None:
        conn = await asyncpg.connect(cluster.dsn)
        await conn.execute(f"CREATE ROLE app_rw LOGIN PASSWORD '{app_password}'")
        await conn.execute("CREATE DATABASE app OWNER app_rw")
        await conn.close()
        conn = await asyncpg.connect(
            user="app_rw",
            password=app_password,
            host="127.0.0.1",
            port=cluster.port,
            database="app",
        )
        await conn.execute(SCHEMA)
        await conn.execute("CREATE TABLE refunds (id int, amount int)")
        await conn.execute("CREATE TABLE expiring (id int)")
        await conn.execute("CREATE TABLE vault (k text, v text)")
        await conn.execute("INSERT INTO vault VALUES ('a', 'b')")
        await conn.close()

    asyncio.run(seed())
    try:
        yield Backend(cluster, app_password)
    finally:
        cluster.destroy()


def write_config(
    folder: Path,
    backend: Backend,
    issuer_port: int,
    extra_yaml: str = "",
    policies: dict[str, str] | None = None,
    via_port: int | None = None,
    **pg: object,
) -> Path:
    """`via_port`: the connectors reach the server through this port (a test's relay)."""
    (folder / "connectors").mkdir(parents=True)
    (folder / "policies").mkdir()
    port = via_port or backend.cluster.port
    (folder / "connectors" / "app-db.yaml").write_text(
        f"type: postgres\naddress: 127.0.0.1:{port}\ndatabase: app\nuser: app_rw\n"
        "password: env:TEST_APP_DB_PASSWORD\nsslmode: disable\n"
    )
    (folder / "connectors" / "app-db-tls.yaml").write_text(
        f"type: postgres\naddress: 127.0.0.1:{port}\ndatabase: app\nuser: app_rw\n"
        "password: env:TEST_APP_DB_PASSWORD\nsslmode: prefer\n"
    )
    (folder / "policies" / "agents.yaml").write_text(POLICY)
    for name, text in (policies or {}).items():
        (folder / "policies" / f"{name}.yaml").write_text(text)
    extra = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in pg.items())
    cfg = folder / "hoopy.yaml"
    cfg.write_text(
        "listen:\n  postgres: 127.0.0.1:0\n  admin: 127.0.0.1:0\n"
        "state: sqlite:state/state.db\nadmin_token: env:TEST_ADMIN_TOKEN\n"
        f"dev_issuer: {{listen: 127.0.0.1:{issuer_port}}}\n"
        "recordings: recordings/\n" + (f"postgres:\n{extra}" if extra else "") + extra_yaml
    )
    return cfg


def start_hoopy(
    folder: Path,
    backend: Backend,
    extra_yaml: str = "",
    env: dict[str, str] | None = None,
    policies: dict[str, str] | None = None,
    via_port: int | None = None,
    **pg: object,
) -> Hoopy:
    issuer_port = pgcluster.free_port()
    cfg = write_config(folder, backend, issuer_port, extra_yaml, policies, via_port, **pg)
    env = {
        **os.environ,
        "TEST_APP_DB_PASSWORD": backend.app_password,
        "TEST_ADMIN_TOKEN": "admin-secret-token",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    proc, addresses, stderr_lines = serveproc.launch(cfg, env)
    issuer = DevIssuer(folder / "state", addresses["dev_issuer"])
    return Hoopy(folder, cfg, proc, addresses, issuer, stderr_lines)


def stop_hoopy(h: Hoopy) -> None:
    serveproc.stop(h.proc)


@pytest.fixture(scope="session")
def hoopy(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    h = start_hoopy(tmp_path_factory.mktemp("hoopy"), backend)
    try:
        yield h
    finally:
        stop_hoopy(h)
