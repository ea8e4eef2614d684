"""Issue 14 item 4: fast-path function calls (FunctionCall, 'F') are checked as calls of
the function their OID names — psql's \\lo_import / \\lo_export / \\lo_unlink work under
an allow rule, a deny rule on the functions refuses them, and every call and every
refusal is in the recording."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.errors import CommandDenied
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.catalog import CatalogUnavailable
from hoopy.protocols.postgres.fastpath import BadFunctionCall, checked_call, decode_call
from tests.integration.conftest import Backend, Hoopy, start_hoopy, stop_hoopy
from tests.integration.test_pg_approvals import admin, wait_pending
from tests.integration.test_pg_hostile import raw_connect

LO_POLICY = """\
mode: enforce
rules:
  - name: no-large-object-writes
    effect: deny
    reason: large objects are read-only here
    match: {groups: [lo-readers], sql: {functions: ["lo_creat", "lo_create", "lowrite"]}}
  - name: lo-narrow
    effect: allow
    match: {groups: [lo-narrow], sql: {statements: [select], functions: [lo_open, loread]}}
  - name: lo-masked-ssn
    effect: mask
    columns: ["*.ssn"]
    match: {groups: [lo-masked]}
  - name: lo-unlink-needs-a-dba
    effect: require_approval
    approvers: [dba]
    timeout: 10m
    match: {groups: [lo-approve], sql: {functions: [lo_unlink]}}
  - name: lo-narrow-transactions
    effect: allow
    match: {groups: [lo-narrow], sql: {statements: [begin, commit, rollback]}}
"""


@pytest.fixture(scope="module")
def lo(backend: Backend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hoopy]:
    h = start_hoopy(tmp_path_factory.mktemp("fastpath"), backend, policies={"lo": LO_POLICY})
    yield h
    stop_hoopy(h)


def _events(h: Hoopy, subject: str) -> list[dict[str, object]]:
    """Every event of every session of `subject`, oldest session first."""
    listing = h.cli("sessions", "list", "--subject", subject).stdout.splitlines()
    out: list[dict[str, object]] = []
    for sid in reversed([line.split()[0] for line in listing if line.strip()]):
        out += [json.loads(x) for x in h.cli("sessions", "show", sid).stdout.splitlines()]
    return out


def _fastpath(events: list[dict[str, object]]) -> list[dict[str, object]]:
    return [
        e for e in events if e.get("type") == "command" and "fast-path" in str(e.get("text", ""))
    ]


def _lo_count(backend: Backend) -> int:
    async def go() -> int:
        conn = await backend.app_conn()
        try:
            return int(await conn.fetchval("select count(*) from pg_largeobject_metadata"))
        finally:
            await conn.close()

    return asyncio.run(go())


def test_psql_large_objects_round_trip_and_are_recorded(lo: Hoopy, tmp_path: Path) -> None:
    src, dst = tmp_path / "in.bin", tmp_path / "out.bin"
    payload = bytes(range(256)) * 40 + b"hoopy fast path"
    src.write_bytes(payload)
    token = lo.token("fp-allowed")
    r = lo.psql("-At", "-c", f"\\lo_import '{src}'", token=token)
    assert r.returncode == 0, r.stderr
    oid = int(r.stdout.split()[-1])  # "lo_import 16400"
    r = lo.psql("-At", "-c", f"\\lo_export {oid} '{dst}'", "-c", f"\\lo_unlink {oid}", token=token)
    assert r.returncode == 0, r.stderr
    assert dst.read_bytes() == payload
    calls = _fastpath(_events(lo, "fp-allowed"))
    called = {f for e in calls for f in e.get("functions", [])}  # type: ignore[attr-defined]
    assert {"pg_catalog.lo_open", "pg_catalog.lowrite", "pg_catalog.loread"} <= called
    assert {"pg_catalog.lo_close", "pg_catalog.lo_unlink"} <= called
    assert all(e["outcome"] == "allow" for e in calls)
    # the data written is shown as the call's values (cut), as a Bind's are
    events = _events(lo, "fp-allowed")
    writes = [e for e in events if e["type"] == "call" and e["function"] == "pg_catalog.lowrite"]
    assert writes and any("bytes)" in v for v in writes[0]["values"])  # type: ignore[attr-defined]
    results = [e for e in events if e["type"] == "result" and e.get("tag") == "FUNCTION CALL"]
    assert len(results) >= len(calls)  # each call's answer


def test_deny_rule_on_lo_functions_refuses_and_records(lo: Hoopy, backend: Backend) -> None:
    before = _lo_count(backend)
    token = lo.token("fp-denied", groups=("agents", "lo-readers"))
    r = lo.psql("-At", "-c", "\\lo_import '/etc/hostname'", "-c", "select 'after'", token=token)
    assert r.returncode != 0
    assert "denied by rule 'no-large-object-writes'" in r.stderr, r.stderr
    assert _lo_count(backend) == before  # nothing was created
    refused = [e for e in _fastpath(_events(lo, "fp-denied")) if e["outcome"] == "deny"]
    assert refused and refused[0]["rule"] == "no-large-object-writes"


def test_allow_rule_must_cover_the_function(lo: Hoopy, backend: Backend) -> None:
    """lo-narrow may call lo_open and loread only: lo_creat is not covered."""
    token = lo.token("fp-narrow", groups=("lo-narrow",))
    r = lo.psql("-At", "-c", "\\lo_import '/etc/hostname'", token=token)
    assert r.returncode != 0 and "no policy rule allows this" in r.stderr, r.stderr
    events = _fastpath(_events(lo, "fp-narrow"))
    assert events and events[-1]["outcome"] == "deny"


def test_masked_sessions_refuse_fast_path_calls(lo: Hoopy, tmp_path: Path) -> None:
    """What loread returns cannot be traced to a column: fail closed, recorded."""
    token = lo.token("fp-masked", groups=("agents", "lo-masked"))
    r = lo.psql("-At", "-c", "\\lo_import '/etc/hostname'", "-c", "select 'after'", token=token)
    assert r.returncode != 0 and "cannot be masked" in r.stderr, r.stderr
    refused = _fastpath(_events(lo, "fp-masked"))
    assert refused and all(e["outcome"] == "deny" for e in refused)


def _direct(backend: Backend, sql: str) -> object:
    async def go() -> object:
        conn = await backend.app_conn()
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_a_denied_function_is_denied_by_oid_too(lo: Hoopy, backend: Backend) -> None:
    """The agents' policy denies pg_sleep by name: a fast-path call of its OID is the
    same call, refused by the same rule, and never reaches the server."""
    oid = int(_direct(backend, "select 'pg_sleep(float8)'::regprocedure::oid"))  # type: ignore[call-overload]
    s = raw_connect(lo)
    _login(lo, s, "fp-sleepy")
    s.sendall(_function_call(oid, [struct.pack("!d", 30.0)]))
    got = _until_ready(s)
    assert got.startswith(b"E") and b"denied by rule 'no-sleeping'" in got, got
    s.close()
    events = _fastpath(_events(lo, "fp-sleepy"))
    assert events[0]["rule"] == "no-sleeping" and events[0]["outcome"] == "deny"
    assert events[0]["functions"] == ["pg_catalog.pg_sleep"]


@pytest.mark.parametrize(
    ("function", "args", "kind"),
    [
        # reads any table given as text: a table deny rule cannot see it
        ("query_to_xml", [b"select * from vault", b"\x01", b"\x00", b""], "dynamic_sql"),
        ("pg_terminate_backend", [struct.pack("!i", 1), struct.pack("!q", 0)], "signal_backend"),
    ],
)
def test_a_call_has_the_kinds_the_same_call_in_sql_has(
    lo: Hoopy, backend: Backend, function: str, args: list[bytes], kind: str
) -> None:
    """By OID, query_to_xml is still dynamic SQL and pg_terminate_backend still signals
    a backend: refused unless an allow rule names the kind, as in SQL."""
    oid = int(_direct(backend, f"select '{function}'::regproc::oid"))  # type: ignore[call-overload]
    subject = f"fp-{kind}"
    s = raw_connect(lo)
    _login(lo, s, subject)
    s.sendall(_function_call(oid, args))
    got = _until_ready(s)
    assert got.startswith(b"E") and b"42501" in got and kind.encode() in got, got
    s.close()
    events = _fastpath(_events(lo, subject))
    assert events[0]["outcome"] == "deny" and kind in events[0]["kinds"]  # type: ignore[operator]


def test_a_call_needing_approval_waits_and_the_approver_sees_it(
    lo: Hoopy, backend: Backend
) -> None:
    oid = int(_direct(backend, "select lo_create(0)"))  # type: ignore[call-overload]
    env = {**os.environ, "PGPASSWORD": lo.token("fp-approve", groups=("agents", "lo-approve"))}
    p = subprocess.Popen(
        ["psql", lo.conninfo(), "-X", "-At", "-c", f"\\lo_unlink {oid}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        a = wait_pending(lo, "lo_unlink")
        assert a["rule"] == "lo-unlink-needs-a-dba" and str(oid) in a["values"]
        assert p.poll() is None  # still waiting
        assert _direct(backend, f"select count(*) from pg_largeobject_metadata where oid = {oid}")
        status, _ = admin(lo, "POST", f"/api/approvals/{a['id']}/approve", {"by": "alice"})
        assert status == 200
        _out, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    gone = f"select count(*) from pg_largeobject_metadata where oid = {oid}"
    assert _direct(backend, gone) == 0


def _function_call(oid: int, args: list[bytes | None]) -> bytes:
    body = struct.pack("!IhhH", oid, 1, 1, len(args))  # all arguments binary
    for a in args:
        body += struct.pack("!i", -1) if a is None else struct.pack("!i", len(a)) + a
    body += struct.pack("!h", 1)
    return b"F" + struct.pack("!I", len(body) + 4) + body


def _until_ready(s: socket.socket) -> bytes:
    got = b""
    while b"Z\x00\x00\x00\x05" not in got:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def _login(h: Hoopy, s: socket.socket, subject: str) -> None:
    s.sendall(pg.startup_message({"user": "agent", "database": "app-db"}))
    assert s.recv(9)[:1] == b"R"
    s.sendall(pg.password_message(h.token(subject).encode() + b"\0"))
    _until_ready(s)


def test_raw_client_unknown_oid_is_refused_recorded_and_the_session_goes_on(lo: Hoopy) -> None:
    s = raw_connect(lo)
    _login(lo, s, "fp-raw")
    s.sendall(_function_call(4_000_000_000, [b"\0\0\0\1"]))
    got = _until_ready(s)
    assert got.startswith(b"E") and b"42501" in got and b"4000000000" in got
    s.sendall(pg.query("select 'still usable'"))
    assert b"still usable" in _until_ready(s)
    # a known function through the raw client: pg_backend_pid() (OID 2026) is answered
    s.sendall(_function_call(2026, []))
    got = _until_ready(s)
    assert got.startswith(b"V"), got
    s.close()
    events = _fastpath(_events(lo, "fp-raw"))
    assert [e["outcome"] for e in events] == ["deny", "allow"]
    assert "no function has OID 4000000000" in str(events[0]["reason"])


def test_malformed_function_calls_do_not_decode() -> None:
    with pytest.raises(BadFunctionCall):
        decode_call(b"F\0\0\0\x0a\0\0\0\1\0")  # cut short
    with pytest.raises(BadFunctionCall):
        decode_call(_function_call(1, [b"x" * 10])[:-8])  # argument runs past the end
    with pytest.raises(BadFunctionCall):  # two format codes for one argument
        decode_call(b"F" + struct.pack("!IIhhhhi", 20, 1, 2, 0, 0, 1, -1))
    with pytest.raises(BadFunctionCall):
        decode_call(_function_call(1, []) + b"\0")  # trailing bytes
    with pytest.raises(BadFunctionCall):
        decode_call(_function_call(1, [])[:-2])  # no result format code
    assert decode_call(_function_call(7, [None, b"ab"])).values() == ("NULL", "base64:YWI=")
    # with the function's argument types, binary values an approver can read
    call = decode_call(_function_call(7, [struct.pack("!i", -5), struct.pack("!q", 2**40)]))
    assert call.values((23, 20)) == ("-5", str(2**40))
    call = decode_call(_function_call(7, [b"\x01", b"text", struct.pack("!d", 1.5)]))
    assert call.values((16, 25, 701)) == ("true", "text", "1.5")
    assert call.values((23,))[0] == "base64:AQ=="  # not an int4's length: not decoded


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64), st.integers(min_value=0, max_value=63))
def test_decode_call_on_hostile_bytes_only_raises_bad_function_call(body: bytes, cut: int) -> None:
    """Random bodies, and well-formed calls cut short or padded: decoded or refused as
    BadFunctionCall (the session then ends with 08P01), never another exception."""
    for raw in (
        b"F" + struct.pack("!I", len(body) + 4) + body,
        _function_call(9, [body, None])[: 5 + cut],
        _function_call(9, [body]) + body[:cut],
    ):
        try:
            info = decode_call(raw)
        except BadFunctionCall:
            continue
        assert len(info.values((23, 17))) == len(info.args)


class _DownCatalog:
    """A catalog whose side connection fails (what Catalog._fetch raises then)."""

    connector = type("C", (), {"name": "app-db"})()

    async def function_name(self, oid: int) -> None:
        raise CatalogUnavailable("OSError")


class _Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, object]] = []

    def record(self, type_: str, **fields: object) -> None:
        self.events.append({"type": type_, **fields})


async def test_a_call_hoopy_cannot_resolve_is_refused_and_recorded() -> None:
    """Fail closed: with the catalog unreachable (or in a masked session) no call is
    let through unresolved, and the refusal is recorded with its reason."""
    info = decode_call(_function_call(764, [b"/etc/passwd"]))
    for masked, reason in ((False, "catalog side connection is unavailable"), (True, "masked")):
        rec = _Recorder()
        with pytest.raises(CommandDenied, match=reason):
            await checked_call(info, rec, _DownCatalog(), masked=masked)  # type: ignore[arg-type]
        assert rec.events[0]["outcome"] == "deny" and reason in str(rec.events[0]["reason"])
        assert rec.events[0]["values"] == ["base64:L2V0Yy9wYXNzd2Q="]  # binary, type unknown
