"""Exec through hoopy with the real OpenSSH client (and asyncssh) and a real sshd behind.

Denials are proven not to reach the backend by marker files the command would delete
or create; the backend's own credentials are proven never to reach the agent, hoopy's
log or the recordings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import asyncssh
import pytest

from tests.integration.sshd import ADMIN_TOKEN, Sshd, SshHoopy

pytest_plugins = ["tests.integration.sshd"]


def test_allowed_exec_relays_output_and_exit_status(ssh_hoopy: SshHoopy) -> None:
    r = ssh_hoopy.ssh("echo hello; echo oops >&2; exit 3")
    assert r.stdout == "hello\n"
    assert r.stderr.endswith("oops\n")
    assert r.returncode == 3


def test_stdin_and_eof_are_relayed(ssh_hoopy: SshHoopy) -> None:
    data = "".join(f"line {i}\n" for i in range(20000))
    r = ssh_hoopy.ssh("wc -l", input=data)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "20000"


def test_binary_output_is_relayed_byte_for_byte(ssh_hoopy: SshHoopy) -> None:
    r = ssh_hoopy.ssh("head -c 3000000 /dev/urandom | base64 -w0 | head -c 4000000", text=False)
    # base64 and head are allowed programs; the pipe is read as two simple commands
    assert r.returncode == 0, r.stderr
    assert len(r.stdout) == 4000000


def _marker(sshd: Sshd, name: str) -> Path:
    path = sshd.folder / name
    path.write_text("still here\n")
    return path


DENIED_SPELLINGS = [
    "rm -f {m}",
    "/bin/rm -f {m}",
    "/usr/bin/../bin/rm -f {m}",
    "r''m -f {m}",
    '"rm" -f {m}',
    "\\rm -f {m}",
    "echo hi; rm -f {m}",
    "true && rm -f {m}",
    "false || rm -f {m}",
    "echo $(rm -f {m})",
    "echo `rm -f {m}`",
    "RM=1 rm -f {m}",
    "env rm -f {m}",
    "sudo rm -f {m}",
    "sh -c 'rm -f {m}'",
    'bash -c "rm -f {m}"',
    "eval 'rm -f {m}'",
    "echo rm -f {m} | sh",
    "$(printf rm) -f {m}",
    "x=rm; $x -f {m}",
    "(rm -f {m})",
    "{{ rm -f {m}; }}",
    "echo ok & rm -f {m}",
    "xargs rm -f <<< {m}",
    "find {d} -name marker-x -delete",
    "python3 -c 'import os; os.remove(\"{m}\")'",
    "cat {m} | tee {m}.gone && rm {m}",
    "ls $'\\x72m' ; $'\\x72m' -f {m}",
]


# Spellings where rm is not literally the program: denied because no allow rule covers
# them (opaque, or a program outside the allow list), not by the rm rule itself.
NOT_NAMING_RM = {
    "echo rm -f {m} | sh",
    "$(printf rm) -f {m}",
    "x=rm; $x -f {m}",
    "find {d} -name marker-x -delete",
    "python3 -c 'import os; os.remove(\"{m}\")'",
}


@pytest.mark.parametrize("spelling", DENIED_SPELLINGS)
def test_denied_exec_exits_126_and_never_reaches_the_backend(
    ssh_hoopy: SshHoopy, sshd: Sshd, spelling: str
) -> None:
    marker = _marker(sshd, "marker-x")
    command = spelling.format(m=marker, d=sshd.folder)
    r = ssh_hoopy.ssh(command)
    assert r.returncode == 126, (command, r.stdout, r.stderr)
    assert "hoopy: denied" in r.stderr, r.stderr
    if spelling not in NOT_NAMING_RM:  # hoopy.shell sees the rm inside, whatever the spelling
        assert "denied by rule 'no-rm'" in r.stderr, (command, r.stderr)
    assert marker.exists(), f"{command!r} reached the backend"
    assert r.stdout == ""


def test_plain_denial_names_the_rule_and_reason(ssh_hoopy: SshHoopy, sshd: Sshd) -> None:
    marker = _marker(sshd, "marker-plain")
    r = ssh_hoopy.ssh(f"rm -f {marker}")
    assert r.returncode == 126
    assert "denied by rule 'no-rm': deleting files is not allowed" in r.stderr
    assert marker.exists()


@pytest.mark.parametrize(
    "command", ['echo "rm -rf /"', "grep shutdown /etc/hostname; true", "echo rm", "ls /tmp"]
)
def test_look_alikes_pass(ssh_hoopy: SshHoopy, command: str) -> None:
    r = ssh_hoopy.ssh(command)
    assert r.returncode == 0, (command, r.stderr)
    assert "hoopy:" not in r.stderr


def _connect(h: SshHoopy, connector: str = "web-1", token: str | None = None) -> object:
    known = asyncssh.import_known_hosts(h.known_hosts().read_text())
    return asyncssh.connect(
        "127.0.0.1",
        h.ssh_port,
        username=connector,
        password=token if token is not None else h.token(),
        known_hosts=known,
        client_keys=None,
        agent_path=None,
        config=None,
        preferred_auth="password",
    )


def test_connection_stays_usable_after_a_denial(ssh_hoopy: SshHoopy, sshd: Sshd) -> None:
    marker = _marker(sshd, "marker-usable")

    async def main() -> None:
        async with _connect(ssh_hoopy) as conn:  # type: ignore[attr-defined]
            denied = await conn.run(f"rm -f {marker}")
            assert denied.exit_status == 126
            assert "no-rm" in denied.stderr
            ok = await conn.run("echo still usable")
            assert ok.exit_status == 0 and ok.stdout == "still usable\n"
            many = await asyncio.gather(*(conn.run(f"echo {i}") for i in range(10)))
            assert [m.stdout for m in many] == [f"{i}\n" for i in range(10)]

    asyncio.run(main())
    assert marker.exists()


def _admin(h: SshHoopy, method: str, path: str) -> tuple[int, object]:
    req = urllib.request.Request(
        f"http://{h.addresses['admin']}{path}",
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, json.loads(r.read())


@pytest.mark.parametrize("verdict", ["approve", "deny"])
def test_approval_note_then_run_or_126(ssh_hoopy: SshHoopy, sshd: Sshd, verdict: str) -> None:
    marker = sshd.folder / f"approved-{verdict}"
    marker.unlink(missing_ok=True)

    async def main() -> None:
        async with _connect(ssh_hoopy) as conn:  # type: ignore[attr-defined]
            proc = await conn.create_process(f"touch {marker}")
            note = await asyncio.wait_for(proc.stderr.readline(), 20)
            assert "waiting for approval" in note and "by ops" in note, note
            approval_id = note.split("waiting for approval ")[1].split()[0]
            assert not marker.exists()
            await asyncio.to_thread(
                _admin, ssh_hoopy, "POST", f"/api/approvals/{approval_id}/{verdict}"
            )
            result = await asyncio.wait_for(proc.wait(), 20)
            if verdict == "approve":
                assert result.exit_status == 0, result.stderr
            else:
                assert result.exit_status == 126
                assert approval_id in result.stderr

    asyncio.run(main())
    assert marker.exists() == (verdict == "approve")


@pytest.mark.parametrize("connector", ["web-wrongkey", "web-nokey"])
def test_backend_host_key_must_match_known_hosts(
    ssh_hoopy: SshHoopy, sshd: Sshd, connector: str
) -> None:
    r = ssh_hoopy.ssh("echo ran", connector=connector)
    assert r.returncode == 255, r
    assert "ran" not in r.stdout
    assert "host key is not the one pinned" in r.stderr
    assert "never trusts on first use" in r.stderr


def test_bad_tokens_and_unknown_connectors_get_the_same_answer(ssh_hoopy: SshHoopy) -> None:
    good = ssh_hoopy.token()
    expired = ssh_hoopy.token(ttl=-120)
    outsider = ssh_hoopy.token("outsider", ("nobody",))
    answers = set()
    for connector, token in [
        ("web-1", "not-a-token"),
        ("web-1", good[:-4] + "AAAA"),
        ("web-1", expired),
        ("web-1", outsider),
        ("no-such-connector", good),
        ("app-db", good),
    ]:
        r = ssh_hoopy.ssh("echo in", connector=connector, token=token)
        assert r.returncode == 255 and r.stdout == "", (connector, r)
        answers.add(r.stderr.strip().splitlines()[-1].split(":", 1)[-1].split("@")[0])
        answers = {a.replace(connector, "C") for a in answers}
    assert len(answers) == 1, answers


def test_keyboard_interactive_carries_the_token(ssh_hoopy: SshHoopy) -> None:
    r = ssh_hoopy.ssh("echo kbd", "-o", "PreferredAuthentications=keyboard-interactive")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "kbd\n"


def test_garbage_on_the_port_does_not_disturb_another_session(ssh_hoopy: SshHoopy) -> None:
    async def main() -> None:
        async with _connect(ssh_hoopy) as conn:  # type: ignore[attr-defined]
            proc = await conn.create_process("cat")
            for payload in (
                b"\x00" * 70000,
                b"SSH-2.0-evil\r\n" + b"\xff" * 5000,
                b"GET / HTTP/1.1\r\n\r\n",
                b"SSH-2.0-x\r\n\x00\x00\x00\x0c\x0a\x14" + b"A" * 30,
            ):
                with socket.create_connection(("127.0.0.1", ssh_hoopy.ssh_port), 5) as s:
                    s.sendall(payload)
                    s.settimeout(5)
                    try:
                        while s.recv(65536):
                            pass
                    except (TimeoutError, ConnectionError):
                        pass
                proc.stdin.write("still alive\n")
                assert await asyncio.wait_for(proc.stdout.readline(), 10) == "still alive\n"
            proc.stdin.write_eof()
            assert (await proc.wait()).exit_status == 0

    asyncio.run(main())


def test_forwarding_is_refused_and_recorded(ssh_hoopy: SshHoopy, sshd: Sshd) -> None:
    async def main() -> None:
        async with _connect(ssh_hoopy) as conn:  # type: ignore[attr-defined]
            with pytest.raises(asyncssh.ChannelOpenError):
                await conn.open_connection("127.0.0.1", sshd.port)
            with pytest.raises((asyncssh.Error, asyncssh.ChannelListenError)):
                await conn.forward_remote_port("127.0.0.1", 0, "127.0.0.1", sshd.port)
            r = await conn.run("echo after")
            assert r.stdout == "after\n"

    asyncio.run(main())
    r = ssh_hoopy.ssh("echo agent=${SSH_AUTH_SOCK:-none}", "-A")
    assert r.stdout == "agent=none\n"


def test_env_is_filtered_by_the_allow_list(ssh_hoopy: SshHoopy) -> None:
    async def main() -> None:
        async with _connect(ssh_hoopy) as conn:  # type: ignore[attr-defined]
            r = await conn.run(
                "env",
                env={"LANG": "C.UTF-8", "LC_TIME": "C", "HOOPY_SECRET": "x", "LD_PRELOAD": "/x.so"},
            )
            env = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
            assert env.get("LANG") == "C.UTF-8" and env.get("LC_TIME") == "C"
            assert "HOOPY_SECRET" not in env and "LD_PRELOAD" not in env

    asyncio.run(main())


def test_exit_signal_and_signals_are_relayed(ssh_hoopy: SshHoopy) -> None:
    """The exit signal comes back as a signal; a signal the agent sends is passed on
    (this sshd, without privilege separation, then ignores it: seen in the recording)."""

    async def main() -> None:
        async with _connect(ssh_hoopy) as conn:  # type: ignore[attr-defined]
            r = await conn.run("kill -TERM $$")
            assert r.exit_signal is not None and r.exit_signal[0] == "TERM", r
            proc = await conn.create_process("echo started; sleep 30")
            assert await proc.stdout.readline() == "started\n"
            proc.send_signal("USR1")
            proc.close()

    asyncio.run(main())

    def recorded() -> bool:  # the event reaches the disk at the next flush or the end
        logs = (ssh_hoopy.folder / "recordings").rglob("*.jsonl")
        return any('"type":"signal"' in p.read_text() and '"USR1"' in p.read_text() for p in logs)

    deadline = time.monotonic() + 20
    while not recorded():
        assert time.monotonic() < deadline, "the signal was never recorded"
        time.sleep(0.05)  # polling the recordings on disk, bounded


def test_pty_exec_and_window_change(ssh_hoopy: SshHoopy) -> None:
    async def main() -> None:
        async with _connect(ssh_hoopy) as conn:  # type: ignore[attr-defined]
            r = await conn.run("test -t 1 && echo tty", term_type="xterm", term_size=(100, 30))
            assert "tty" in r.stdout

    asyncio.run(main())


def test_shell_and_sftp_are_refused_without_a_policy(ssh_hoopy: SshHoopy) -> None:
    async def main() -> None:
        async with _connect(ssh_hoopy) as conn:  # type: ignore[attr-defined]
            r = await conn.run(term_type="xterm")  # interactive shell
            assert r.exit_status == 126 and "interactive shells" in r.stderr
            with pytest.raises((asyncssh.Error, OSError)):
                async with conn.start_sftp_client() as sftp:
                    await sftp.listdir("/")

    asyncio.run(main())


def test_concurrent_sessions(ssh_hoopy: SshHoopy) -> None:
    async def one(i: int) -> str:
        async with _connect(ssh_hoopy, token=ssh_hoopy.token(f"agent-{i}")) as conn:  # type: ignore[attr-defined]
            return (await conn.run(f"echo {i}")).stdout

    async def main() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(20)))

    assert asyncio.run(main()) == [f"{i}\n" for i in range(20)]


def test_slow_agent_does_not_make_hoopy_buffer(ssh_hoopy: SshHoopy) -> None:
    """The agent stops reading; the backend produces 300 MB: hoopy's memory stays flat."""
    pid = ssh_hoopy.proc.pid

    def rss() -> int:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    async def main() -> None:
        async with _connect(ssh_hoopy) as conn:  # type: ignore[attr-defined]
            before = rss()
            chan, _session = await conn.create_session(
                asyncssh.SSHClientSession, "head -c 300000000 /dev/zero", encoding=None
            )
            chan.pause_reading()
            peak = before
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                peak = max(peak, rss())
                await asyncio.sleep(0.1)  # sampling, not synchronisation
            assert peak - before < 40 * 1024 * 1024, (before, peak)
            chan.close()

    asyncio.run(main())


def test_recordings_verify_and_hold_no_backend_secret(ssh_hoopy: SshHoopy, sshd: Sshd) -> None:
    r = ssh_hoopy.ssh("echo recorded-output-xyz")
    assert r.returncode == 0
    key_body = "".join(sshd.client_key.read_text().splitlines()[1:-1])
    assert key_body
    chunks = [key_body[i : i + 40] for i in range(0, len(key_body) - 40, 40)]
    rec = ssh_hoopy.folder / "recordings"
    blobs = [p.read_text(errors="replace") for p in rec.rglob("*") if p.is_file()]
    blobs.append(ssh_hoopy.log_text())
    assert any("recorded-output-xyz" in b for b in blobs)
    for blob in blobs:
        assert not any(c in blob for c in chunks)
    v = ssh_hoopy.cli("verify")
    assert v.returncode == 0, v.stdout + v.stderr
    listing = ssh_hoopy.cli("sessions", "list")
    assert "ssh" in listing.stdout and "web-1" in listing.stdout


def test_a_token_that_expires_ends_what_the_connection_may_run(ssh_hoopy: SshHoopy) -> None:
    """The connection outlives its token: later execs are refused (recorded), not run."""
    token = ssh_hoopy.token(ttl=2)

    async def main() -> None:
        async with _connect(ssh_hoopy, token=token) as conn:  # type: ignore[attr-defined]
            assert (await conn.run("echo fresh")).stdout == "fresh\n"
            await asyncio.sleep(2.5)  # the token's lifetime passing, not synchronisation
            late = await conn.run("echo stale")
            assert late.exit_status == 255 and late.stdout == ""
            assert "token expired" in late.stderr

    asyncio.run(main())


@pytest.mark.parametrize(
    "command",
    [
        "",  # an empty exec
        "echo " + "A" * 70000,  # past the shell reader's bounds
        "echo hi\x00; rm -rf /",  # NUL inside the line
        "echo '\u202e' ; rm -f /nonexistent",  # bidi override before a denied command
        "echo $'\\x00' && rm x",
    ],
)
def test_hostile_exec_lines_are_refused_and_the_connection_survives(
    ssh_hoopy: SshHoopy, command: str
) -> None:
    async def main() -> None:
        async with _connect(ssh_hoopy) as conn:  # type: ignore[attr-defined]
            r = await conn.run(command)
            assert r.exit_status == 126, (command[:40], r.exit_status, r.stderr)
            assert (await conn.run("echo ok")).stdout == "ok\n"

    asyncio.run(main())


def test_approval_after_the_agent_left_runs_nothing(ssh_hoopy: SshHoopy, sshd: Sshd) -> None:
    marker = sshd.folder / "approved-too-late"
    marker.unlink(missing_ok=True)

    async def main() -> str:
        conn = await _connect(ssh_hoopy)  # type: ignore[misc]
        proc = await conn.create_process(f"touch {marker}")
        note = await asyncio.wait_for(proc.stderr.readline(), 20)
        conn.abort()
        return note.split("waiting for approval ")[1].split()[0]

    approval_id = asyncio.run(main())
    deadline = time.monotonic() + 15
    while True:  # the gateway notices the agent left and withdraws the request (bounded)
        _, pending = _admin(ssh_hoopy, "GET", "/api/approvals?state=pending")
        if approval_id not in json.dumps(pending):
            break
        assert time.monotonic() < deadline, "the approval stayed pending after the agent left"
        time.sleep(0.05)
    with contextlib.suppress(urllib.error.HTTPError):  # no longer pending: refused
        _admin(ssh_hoopy, "POST", f"/api/approvals/{approval_id}/approve")
    r = ssh_hoopy.ssh("echo later")  # a full round trip through the gateway afterwards
    assert r.returncode == 0
    assert not marker.exists()


def test_concurrent_approvals_on_one_connection_stay_apart(ssh_hoopy: SshHoopy, sshd: Sshd) -> None:
    a, b = sshd.folder / "parallel-a", sshd.folder / "parallel-b"
    for m in (a, b):
        m.unlink(missing_ok=True)

    async def main() -> None:
        async with _connect(ssh_hoopy) as conn:  # type: ignore[attr-defined]
            pa = await conn.create_process(f"touch {a}")
            pb = await conn.create_process(f"touch {b}")
            note_a = await asyncio.wait_for(pa.stderr.readline(), 20)
            note_b = await asyncio.wait_for(pb.stderr.readline(), 20)
            id_a = note_a.split("waiting for approval ")[1].split()[0]
            id_b = note_b.split("waiting for approval ")[1].split()[0]
            assert id_a != id_b
            await asyncio.to_thread(_admin, ssh_hoopy, "POST", f"/api/approvals/{id_b}/approve")
            rb = await asyncio.wait_for(pb.wait(), 20)
            assert rb.exit_status == 0 and b.exists() and not a.exists()
            await asyncio.to_thread(_admin, ssh_hoopy, "POST", f"/api/approvals/{id_a}/deny")
            ra = await asyncio.wait_for(pa.wait(), 20)
            assert ra.exit_status == 126 and id_a in ra.stderr

    asyncio.run(main())
    assert not a.exists()


@pytest.mark.parametrize(
    "command",
    [
        "echo ok\nrm -f {m}",
        "echo ok\r\nrm -f {m}",
        "echo ok;\n\n  rm -f {m}",
        "echo 'x\n' ; rm -f {m}",
    ],
)
def test_multi_line_exec_is_read_whole(ssh_hoopy: SshHoopy, sshd: Sshd, command: str) -> None:
    marker = _marker(sshd, "marker-lines")
    r = ssh_hoopy.ssh(command.format(m=marker))
    assert r.returncode == 126, r
    assert marker.exists()


def test_each_agent_connection_has_its_own_backend_connection(
    ssh_hoopy: SshHoopy, sshd: Sshd
) -> None:
    """Never shared: two identities (or two connections of one) are two backend logins."""

    def logins() -> int:
        return sum("Accepted publickey for root" in line for line in list(sshd.log))

    async def main() -> None:
        before = logins()
        a = await _connect(ssh_hoopy, token=ssh_hoopy.token("agent-a"))  # type: ignore[misc]
        b = await _connect(ssh_hoopy, token=ssh_hoopy.token("agent-b"))  # type: ignore[misc]
        ra, rb = await asyncio.gather(a.run("id -un"), b.run("id -un"))
        assert ra.stdout == rb.stdout == "root\n"
        deadline = time.monotonic() + 10
        while logins() < before + 2:  # sshd's log line may trail the command (bounded)
            assert time.monotonic() < deadline, sshd.log[-5:]
            await asyncio.sleep(0.05)
        a.close()
        b.close()

    asyncio.run(main())


def test_a_running_command_ends_when_its_token_expires(ssh_hoopy: SshHoopy) -> None:
    """`ssh gw cat` with stdin held open would run forever: it must not outlive the token
    it was started with (the next command would be refused; this one ends, exit 255)."""
    sub = f"exp-{uuid.uuid4().hex[:10]}"
    argv = [*ssh_hoopy.ssh_argv("web-1"), "cat"]
    env = ssh_hoopy.ssh_env(ssh_hoopy.issuer.mint(sub, ["agents"], ttl=3))
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        proc.stdin.write(b"while valid\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"while valid\n"  # running under a valid token
        code = proc.wait(timeout=20)  # stdin stays open: only hoopy can end it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    assert code == 255 and "token expired" in err, (code, err)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        logs = [p.read_text() for p in (ssh_hoopy.folder / "recordings").rglob("*.jsonl")]
        text = next((t for t in logs if sub in t and '"type":"session_end"' in t), None)
        if text is not None:
            break
        time.sleep(0.05)
    assert text is not None
    events = [json.loads(line) for line in text.splitlines()]
    assert any(e["type"] == "expired" and "command ends" in e["reason"] for e in events)
