"""TCP forwarding through `hoopy serve` with the real OpenSSH client and a real sshd
behind: `ssh -W` and `ssh -N -L` reach a TCP echo server (started here) from the
backend host only where a rule's `ssh.forward` names the destination; deny rules,
approvals and mask rules apply; everything is recorded and verifiable."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from hoopy import pgcluster
from tests.integration.sshd import ADMIN_TOKEN, Sshd, SshHoopy, start_ssh_hoopy, stop

pytest_plugins = ["tests.integration.sshd"]

GREETING = b"echo ready\n"


@dataclass
class Echo:
    """A TCP server that greets, then echoes until EOF, then closes."""

    server: socketserver.ThreadingTCPServer
    connections: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])


def start_echo(sink: bool = False) -> Echo:
    """`sink`: no greeting, no echo; reads to EOF, then says how many bytes came."""
    echo: Echo

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            echo.connections.append(f"{self.client_address[0]}:{self.client_address[1]}")
            sock: socket.socket = self.request
            if not sink:
                sock.sendall(GREETING)
            total = 0
            while data := sock.recv(65536):
                total += len(data)
                if not sink:
                    sock.sendall(data)
            # the peer may be gone already (a test that closes first): nothing to tell
            with contextlib.suppress(OSError):
                if sink:
                    sock.sendall(f"got {total}\n".encode())
                sock.shutdown(socket.SHUT_WR)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    echo = Echo(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return echo


@pytest.fixture(scope="module")
def echo() -> Iterator[Echo]:
    e = start_echo()
    yield e
    e.server.shutdown()
    e.server.server_close()


@pytest.fixture(scope="module")
def echo2() -> Iterator[Echo]:
    e = start_echo()
    yield e
    e.server.shutdown()
    e.server.server_close()


@pytest.fixture(scope="module")
def sink() -> Iterator[Echo]:
    e = start_echo(sink=True)
    yield e
    e.server.shutdown()
    e.server.server_close()


def _policy(echo: Echo, echo2: Echo, sink: Echo | None = None) -> str:
    more = f', "127.0.0.1:{sink.port}"' if sink is not None else ""
    return f"""\
mode: enforce
rules:
  - name: fwd-echo
    effect: allow
    match:
      groups: [fwd]
      connectors: [web-1, web-masked]
      ssh:
        forward: ["127.0.0.1:{echo.port}", "127.0.0.1:{echo2.port}", "db.internal:5432"{more}]
  - name: no-second-echo
    effect: deny
    reason: the second echo server is closed to agents
    match: {{groups: [fwd-deny], ssh: {{forward: ["localhost:{echo2.port}"]}}}}
  - name: fwd-deny-group
    effect: allow
    match: {{groups: [fwd-deny], connectors: [web-1], ssh: {{forward: ["127.0.0.1:*"]}}}}
  - name: second-echo-needs-ops
    effect: require_approval
    approvers: [ops]
    timeout: 60s
    match: {{groups: [fwd], ssh: {{forward: ["127.0.0.1:{echo2.port}"]}}}}
"""


@pytest.fixture(scope="module")
def hoopy(
    sshd: Sshd, echo: Echo, echo2: Echo, sink: Echo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SshHoopy]:
    policy = _policy(echo, echo2, sink)
    h = start_ssh_hoopy(tmp_path_factory.mktemp("hoopy-fwd"), sshd, {"fwd": policy})
    try:
        yield h
    finally:
        stop(h.proc)


def _sub() -> str:
    return f"fwd-{uuid.uuid4().hex[:12]}"


def ssh_w(
    h: SshHoopy,
    dest: str,
    data: bytes,
    sub: str,
    groups: tuple[str, ...] = ("fwd",),
    connector: str = "web-1",
) -> subprocess.CompletedProcess[bytes]:
    """The real `ssh -W dest`: stdin and stdout are the forwarded connection."""
    argv = h.ssh_argv(connector, "-W", dest)
    return subprocess.run(
        argv, input=data, capture_output=True, timeout=60, env=h.ssh_env(h.token(sub, groups))
    )


def _recording(h: SshHoopy, needle: str) -> Path:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for log in (h.folder / "recordings").rglob("*.jsonl"):
            text = log.read_text()
            if needle in text and '"type":"session_end"' in text:
                return log
        time.sleep(0.05)
    raise AssertionError(f"no finished recording holds {needle!r}")


def _verify(h: SshHoopy, sid: str) -> subprocess.CompletedProcess[str]:
    """`hoopy verify SID` once the index has the session's end too: the gateway writes
    session_end to the file first, and a verify between the two rightly says the file
    and the index disagree (bounded wait on that condition)."""
    deadline = time.monotonic() + 15
    while True:
        r = h.cli("verify", sid)
        if r.returncode == 0 or time.monotonic() > deadline:
            return r
        if "index says the session is open" not in r.stdout:
            return r  # anything else is a real failure: no waiting
        time.sleep(0.05)


def _events(h: SshHoopy, sub: str) -> tuple[Path, list[dict[str, Any]]]:
    log = _recording(h, sub)
    return log, [json.loads(line) for line in log.read_text().splitlines()]


def _stream(events: list[dict[str, Any]], direction: str) -> bytes:
    out = b""
    for e in events:
        if e.get("type") == "forward_data" and e["dir"] == direction:
            assert e["offset"] == len(out)
            out += e["text"].encode() if "text" in e else base64.b64decode(e["b64"])
    return out


def _refused(r: subprocess.CompletedProcess[bytes]) -> str:
    err = r.stderr.decode(errors="replace")
    assert r.returncode != 0
    assert "administratively prohibited" in err, err
    return err


# ---- allowed ------------------------------------------------------------------------------


def test_ssh_w_round_trip_is_relayed_recorded_and_verifiable(hoopy: SshHoopy, echo: Echo) -> None:
    sub = _sub()
    payload = b"hello through hoopy\n" + bytes(range(256)) * 64  # text, then binary
    seen = len(echo.connections)
    r = ssh_w(hoopy, f"127.0.0.1:{echo.port}", payload, sub)
    assert r.returncode == 0, r.stderr
    assert r.stdout == GREETING + payload
    assert len(echo.connections) == seen + 1
    log, events = _events(hoopy, sub)
    cmd = [e for e in events if e.get("type") == "command"]
    assert len(cmd) == 1 and cmd[0]["outcome"] == "allow" and cmd[0]["rule"] == "fwd-echo"
    assert cmd[0]["text"] == f"forward to 127.0.0.1:{echo.port}"
    assert cmd[0]["kinds"] == ["forward_tcp"]
    opened = next(e for e in events if e.get("type") == "forward_open")
    assert opened["destination"] == f"127.0.0.1:{echo.port}" and opened["rule"] == "fwd-echo"
    assert _stream(events, "to") == payload
    assert _stream(events, "from") == GREETING + payload
    closed = next(e for e in events if e.get("type") == "forward_close")
    assert closed["bytes_to"] == len(payload) and closed["bytes_from"] == len(GREETING + payload)
    assert closed["duration"] >= 0
    assert _verify(hoopy, log.stem).returncode == 0
    shown = hoopy.cli("replay", log.stem, "--speed", "0")  # what a security team reads
    assert shown.returncode == 0, shown.stderr
    assert f"forward 1 open to 127.0.0.1:{echo.port}" in shown.stdout
    assert "← forward 1: echo ready" in shown.stdout  # text as text (escaped)
    assert "bytes of binary)" in shown.stdout  # the rest is binary


def _wait_for_line(proc: subprocess.Popen[bytes], needle: str, seen: list[str]) -> str:
    """Read ssh -v's stderr until a line holds `needle` (bounded by the caller's timeout)."""
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        seen.append(line)
        if needle in line:
            return line
    raise AssertionError(f"ssh ended before {needle!r}: {''.join(seen)[-2000:]}")


def _connect(port: int) -> socket.socket:
    """ssh's local listener, retried for a few seconds if it refuses: under load a
    connection to it was refused once right after ssh said it listened (ssh's side,
    before hoopy is involved at all; the test is about what happens after)."""
    deadline = time.monotonic() + 5
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=30)
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _roundtrip(port: int, payload: bytes) -> bytes:
    with _connect(port) as s:
        got = b""
        while len(got) < len(GREETING) and (chunk := s.recv(65536)):
            got += chunk
        assert got == GREETING, got  # the forward is open: the echo server greeted
        writer = threading.Thread(target=lambda: (s.sendall(payload), s.shutdown(socket.SHUT_WR)))
        writer.start()
        while chunk := s.recv(1 << 20):
            got += chunk
        writer.join()
        return got


def test_ssh_l_forwards_several_connections(hoopy: SshHoopy, echo: Echo) -> None:
    """`ssh -N -L`: a local port through hoopy to the echo server, reached from the
    backend host; two connections at once, one big enough to need flow control."""
    sub = _sub()
    local = pgcluster.free_port()
    argv = hoopy.ssh_argv(
        "web-1", "-v", "-N", "-o", "ExitOnForwardFailure=yes",
        "-L", f"127.0.0.1:{local}:127.0.0.1:{echo.port}",
    )  # fmt: skip
    proc = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=hoopy.ssh_env(hoopy.token(sub, ("fwd",))),
    )  # fmt: skip
    seen: list[str] = []
    try:
        _wait_for_line(proc, f"Local forwarding listening on 127.0.0.1 port {local}", seen)
        big = bytes(range(256)) * 4096 * 3  # 3 MiB: more than the windows and buffers
        results: dict[str, bytes] = {}
        small = threading.Thread(target=lambda: results.update(small=_roundtrip(local, b"ping\n")))
        small.start()
        results["big"] = _roundtrip(local, big)
        small.join(60)
        assert results["small"] == GREETING + b"ping\n"
        assert results["big"] == GREETING + big
    finally:
        proc.terminate()
        proc.wait(30)
    _, events = _events(hoopy, sub)
    closes = [e for e in events if e.get("type") == "forward_close"]
    assert sorted(e["bytes_to"] for e in closes) == [5, len(big)]
    capped = [e for e in events if e.get("type") == "recording_capped"]
    assert not capped  # 3 MiB is under the 4 MiB default per direction
    assert sum(1 for e in events if e.get("type") == "forward_open") == 2


# ---- refused ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dest",
    [
        "db.internal.evil.com:5432",  # a look-alike of the allowed db.internal
        "DB.INTERNAL.evil.com:5432",
        "127.0.0.2:{echo}",  # another loopback address: not the one named
        "0.0.0.0:{echo}",  # reaches the host too; not named
        "127.0.0.1:{echo1}",  # allowed host, other port
    ],
)
def test_a_destination_no_rule_names_is_refused(hoopy: SshHoopy, echo: Echo, dest: str) -> None:
    sub = _sub()
    seen = len(echo.connections)
    dest = dest.format(echo=echo.port, echo1=echo.port + 1 if echo.port < 65535 else 1)
    r = ssh_w(hoopy, dest, b"x", sub)
    err = _refused(r)
    assert "no policy rule allows this" in err, err
    assert len(echo.connections) == seen
    log, events = _events(hoopy, sub)
    denied = [e for e in events if e.get("type") == "command"]
    assert denied and denied[0]["outcome"] == "deny" and denied[0]["rule"] == ""
    assert not any(e.get("type") in ("forward_open", "forward_data") for e in events)
    assert _verify(hoopy, log.stem).returncode == 0


@pytest.mark.parametrize(
    ("dest", "why"),
    [
        ("127.1:{echo}", "not a canonical IPv4 address"),
        ("0x7f.0.0.1:{echo}", "not a canonical IPv4 address"),
        ("2130706433:{echo}", "not a canonical IPv4 address"),
        ("db.internal.:5432", "trailing dot"),
        ("db..internal:5432", "non-empty labels"),
    ],
)
def test_ambiguous_destinations_are_refused(
    hoopy: SshHoopy, echo: Echo, dest: str, why: str
) -> None:
    sub = _sub()
    seen = len(echo.connections)
    r = ssh_w(hoopy, dest.format(echo=echo.port), b"x", sub)
    assert why in _refused(r)
    assert len(echo.connections) == seen
    _, events = _events(hoopy, sub)
    refused = [e for e in events if e.get("type") == "refused"]
    assert refused and refused[0]["what"] == "direct-tcpip" and why in refused[0]["reason"]


def test_host_case_is_normalised(hoopy: SshHoopy) -> None:
    """DB.Internal is db.internal: allowed by the rule (the backend cannot resolve it,
    so the open fails there, after the allow)."""
    sub = _sub()
    r = ssh_w(hoopy, "DB.Internal:5432", b"x", sub)
    assert r.returncode != 0
    _, events = _events(hoopy, sub)
    cmd = next(e for e in events if e.get("type") == "command")
    assert cmd["outcome"] == "allow" and cmd["text"] == "forward to db.internal:5432"
    failed = next(e for e in events if e.get("type") == "forward_failed")
    assert "the backend could not open db.internal:5432" in failed["reason"]


def test_deny_beats_allow_even_through_another_name(hoopy: SshHoopy, echo2: Echo) -> None:
    """fwd-deny may forward to 127.0.0.1:*, but a deny on localhost:PORT covers
    127.0.0.1:PORT and [::ffff:127.0.0.1]:PORT too."""
    for dest in (f"127.0.0.1:{echo2.port}", f"[::ffff:127.0.0.1]:{echo2.port}"):
        sub = _sub()
        seen = len(echo2.connections)
        r = ssh_w(hoopy, dest, b"x", sub, groups=("fwd-deny",))
        err = _refused(r)
        assert "denied by rule 'no-second-echo'" in err, err
        assert "closed to agents" in err
        assert len(echo2.connections) == seen
        _, events = _events(hoopy, sub)
        cmd = next(e for e in events if e.get("type") == "command")
        assert cmd["outcome"] == "deny" and cmd["rule"] == "no-second-echo"


def test_forwarding_is_refused_where_mask_rules_apply(hoopy: SshHoopy, echo: Echo) -> None:
    sub = _sub()
    seen = len(echo.connections)
    r = ssh_w(hoopy, f"127.0.0.1:{echo.port}", b"x", sub, connector="web-masked")
    err = _refused(r)
    assert "mask rule 'hide-secrets' applies here" in err and "cannot be masked" in err, err
    assert len(echo.connections) == seen
    _, events = _events(hoopy, sub)
    refused = [e for e in events if e.get("type") == "refused"]
    assert refused and refused[0]["masks"] == "hide-secrets"


def test_remote_forwarding_stays_refused_and_recorded(hoopy: SshHoopy, echo: Echo) -> None:
    sub = _sub()
    argv = hoopy.ssh_argv(
        "web-1", "-N", "-o", "ExitOnForwardFailure=yes", "-R", f"0:127.0.0.1:{echo.port}"
    )
    r = subprocess.run(
        argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env=hoopy.ssh_env(hoopy.token(sub, ("fwd",))),
    )  # fmt: skip
    assert r.returncode != 0 and "remote port forwarding failed" in r.stderr, r.stderr
    _, events = _events(hoopy, sub)
    assert any(e.get("type") == "refused" and e["what"] == "tcpip-forward" for e in events)


def test_agent_and_x11_forwarding_stay_refused_and_recorded(
    hoopy: SshHoopy, tmp_path: Path
) -> None:
    sub = _sub()
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(  # a real, empty ssh-agent for ssh -A to forward
        ["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    assert agent.stdout is not None
    assert b"SSH_AUTH_SOCK" in agent.stdout.readline()  # listening
    env = {**hoopy.ssh_env(hoopy.token(sub, ("fwd", "agents"))), "SSH_AUTH_SOCK": str(sock)}
    try:
        r = subprocess.run(
            [*hoopy.ssh_argv("web-1", "-A", "-X", "-o", "ForwardX11Trusted=yes",
                             "-o", "XAuthLocation=/nonexistent", "-v"), "true"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, env=env,
        )  # fmt: skip
    finally:
        agent.terminate()
        agent.wait(10)
    assert r.returncode == 0, r.stderr  # the command runs; the forwardings do not
    assert "Requesting authentication agent forwarding" in r.stderr
    assert "Requesting X11 forwarding" in r.stderr
    _, events = _events(hoopy, sub)
    refused = {e["what"] for e in events if e.get("type") == "refused"}
    assert {"auth-agent", "x11"} <= refused, events


# ---- approval ------------------------------------------------------------------------------


def _pending(h: SshHoopy, needle: str) -> dict[str, Any]:
    """The pending approval that holds `needle` (bounded wait)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        req = urllib.request.Request(
            f"http://{h.addresses['admin']}/api/approvals?state=pending",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            body = json.loads(r.read())
        items = body if isinstance(body, list) else body.get("approvals", [])
        for a in items:
            if needle in json.dumps(a):
                return dict(a)
        time.sleep(0.05)
    raise AssertionError(f"no pending approval for {needle!r}")


@pytest.mark.parametrize("verdict", ["approve", "deny"])
def test_an_approval_holds_the_open_until_decided(
    hoopy: SshHoopy, echo2: Echo, verdict: str
) -> None:
    sub = _sub()
    seen = len(echo2.connections)
    proc = subprocess.Popen(
        hoopy.ssh_argv("web-1", "-v", "-W", f"127.0.0.1:{echo2.port}"),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=hoopy.ssh_env(hoopy.token(sub, ("fwd",))),
    )  # fmt: skip
    lines: list[str] = []
    try:
        # hoopy's note arrives as an SSH debug message while the open waits
        note = _wait_for_line(proc, "waiting for approval", lines)
        assert "by ops" in note, note
        pending = _pending(hoopy, sub)
        approval_id = str(pending["id"])
        assert approval_id in note
        assert pending["command"] == f"forward to 127.0.0.1:{echo2.port}"  # what approvers see
        assert len(echo2.connections) == seen  # nothing opened yet
        req = urllib.request.Request(
            f"http://{hoopy.addresses['admin']}/api/approvals/{approval_id}/{verdict}",
            method="POST", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        out, err = proc.communicate(b"approved bytes\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if verdict == "approve":
        assert proc.returncode == 0, err
        assert out == GREETING + b"approved bytes\n"
        assert len(echo2.connections) == seen + 1
    else:
        assert proc.returncode != 0 and b"administratively prohibited" in err
        assert len(echo2.connections) == seen
    _, events = _events(hoopy, sub)
    cmd = next(e for e in events if e.get("type") == "command")
    assert cmd["outcome"] == "require_approval" and cmd["rule"] == "second-echo-needs-ops"
    assert any(e.get("type") == "forward_open" for e in events) == (verdict == "approve")


def test_an_approval_is_withdrawn_when_the_agent_leaves(hoopy: SshHoopy, echo2: Echo) -> None:
    sub = _sub()
    seen = len(echo2.connections)
    proc = subprocess.Popen(
        hoopy.ssh_argv("web-1", "-v", "-W", f"127.0.0.1:{echo2.port}"),
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=hoopy.ssh_env(hoopy.token(sub, ("fwd",))),
    )  # fmt: skip
    try:
        _wait_for_line(proc, "waiting for approval", [])
        approval_id = str(_pending(hoopy, sub)["id"])
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 15
    while approval_id in json.dumps(_approvals(hoopy, "pending")):  # withdrawn (bounded)
        assert time.monotonic() < deadline, "the approval stayed pending after the agent left"
        time.sleep(0.05)
    _, events = _events(hoopy, sub)
    assert any(e.get("type") == "approval_cancelled" for e in events)
    assert not any(e.get("type") == "forward_open" for e in events)
    assert len(echo2.connections) == seen


def _approvals(h: SshHoopy, state: str) -> Any:
    req = urllib.request.Request(
        f"http://{h.addresses['admin']}/api/approvals?state={state}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


# ---- limits and recording ------------------------------------------------------------------


def _asyncssh(h: SshHoopy, sub: str, groups: tuple[str, ...] = ("fwd",)) -> Any:
    return asyncssh.connect(
        "127.0.0.1", h.ssh_port, username="web-1", password=h.token(sub, groups),
        known_hosts=asyncssh.import_known_hosts(h.known_hosts().read_text()),
        client_keys=None, agent_path=None, config=None, preferred_auth="password",
    )  # fmt: skip


def test_tiny_packets_are_recorded_coalesced(hoopy: SshHoopy, sink: Echo) -> None:
    """2,000 one-byte SSH packets become a handful of forward_data events, not 2,000."""
    sub = _sub()

    async def main() -> bytes:
        async with _asyncssh(hoopy, sub) as conn:
            reader, writer = await conn.open_connection("127.0.0.1", sink.port)
            for i in range(2000):
                writer.write(b"abcdefghij"[i % 10 : i % 10 + 1])
            await writer.drain()
            writer.write_eof()
            return bytes(await asyncio.wait_for(reader.read(), 30))

    assert asyncio.run(main()) == b"got 2000\n"
    log, events = _events(hoopy, sub)
    sent = [e for e in events if e.get("type") == "forward_data" and e["dir"] == "to"]
    assert _stream(events, "to") == b"abcdefghij" * 200
    assert len(sent) <= 20, len(sent)
    assert _verify(hoopy, log.stem).returncode == 0


def test_open_channels_are_limited_per_connection(hoopy: SshHoopy, sink: Echo) -> None:
    sub = _sub()

    async def main() -> None:
        async with _asyncssh(hoopy, sub) as conn:
            held = [await conn.open_connection("127.0.0.1", sink.port) for _ in range(64)]
            with pytest.raises(asyncssh.ChannelOpenError) as e:
                await conn.open_connection("127.0.0.1", sink.port)
            assert e.value.code == asyncssh.OPEN_RESOURCE_SHORTAGE
            _, writer = held.pop()
            writer.close()  # one closes: the next one opens
            await writer.channel.wait_closed()
            reader, writer = await conn.open_connection("127.0.0.1", sink.port)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 30) == b"got 0\n"

    asyncio.run(main())


@pytest.fixture(scope="module")
def small_hoopy(
    sshd: Sshd, echo: Echo, echo2: Echo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SshHoopy]:
    extra = "ssh: {failed_logins: 1000, record_bytes: 4KiB}\n"
    h = start_ssh_hoopy(
        tmp_path_factory.mktemp("hoopy-fwd-small"), sshd, {"fwd": _policy(echo, echo2)},
        extra_yaml=extra,
    )  # fmt: skip
    try:
        yield h
    finally:
        stop(h.proc)


def test_recorded_bytes_are_capped_per_direction(small_hoopy: SshHoopy, echo: Echo) -> None:
    sub = _sub()
    payload = bytes(range(256)) * 256  # 64 KiB each way
    r = ssh_w(small_hoopy, f"127.0.0.1:{echo.port}", payload, sub)
    assert r.returncode == 0 and r.stdout == GREETING + payload  # relayed whole
    log, events = _events(small_hoopy, sub)
    assert _stream(events, "to") == payload[:4096]
    assert _stream(events, "from") == (GREETING + payload)[:4096]
    capped = {e["stream"] for e in events if e.get("type") == "recording_capped"}
    assert capped == {"to", "from"}
    closed = next(e for e in events if e.get("type") == "forward_close")
    assert closed["bytes_to"] == len(payload)  # the full counts
    assert _verify(small_hoopy, log.stem).returncode == 0


@pytest.mark.parametrize(
    ("host", "port", "why"),
    [
        ("db.internal\x00.evil.com", 5432, "plain ASCII"),
        ("db.internal\n", 5432, "plain ASCII"),
        (" db.internal", 5432, "plain ASCII"),
        ("db.internal", 0, "out of range"),
        ("db.internal", 65536, "out of range"),
        ("db.internal", 2**32 - 1, "out of range"),
        ("[::1]", 22, "brackets"),
        ("fe80::1%lo", 22, "zone"),
        ("a" * 20000, 22, "1-253"),
        ("dé.internal", 5432, "plain ASCII"),
        ("-oProxyCommand=x", 22, "starting with '-'"),
    ],
)
def test_hostile_destinations_on_the_wire_are_refused(
    hoopy: SshHoopy, echo: Echo, host: str, port: int, why: str
) -> None:
    """What OpenSSH's client would not send, asyncssh sends as is: every one is refused
    with the reason, recorded bounded and escaped, and the connection stays usable."""
    sub = _sub()
    seen = len(echo.connections)

    async def main() -> None:
        async with _asyncssh(hoopy, sub, ("fwd", "agents")) as conn:
            with pytest.raises(asyncssh.ChannelOpenError) as e:
                await conn.create_connection(asyncssh.SSHTCPSession, host, port)
            assert e.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
            assert why in e.value.reason, e.value.reason
            r = await conn.run("echo still here")
            assert r.stdout == "still here\n"

    asyncio.run(main())
    assert len(echo.connections) == seen
    log, events = _events(hoopy, sub)
    refused = next(e for e in events if e.get("type") == "refused")
    assert refused["what"] == "direct-tcpip" and why in refused["reason"]
    assert len(refused["target"]) < 400 and "\x00" not in refused["target"]
    assert not any("forward_tcp" in e.get("kinds", []) for e in events)
    assert _verify(hoopy, log.stem).returncode == 0


# ---- flow control ----------------------------------------------------------------------------


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_a_fast_destination_and_a_slower_agent_stay_in_step(hoopy: SshHoopy) -> None:
    """A destination that writes faster than the agent reads (asyncssh's Python client,
    32 KiB packets, is slower than hoopy's side) is held back by the windows: what it
    has sent never runs more than a few windows ahead of what the agent has read.
    Without buffer limits matched to asyncssh's window accounting it ran 90 MiB ahead
    at 100 MiB read, and hoopy held it."""
    sent = [0]

    class Flood(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            block = b"z" * 65536
            with contextlib.suppress(OSError):
                while sent[0] < 400 << 20:
                    self.request.sendall(block)
                    sent[0] += len(block)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Flood)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = int(server.server_address[1])
    sub = _sub()
    ahead: list[int] = []

    async def main() -> None:
        async with _asyncssh(hoopy, sub, ("fwd-deny",)) as conn:  # 127.0.0.1:* allowed
            reader, writer = await conn.open_connection("127.0.0.1", port)
            got = 0
            while got < 150 << 20:
                got += len(await asyncio.wait_for(reader.read(1 << 20), 30))
                ahead.append(sent[0] - got)
            writer.close()

    try:
        asyncio.run(main())
    finally:
        server.shutdown()
        server.server_close()
    assert max(ahead) < 40 << 20, f"ran {max(ahead) >> 20} MiB ahead"


def test_exec_output_to_a_slower_agent_keeps_hoopy_flat(small_hoopy: SshHoopy) -> None:
    """The same for an exec channel's stdout (channel.Bridge): hoopy's memory stays
    flat (it grew by ~100 MiB per 100 MiB read before).  A gateway of its own that
    moved no big stream before, so its RSS has not grown already."""
    hoopy = small_hoopy
    before = _rss(hoopy.proc.pid)
    peak = before

    async def main() -> int:
        nonlocal peak
        async with _asyncssh(hoopy, _sub(), ("agents",)) as conn:
            proc = await conn.create_process("head -c 150000000 /dev/zero", encoding=None)
            got = 0
            while data := await asyncio.wait_for(proc.stdout.read(1 << 20), 30):
                got += len(data)
                peak = max(peak, _rss(hoopy.proc.pid))
            return got

    assert asyncio.run(main()) == 150000000
    assert peak - before < 48 << 20, f"hoopy grew by {(peak - before) >> 20} MiB"


def test_a_certificate_login_forwards_too(hoopy: SshHoopy, echo: Echo, tmp_path: Path) -> None:
    """hoopy's SSH CA issues certificates with permit-port-forwarding: `ssh -i KEY -W`
    works where policy allows, for the certificate's identity."""
    from tests.integration.test_ssh_cert_login import ssh_cert

    sub = _sub()
    key = tmp_path / "agent_key"
    token = hoopy.issuer.mint(sub, ["fwd"], extra={"pad": "x" * 1500})  # > 1 KiB
    r = ssh_cert(hoopy, token, key)
    assert r.returncode == 0, r.stderr
    argv = [
        "ssh", "-p", str(hoopy.ssh_port), "-F", "/dev/null",
        "-o", f"UserKnownHostsFile={hoopy.known_hosts()}",
        "-o", "StrictHostKeyChecking=yes", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "PreferredAuthentications=publickey", "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-i", str(key),
        "-W", f"127.0.0.1:{echo.port}", "web-1@127.0.0.1",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SSH_")}
    out = subprocess.run(argv, input=b"via cert\n", capture_output=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout == GREETING + b"via cert\n"
    _, events = _events(hoopy, sub)
    assert any(e.get("type") == "forward_open" and e["rule"] == "fwd-echo" for e in events)


def test_unix_socket_forwarding_stays_refused_and_recorded(hoopy: SshHoopy) -> None:
    """`ssh -L port:/path/to.sock` (direct-streamlocal) and `-R /path:…` stay refused,
    even for an identity that may forward TCP."""
    sub = _sub()

    async def main() -> None:
        async with _asyncssh(hoopy, sub, ("fwd-deny",)) as conn:
            with pytest.raises(asyncssh.ChannelOpenError) as e:
                await conn.open_unix_connection("/run/docker.sock")
            assert e.value.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
            with pytest.raises((asyncssh.Error, asyncssh.ChannelListenError)):
                await conn.forward_remote_path("/tmp/hoopy-r.sock", "/tmp/local.sock")

    asyncio.run(main())
    _, events = _events(hoopy, sub)
    refused = {(e["what"], e["target"]) for e in events if e.get("type") == "refused"}
    assert ("direct-streamlocal", "/run/docker.sock") in refused
    assert ("streamlocal-forward", "/tmp/hoopy-r.sock") in refused


def test_a_forward_ends_when_its_token_expires(hoopy: SshHoopy, echo: Echo) -> None:
    """An open `ssh -W` tunnel must not outlive the token it was opened with."""
    sub = _sub()
    argv = hoopy.ssh_argv("web-1", "-W", f"127.0.0.1:{echo.port}")
    env = hoopy.ssh_env(hoopy.issuer.mint(sub, ["fwd"], ttl=3))
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.read(len(GREETING)) == GREETING  # open while the token is valid
        proc.stdin.write(b"still valid\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"still valid\n"
        # stdin stays open: only hoopy can end this tunnel
        proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _, events = _events(hoopy, sub)
    assert any(e.get("type") == "expired" and "forward ends" in e.get("reason", "") for e in events)
    closed = next(e for e in events if e.get("type") == "forward_close")
    assert closed["bytes_to"] == len(b"still valid\n") and closed["closed_by"] == "expiry"


def test_refused_forward_requests_are_recorded_bounded(hoopy: SshHoopy) -> None:
    """`-R`, streamlocal opens and listens with hostile names (huge, control characters):
    refused, and what the recording keeps of each name is bounded and escaped, so a
    flood of refused requests cannot grow the recording by what each packet holds."""
    sub = _sub()
    huge = "/tmp/" + "x" * 60_000

    async def main() -> None:
        async with _asyncssh(hoopy, sub, ("fwd", "agents")) as conn:
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_unix_connection(huge)
            with pytest.raises((asyncssh.Error, asyncssh.ChannelListenError)):
                await conn.forward_remote_path(huge + "\x1b[2J", "/tmp/local.sock")
            with pytest.raises((asyncssh.Error, asyncssh.ChannelListenError)):
                await conn.forward_remote_port("h" * 60_000 + "\n", 0, "127.0.0.1", 1)
            for open_layer2 in (conn.open_tun, conn.open_tap):  # `ssh -w`: refused too
                with pytest.raises(asyncssh.ChannelOpenError):
                    await open_layer2(7)
            r = await conn.run("echo still here")
            assert r.stdout == "still here\n"

    asyncio.run(main())
    log, events = _events(hoopy, sub)
    refused = [e for e in events if e.get("type") == "refused"]
    assert {e["what"] for e in refused} == {
        "direct-streamlocal", "streamlocal-forward", "tcpip-forward", "tun", "tap"
    }  # fmt: skip
    for e in refused:
        assert len(e["target"]) < 400, (e["what"], len(e["target"]))
        assert "\x1b" not in e["target"] and "\n" not in e["target"]
    assert log.stat().st_size < 20_000
    assert _verify(hoopy, log.stem).returncode == 0
