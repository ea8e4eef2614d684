"""Just-in-time approvals with the real psql: the statement waits, a human decides."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.integration.conftest import Backend, Hoopy
from tests.integration.test_pg_psql import app_count

ADMIN_TOKEN = "admin-secret-token"  # what start_hoopy puts in TEST_ADMIN_TOKEN


def cli_decide(
    h: Hoopy, action: str, approval_id: str, token: str | None = ADMIN_TOKEN
) -> subprocess.CompletedProcess[str]:
    """`hoopy approvals approve|deny ID` as an admin runs it: presenting `token` in
    HOOPY_ADMIN_TOKEN, with the config's admin_token (env:TEST_ADMIN_TOKEN) resolvable."""
    env = {k: v for k, v in os.environ.items() if k != "HOOPY_ADMIN_TOKEN"}
    env["TEST_ADMIN_TOKEN"] = ADMIN_TOKEN
    if token is not None:
        env["HOOPY_ADMIN_TOKEN"] = token
    cmd = [sys.executable, "-m", "hoopy.cli", "approvals", action, approval_id]
    return subprocess.run(
        [*cmd, "--config", str(h.config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def start_psql(hoopy: Hoopy, sql: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PGPASSWORD": hoopy.token("approval-agent")}
    return subprocess.Popen(
        ["psql", hoopy.conninfo(), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def admin(hoopy: Hoopy, method: str, path: str, body: dict | None = None) -> tuple[int, object]:
    req = urllib.request.Request(
        f"http://{hoopy.addresses['admin']}{path}",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_pending(hoopy: Hoopy, needle: str, timeout: float = 20) -> dict:
    """Poll the admin API until the approval for `needle` shows up (bounded).  `needle`
    may span the command and its values (", "-joined), which are fields of their own."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, items = admin(hoopy, "GET", "/api/approvals?state=pending")
        for a in items:  # type: ignore[union-attr]
            if needle in a["command"] or needle in ", ".join(a.get("values", [])):
                return a
        time.sleep(0.05)
    raise AssertionError(f"no pending approval for {needle!r}")


def test_statement_waits_then_runs_once_approved(hoopy: Hoopy, backend: Backend) -> None:
    p = start_psql(hoopy, "update orders set status = 'approved-1' where id = 1")
    a = wait_pending(hoopy, "approved-1")
    assert p.poll() is None  # still waiting
    assert a["rule"] == "writes-need-a-dba" and a["approvers"] == ["dba"]
    assert a["subject"] == "approval-agent"
    status, done = admin(hoopy, "POST", f"/api/approvals/{a['id']}/approve", {"by": "alice"})
    assert status == 200 and done["state"] == "approved"  # type: ignore[index]
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert f"waiting for approval {a['id']}" in err
    assert "hoopy approvals" not in err  # the agent is not told how to approve itself
    assert app_count(backend, "select count(*) from orders where status = 'approved-1'") == 1
    # a second decision on the same approval is refused
    status, _ = admin(hoopy, "POST", f"/api/approvals/{a['id']}/deny")
    assert status == 409


def test_denied_approval_is_42501_naming_it(hoopy: Hoopy, backend: Backend) -> None:
    p = start_psql(hoopy, "delete from orders where status = 'never-deleted'")
    a = wait_pending(hoopy, "never-deleted")
    admin(hoopy, "POST", f"/api/approvals/{a['id']}/deny", {"reason": "not today"})
    _out, err = p.communicate(timeout=30)
    assert p.returncode != 0
    assert f"approval {a['id']} was denied" in err and "not today" in err


def test_cli_approval_from_another_process(hoopy: Hoopy, backend: Backend) -> None:
    p = start_psql(hoopy, "update orders set status = 'cli-approved' where id = 2")
    a = wait_pending(hoopy, "cli-approved")
    listed = hoopy.cli("approvals", "list")
    assert a["id"] in listed.stdout
    # without the admin token, or with a wrong one, nothing is decided
    r = cli_decide(hoopy, "approve", a["id"], token=None)
    assert r.returncode == 1 and "HOOPY_ADMIN_TOKEN" in r.stderr
    r = cli_decide(hoopy, "approve", a["id"], token="guessed")
    assert r.returncode == 1 and "does not match" in r.stderr
    assert p.poll() is None
    r = cli_decide(hoopy, "approve", a["id"])
    assert r.returncode == 0, r.stderr
    _out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert app_count(backend, "select count(*) from orders where status = 'cli-approved'") == 1


def test_one_time_grant_asks_again(hoopy: Hoopy) -> None:
    sql = "update orders set status = 'twice' where id = 3"
    p = start_psql(hoopy, sql)
    a1 = wait_pending(hoopy, "twice")
    admin(hoopy, "POST", f"/api/approvals/{a1['id']}/approve")
    assert p.wait(30) == 0
    p2 = start_psql(hoopy, sql)
    a2 = wait_pending(hoopy, "twice")
    assert a2["id"] != a1["id"]
    admin(hoopy, "POST", f"/api/approvals/{a2['id']}/deny")
    assert p2.wait(30) != 0


def test_agent_disconnect_cancels(hoopy: Hoopy) -> None:
    p = start_psql(hoopy, "delete from orders where status = 'abandoned'")
    a = wait_pending(hoopy, "abandoned")
    p.kill()
    p.wait()
    deadline = time.monotonic() + 20
    state = "pending"
    while time.monotonic() < deadline and state == "pending":
        _, cur = admin(hoopy, "GET", f"/api/approvals/{a['id']}")
        state = cur["state"]  # type: ignore[index]
        time.sleep(0.05)
    assert state == "cancelled"


def test_admin_api_needs_token(hoopy: Hoopy) -> None:
    req = urllib.request.Request(f"http://{hoopy.addresses['admin']}/api/approvals")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 401


def test_admin_api_bad_input_is_400(hoopy: Hoopy) -> None:
    status, body = admin(hoopy, "GET", "/api/sessions?limit=abc")
    assert status == 400 and "limit" in body["error"]  # type: ignore[index]
    p = start_psql(hoopy, "delete from orders where status = 'bad-body'")
    a = wait_pending(hoopy, "bad-body")
    for bad in ([1], "x"):
        status, body = admin(hoopy, "POST", f"/api/approvals/{a['id']}/deny", bad)  # type: ignore[arg-type]
        assert (status, body) == (400, {"error": "body must be a JSON object"})
    admin(hoopy, "POST", f"/api/approvals/{a['id']}/deny")
    assert p.wait(30) != 0


def test_reuse_for_grant_lets_the_same_statement_run_again(hoopy: Hoopy, backend: Backend) -> None:
    p = start_psql(hoopy, "insert into refunds values (1, 10)")
    a = wait_pending(hoopy, "into refunds")
    admin(hoopy, "POST", f"/api/approvals/{a['id']}/approve")
    assert p.wait(30) == 0
    # same statement fingerprint (other literals), same identity: runs without asking
    r = hoopy.psql("-c", "insert into refunds values (2, 20)", token=hoopy.token("approval-agent"))
    assert r.returncode == 0, r.stderr
    assert "waiting for approval" not in r.stderr
    assert app_count(backend, "select count(*) from refunds") == 2
    # another identity is asked again
    p2 = subprocess.Popen(
        ["psql", hoopy.conninfo(), "-X", "-c", "insert into refunds values (3, 30)"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PGPASSWORD": hoopy.token("someone-else")},
    )
    a2 = wait_pending(hoopy, "(3, 30)")
    admin(hoopy, "POST", f"/api/approvals/{a2['id']}/deny")
    assert p2.wait(30) != 0


def test_approval_metrics(hoopy: Hoopy) -> None:
    p = start_psql(hoopy, "update orders set status = 'metrics' where id = 7")
    a = wait_pending(hoopy, "'metrics'")
    with urllib.request.urlopen(f"http://{hoopy.addresses['admin']}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert "hoopy_approvals_pending 1" in text
    admin(hoopy, "POST", f"/api/approvals/{a['id']}/approve")
    assert p.wait(30) == 0
    with urllib.request.urlopen(f"http://{hoopy.addresses['admin']}/metrics", timeout=10) as r:
        text = r.read().decode()
    assert 'hoopy_approval_decisions_total{outcome="approved"}' in text
    assert "hoopy_approval_decision_seconds_count" in text
    assert "hoopy_approvals_pending 0" in text


def test_pipelined_messages_keep_their_order_around_an_approval(
    hoopy: Hoopy, backend: Backend
) -> None:
    """Three Query messages in one write: the first runs at once, the update waits for
    its approval, and the third runs only after it — in order, on one session."""
    from hoopy.protocols.postgres import codec as pg
    from tests.integration.test_pg_hostile import login, raw_connect

    s = raw_connect(hoopy)
    login(hoopy, s)
    s.sendall(
        pg.query("select 41")
        + pg.query("update orders set status = 'pipelined' where id = 2")
        + pg.query("select 43")
    )
    client = pg.ClientConnection()
    client.receive_data(pg.authentication_ok() + pg.ready_for_query("I"))
    client.events()

    got: list[object] = []

    def rows() -> list[object]:
        return [r for e in got if isinstance(e, pg.DataRows) for r in pg.iter_data_rows(e.raw)]

    def until(done: object) -> None:
        while not done():  # type: ignore[operator]
            chunk = s.recv(65536)
            assert chunk, got
            client.receive_data(chunk)
            got.extend(client.events())

    # the first query is answered while the update waits (the notice may come first)
    until(lambda: rows() == [[b"41"]] and any(isinstance(e, pg.NoticeResponse) for e in got))
    a = wait_pending(hoopy, "pipelined")
    assert app_count(backend, "select count(*) from orders where status = 'pipelined'") == 0
    status, _ = admin(hoopy, "POST", f"/api/approvals/{a['id']}/approve", {"by": "alice"})
    assert status == 200
    until(lambda: rows() == [[b"41"], [b"43"]])
    rest = got
    tags = [e.tag for e in rest if isinstance(e, pg.CommandComplete)]
    assert tags == ["SELECT 1", "UPDATE 1", "SELECT 1"]  # in the order they were sent
    assert app_count(backend, "select count(*) from orders where status = 'pipelined'") == 1
    s.close()
