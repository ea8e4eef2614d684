"""Backend connection reuse (pool.py), against the real sshd and the real ssh client.

Which backend connection served a command is what the backend itself says: the source
port in $SSH_CONNECTION (hoopy's side of the TCP connection), and $PPID, the sshd
process serving that connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
import types
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import asyncssh.auth
import asyncssh.connection
import asyncssh.saslprep
import pytest

from hoopy.config import Secret, SshConnector
from hoopy.errors import BackendUnavailable
from hoopy.policy import Identity
from hoopy.protocols.ssh import backend as be
from hoopy.protocols.ssh import pool as pool_module
from hoopy.protocols.ssh.pool import PER_KEY, BackendPool
from tests.integration.sshd import Sshd, SshHoopy, keygen, start_ssh_hoopy, stop

pytest_plugins = ["tests.integration.sshd"]


@contextlib.contextmanager
def _hoopy(tmp: Path, sshd: Sshd, settings: str) -> Iterator[SshHoopy]:
    h = start_ssh_hoopy(tmp, sshd, extra_yaml=f"ssh: {{failed_logins: 1000, {settings}}}\n")
    try:
        yield h
    finally:
        stop(h.proc)


@pytest.fixture(scope="module")
def pooled(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHoopy]:
    with _hoopy(tmp_path_factory.mktemp("pool"), sshd, "backend_idle: 30s") as h:
        yield h


def _port(h: SshHoopy, token: str, marker: str = "") -> int:
    """The source port of the backend connection that ran the command."""
    r = h.ssh(f"echo $SSH_CONNECTION {marker}".rstrip(), token=token)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.split()[1])


def _backend_event(h: SshHoopy, marker: str) -> dict:
    """The `backend` event of the (finished) session whose command held `marker`."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for log in (h.folder / "recordings").rglob("*.jsonl"):
            text = log.read_text()
            if marker in text and '"type":"session_end"' in text:
                events = [json.loads(line) for line in text.splitlines()]
                return next(e for e in events if e["type"] == "backend")
        time.sleep(0.05)
    raise AssertionError(f"no finished recording holds {marker!r}")


def _wait_for(check, what: str, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_the_same_identity_reuses_its_backend_connection(pooled: SshHoopy) -> None:
    first = _port(pooled, pooled.token("reuse-1"), "reuse-marker-1")
    # a new token of the same identity (issuer, subject, groups): the same connection
    assert _port(pooled, pooled.token("reuse-1"), "reuse-marker-2") == first
    assert _port(pooled, pooled.token("reuse-1"), "reuse-marker-3") == first
    assert _backend_event(pooled, "reuse-marker-1")["reused"] is False
    assert _backend_event(pooled, "reuse-marker-2")["reused"] is True


def test_never_across_identities(pooled: SshHoopy) -> None:
    a = _port(pooled, pooled.token("ident-a"))
    assert _port(pooled, pooled.token("ident-a")) == a  # parked for ident-a …
    # … and another subject does not get it, though it is idle right now
    b = _port(pooled, pooled.token("ident-b"), "ident-b-marker")
    assert b != a
    assert _backend_event(pooled, "ident-b-marker")["reused"] is False
    # the same subject with other groups has other rights: not the same identity
    other_groups = _port(pooled, pooled.token("ident-a", ("agents", "ops")))
    assert other_groups not in (a, b)
    # each keeps its own
    assert _port(pooled, pooled.token("ident-a")) == a
    assert _port(pooled, pooled.token("ident-b")) == b


def test_concurrent_connections_of_one_identity_never_share(pooled: SshHoopy) -> None:
    """Two agent connections open at once each hold their own backend connection."""
    token = pooled.token("ident-concurrent")
    env = pooled.ssh_env(token)
    argv = [*pooled.ssh_argv("web-1"), "cat; echo $SSH_CONNECTION"]
    procs = [
        subprocess.Popen(argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    # both are running `cat` before either ends: reading its echo proves it started
    for p in procs:
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write("started\n")
        p.stdin.flush()
        assert p.stdout.readline() == "started\n"
    ports = []
    for p in procs:
        out, _ = p.communicate(timeout=30)
        assert p.returncode == 0
        ports.append(int(out.split()[1]))
    assert ports[0] != ports[1]


def test_a_dead_pooled_connection_is_not_handed_out(pooled: SshHoopy, sshd: Sshd) -> None:
    token = pooled.token("ident-dead")
    r = pooled.ssh("echo $PPID $SSH_CONNECTION", token=token)
    pid, port = int(r.stdout.split()[0]), int(r.stdout.split()[2])
    assert pid != sshd.proc.pid  # sshd's process for this connection, not the listener
    assert _port(pooled, token) == port  # parked and reused
    os.kill(pid, signal.SIGKILL)  # the backend end of the parked connection dies
    _wait_for(lambda: not Path(f"/proc/{pid}").exists(), "the sshd process to go")
    r = pooled.ssh("echo $SSH_CONNECTION dead-marker", token=token)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout.split()[1]) != port
    assert _backend_event(pooled, "dead-marker")["reused"] is False


def test_a_changed_known_hosts_is_never_served_by_a_parked_connection(
    pooled: SshHoopy, sshd: Sshd
) -> None:
    """The operator repins the backend's host key: the connection parked under the old
    pin must not answer; the next command meets the new pin (here: a wrong key)."""
    token = pooled.token("ident-repin")
    known = pooled.folder / "backend_known_hosts"
    first = _port(pooled, token)
    assert _port(pooled, token) == first
    original = known.read_text()
    other = keygen(pooled.folder / "repin_key", "not-the-backend")
    try:
        known.write_text(f"[127.0.0.1]:{sshd.port} {other}\n")
        r = pooled.ssh("echo $SSH_CONNECTION", token=token)
        assert r.returncode == 255 and r.stdout == ""
        assert "host key is not the one pinned" in r.stderr
    finally:
        known.write_text(original)
    assert _port(pooled, token) == first  # pinned as when it was made: still its own


def test_idle_connections_expire(sshd: Sshd, tmp_path: Path) -> None:
    with _hoopy(tmp_path, sshd, "backend_idle: 300ms") as h:
        token = h.token("ident-ttl")
        first = _port(h, token)
        ended = f"port {first}"
        # sshd logs the end of the connection hoopy closed when its idle time ran out
        _wait_for(
            lambda: any(ended in ln and "isconnect" in ln for ln in sshd.log),
            "sshd to log the end of the expired connection",
        )
        assert _port(h, token) != first


def test_backend_idle_zero_turns_reuse_off(sshd: Sshd, tmp_path: Path) -> None:
    with _hoopy(tmp_path, sshd, "backend_idle: 0") as h:
        token = h.token("ident-off")
        assert _port(h, token) != _port(h, token)


# ---- the pool itself, in process, with the real sshd ---------------------------------------
def _connector(sshd: Sshd, known: Path) -> SshConnector:
    return SshConnector(
        name="web-1",
        host="127.0.0.1",
        port=sshd.port,
        user="root",
        private_key=Secret(f"file:{sshd.client_key}"),
        known_hosts=Secret(f"file:{known}"),
    )


def _local_port(conn: asyncssh.SSHClientConnection) -> int:
    return int(conn.get_extra_info("sockname")[1])


async def test_pool_bounds_config_and_busy_connections(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line() + "\n")
    c = _connector(sshd, known)
    configs = [object()]
    pool = BackendPool(30.0, PER_KEY + 1, lambda: configs[0])
    a, b = Identity("a", frozenset({"g"}), "iss"), Identity("b", frozenset({"g"}), "iss")
    try:
        # per identity: at most PER_KEY parked, the oldest closed first
        conns = [await pool.acquire(c, a) for _ in range(PER_KEY + 1)]
        for conn in conns:
            await pool.release(conn, reusable=True)
        assert pool.count() == PER_KEY
        await asyncio.wait_for(conns[0].wait_closed(), 5)
        # in all: at most `size`; b's first parks and a's oldest parked goes
        b1, b2 = await pool.acquire(c, b), await pool.acquire(c, b)
        await pool.release(b1, reusable=True)
        await pool.release(b2, reusable=True)
        assert pool.count() == PER_KEY + 1
        await asyncio.wait_for(conns[1].wait_closed(), 5)
        # a connection with a channel still open is closed, not parked
        busy = await pool.acquire(c, b)
        assert busy is b2 and pool.reused(busy)  # the most recently parked
        proc = await busy.create_process("cat")
        await pool.release(busy, reusable=True)
        assert busy.is_closed() and pool.count() == PER_KEY
        proc.close()
        # an agent connection that did not end cleanly: closed, not parked
        last = await pool.acquire(c, a)
        await pool.release(last, reusable=False)
        assert last.is_closed()
        # a new configuration: what was parked under the old one is never handed out
        configs[0] = object()
        fresh = await pool.acquire(c, a)
        assert not pool.reused(fresh) and fresh not in conns
        await pool.release(fresh, reusable=True)
        # … and one made under the old configuration, released after the change, closes
        stale = await pool.acquire(c, b)
        configs[0] = object()
        await pool.release(stale, reusable=True)
        assert stale.is_closed()
    finally:
        pool.close()
    assert pool.count() == 0
    # a connection given back after the pool closed (the listener stopping) is closed
    late = await pool.acquire(c, a)
    await pool.release(late, reusable=True)
    assert late.is_closed() and pool.count() == 0


async def test_pool_failed_connections_and_changed_secrets(sshd: Sshd, tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line() + "\n")
    c = _connector(sshd, known)
    pool = BackendPool(30.0, 8, lambda: None)
    a = Identity("a", frozenset({"g"}), "iss")
    try:
        first = await pool.acquire(c, a)
        port = _local_port(first)
        await pool.release(first, reusable=True)
        # the pin changes: the parked connection is not handed out, the new pin refuses
        known.write_text(f"[127.0.0.1]:{sshd.port} {keygen(tmp_path / 'k', 'other')}\n")
        with pytest.raises(BackendUnavailable, match="host key is not the one pinned"):
            await pool.acquire(c, a)
        assert pool.count() == 1 and not first.is_closed()
        known.write_text(sshd.known_hosts_line() + "\n")
        again = await pool.acquire(c, a)
        assert again is first and _local_port(again) == port
    finally:
        pool.close()


# ---- the exec path -------------------------------------------------------------------------
def _connect(h: SshHoopy, token: str) -> asyncssh.connection._ConnectionContextManager:
    return asyncssh.connect(
        "127.0.0.1", h.ssh_port, username="web-1", password=token,
        known_hosts=asyncssh.import_known_hosts(h.known_hosts().read_text()),
        client_keys=None, agent_path=None, config=None, preferred_auth="password",
    )  # fmt: skip


async def test_a_recording_that_cannot_be_created_stops_the_command(
    pooled: SshHoopy, sshd: Sshd
) -> None:
    """The backend channel opens while the channel's cast file is created; when that
    fails the command must never be sent (nothing runs unrecorded)."""
    target = sshd.folder / "ran-unrecorded"
    async with _connect(pooled, pooled.token("ident-cast")) as conn:
        assert (await conn.run("true")).exit_status == 0  # the session is being recorded
        days = [d for d in (pooled.folder / "recordings").iterdir() if d.is_dir()]
        day = max(days, key=lambda d: d.stat().st_mtime)
        away = day.with_name(day.name + ".away")
        day.rename(away)  # the session's log goes on (open file); new casts cannot be made
        day.write_text("not a folder\n")
        try:
            r = await conn.run(f"dd if=/dev/zero of={target} count=0")
        finally:
            day.unlink()
            away.rename(day)
        assert r.exit_status != 0 and "recording unavailable" in str(r.stderr)
        # the same backend connection runs the next command after any earlier one
        r = await conn.run(f"test -e {target}")
        assert r.exit_status == 1, r.stderr
    assert not target.exists()


def _prep(fn, s: str) -> str:  # type: ignore[no-untyped-def]
    try:
        return "ok:" + fn(s)
    except asyncssh.saslprep.SASLPrepError as e:
        return f"error:{e}"


def test_the_saslprep_shortcut_answers_as_the_full_profile(pooled: SshHoopy) -> None:
    """Passwords (tokens) skip asyncssh's slow SASLprep when they are printable ASCII;
    every answer must be the full profile's (RFC 4013), errors included."""
    full = asyncssh.saslprep.saslprep
    assert asyncssh.auth.saslprep is be._saslprep
    assert asyncssh.connection.saslprep is be._saslprep
    samples = [chr(c) for c in range(0x100)] + [
        "".join(chr(c) for c in range(0x20, 0x7F)),
        pooled.token("ident-prep"),
        "",
        " leading and trailing ",
        "a\u00adb",  # mapped to nothing
        "x\u2000y",  # non-ASCII space: mapped to a space
        "caf\u00e9",
        "e\u0301",  # NFKC
        "\ufb01",  # ligature: NFKC
        "\u0627\u0644\u0639",  # right-to-left
        "\u0627a",  # mixed directions: refused
        "tab\there",
        "del\x7f",
        "\U000e0001",
    ]
    for s in samples:
        assert _prep(be._saslprep, s) == _prep(full, s), repr(s)


@pytest.mark.parametrize(
    "options",
    [
        (),  # OpenSSH's own order: aes128-ctr with an ETM MAC
        ("-C",),  # compression asked for: none is what hoopy offers
        ("-c", "aes256-gcm@openssh.com"),
        ("-c", "aes128-ctr", "-o", "MACs=hmac-sha2-256"),
    ],
)
def test_agent_ciphers_the_real_client_negotiates(
    pooled: SshHoopy, options: tuple[str, ...]
) -> None:
    r = pooled.ssh("echo negotiated", *options, "-v")
    assert r.returncode == 0 and r.stdout == "negotiated\n", r.stderr
    # "debug1: kex: server->client cipher: aes128-ctr MAC: … compression: none"
    kex = [line for line in r.stderr.splitlines() if " cipher: " in line]
    assert len(kex) == 2, r.stderr
    for line in kex:
        assert "chacha20" not in line and line.endswith("compression: none"), line


def test_chacha20_only_clients_are_refused(pooled: SshHoopy) -> None:
    """asyncssh runs chacha20-poly1305 at ~9x the CPU of AES-GCM: not offered."""
    r = pooled.ssh("echo never", "-c", "chacha20-poly1305@openssh.com")
    assert r.returncode == 255 and r.stdout == ""
    assert "no matching cipher" in r.stderr


async def test_an_overdue_parked_connection_is_never_handed_out(
    sshd: Sshd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle timer is a loop callback: on a busy loop it can run after an acquire
    that was already due.  The parked connection's age, not the timer, decides."""
    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts_line() + "\n")
    c = _connector(sshd, known)
    pool = BackendPool(30.0, 8, lambda: None)
    a = Identity("a", frozenset({"g"}), "iss")
    try:
        first = await pool.acquire(c, a)
        await pool.release(first, reusable=True)
        assert pool.count() == 1
        later = time.monotonic() + 31  # past backend_idle, before the timer has run
        clock = types.SimpleNamespace(monotonic=lambda: later)
        monkeypatch.setattr(pool_module, "time", clock)  # pool.py's clock only
        second = await pool.acquire(c, a)
        assert second is not first and not pool.reused(second)
        assert first.is_closed() and pool.count() == 0
        await pool.release(second, reusable=False)
    finally:
        pool.close()
