"""Interactive PTY shells through `hoopy serve`, driven by the real `ssh -tt` against a
real sshd: only where a rule says `ssh: {shell: true}`; every line typed is checked
before the backend's shell sees it (marker files prove denied lines never ran), and the
session is recorded (asciicast `i`/`o` events, `hoopy verify`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from tests.integration.sshd import ADMIN_TOKEN, Sshd, SshHoopy, start_ssh_hoopy, stop

pytest_plugins = ["tests.integration.sshd"]

SHELL_POLICY = """\
mode: enforce
rules:
  - name: shells-for-operators
    effect: allow
    match: {groups: [shellers], connectors: ["web-1", "web-masked"], ssh: {shell: true}}
  - name: terminal-size
    effect: allow
    match: {groups: [shellers], ssh: {commands: ["stty size"]}}
  - name: no-shell-on-nokey
    effect: deny
    reason: no shells on that host
    match: {connectors: ["web-nokey"], ssh: {shell: true}}
"""


@pytest.fixture(scope="module")
def hoopy(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHoopy]:
    h = start_ssh_hoopy(tmp_path_factory.mktemp("hoopy-shell"), sshd, {"shell": SHELL_POLICY})
    try:
        yield h
    finally:
        stop(h.proc)


class Term:
    """The real `ssh -tt` with its stdin a pipe: keystrokes in, terminal bytes out."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.out = b""

    @classmethod
    async def open(
        cls, h: SshHoopy, groups: tuple[str, ...], connector: str = "web-1", *opts: str
    ) -> Term:
        proc = await asyncio.create_subprocess_exec(
            *h.ssh_argv(connector, "-tt", *opts),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=h.ssh_env(h.token("shell-agent", groups)),
        )
        return cls(proc)

    async def type(self, keys: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(keys)
        await self.proc.stdin.drain()

    async def expect(self, pattern: bytes, since: int = 0, timeout: float = 20) -> bytes:
        """Read until `pattern` (a regex) shows after offset `since`; the output so far."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.out[since:]):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in {self.out[-2000:]!r}")
            try:
                chunk = await asyncio.wait_for(self.proc.stdout.read(65536), left)
            except TimeoutError:
                continue
            if not chunk:
                raise AssertionError(f"ssh ended before {pattern!r}: {self.out[-2000:]!r}")
            self.out += chunk
        return self.out

    async def finish(self, timeout: float = 20) -> int:
        assert self.proc.stdout is not None
        self.out += await asyncio.wait_for(self.proc.stdout.read(), timeout)
        return await asyncio.wait_for(self.proc.wait(), timeout)


def _marker(sshd: Sshd, name: str) -> Path:
    path = sshd.folder / name
    path.write_text("still here\n")
    return path


def _recording(h: SshHoopy, needle: str) -> tuple[Path, list[Path]]:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for log in (h.folder / "recordings").rglob("*.jsonl"):
            text = log.read_text()
            if needle in text and '"type":"session_end"' in text:
                return log, sorted(log.parent.glob(f"{log.stem}-*.cast"))
        time.sleep(0.05)
    raise AssertionError(f"no finished recording holds {needle!r}")


async def test_allowed_lines_run_denied_lines_never_reach_the_backend(
    hoopy: SshHoopy, sshd: Sshd
) -> None:
    marker = _marker(sshd, "shell-marker")
    t = await Term.open(hoopy, ("agents", "shellers"))
    await t.type(b"echo hi'-'there\r")
    await t.expect(rb"hi-there")
    await t.type(f"rm -rf {marker}\r".encode())
    await t.expect(rb"hoopy: denied by rule 'no-rm': deleting files is not allowed\r\n")
    # obfuscated and edited spellings: each is read the way bash would read it
    for keys in (
        f"\\rm -rf {marker}\r",
        f"echo x; r''m -rf {marker}\r",
        f"echo $(rm -rf {marker})\r",
        f"rn\x7fm -rf {marker}\r",  # typed "rn", backspace, "m"
        f"echo ok\x15rm -rf {marker}\r",  # Ctrl-U threw "echo ok" away
        f"\x1b[200~rm -rf {marker}\x1b[201~\r",  # bracketed paste
    ):
        before = t.out.count(b"hoopy: denied")
        await t.type(keys.encode())
        await t.expect(rb"(?s)" + rb"hoopy: denied.*" * (before + 1))
    # Tab completion: what the backend would complete is unknown, so the line is opaque
    await t.type(b"echo ab\tc\r")
    await t.expect(rb"shell_unparseable.*opaque: true\} \(the line was typed with tab completion\)")
    await t.type(b"echo after'-'denials\r")
    await t.expect(rb"after-denials")
    await t.type(b"exit 0\r")
    assert await t.finish() == 0
    assert marker.read_text() == "still here\n"


async def test_shell_is_refused_without_a_shell_rule(hoopy: SshHoopy) -> None:
    t = await Term.open(hoopy, ("agents",))
    status = await t.finish()
    assert status == 126
    assert b"interactive shells need an allow rule with ssh: {shell: true}" in t.out


async def test_a_deny_rule_on_shells_wins(hoopy: SshHoopy) -> None:
    t = await Term.open(hoopy, ("agents", "shellers"), "web-nokey")
    assert await t.finish() == 126
    assert b"denied by rule 'no-shell-on-nokey': no shells on that host" in t.out


async def test_shell_without_a_pty_is_refused(hoopy: SshHoopy) -> None:
    proc = await asyncio.create_subprocess_exec(
        *hoopy.ssh_argv("web-1", "-T"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=hoopy.ssh_env(hoopy.token("shell-agent", ("agents", "shellers"))),
    )
    out, err = await asyncio.wait_for(proc.communicate(b"echo hi\n"), 30)
    assert proc.returncode == 126
    assert b"needs a terminal" in err
    assert b"hi" not in out


async def test_ctrl_c_and_the_recording(hoopy: SshHoopy, sshd: Sshd) -> None:
    t = await Term.open(hoopy, ("agents", "shellers"), "web-1", "-o", "SetEnv=LANG=C")
    await t.type(b"echo rec'-'start\r")
    await t.expect(rb"rec-start")
    # Ctrl-C abandons a half-typed line: none of it reaches the backend
    await t.type(b"rm -rf /tmp/never\x03")
    await t.type(b"echo rec'-'end\r")
    await t.expect(rb"rec-end")
    await t.type(b"exit\r")
    assert await t.finish() == 0
    log, casts = _recording(hoopy, "rec'-'end")
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e.get("type") for e in events]
    assert "channel" in kinds and "command" in kinds
    commands = [e for e in events if e.get("type") == "command"]
    texts = [e.get("text") for e in commands]
    assert any(str(x).startswith("(interactive shell") for x in texts)
    assert "echo rec'-'start" in texts and "echo rec'-'end" in texts
    assert not any("/tmp/never" in str(x) for x in texts)  # abandoned: never checked
    assert casts, "the shell channel has an asciicast"
    lines = casts[0].read_text().splitlines()
    assert json.loads(lines[0])["version"] == 2
    cast_events = [json.loads(line) for line in lines[1:]]
    typed = "".join(d for _, code, d in cast_events if code == "i")
    shown = "".join(d for _, code, d in cast_events if code == "o")
    assert "echo rec'-'start" in typed and "rm -rf /tmp/never" in typed
    assert "rec-start" in shown and "rec-end" in shown
    assert hoopy.cli("verify", log.stem).returncode == 0
    rep = hoopy.cli("replay", log.stem, "--speed", "0")
    assert rep.returncode == 0 and "rec-end" in rep.stdout, rep.stderr
    played = subprocess.run(
        ["asciinema", "cat", str(casts[0])], capture_output=True, text=True, timeout=60
    )
    assert played.returncode == 0 and "rec-end" in played.stdout, played.stderr


def _admin(h: SshHoopy, method: str, path: str) -> object:
    req = urllib.request.Request(
        f"http://{h.addresses['admin']}{path}",
        method=method,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


async def test_a_line_needing_approval_waits_then_runs_or_not(hoopy: SshHoopy, sshd: Sshd) -> None:
    approved, refused, cancelled = (sshd.folder / f"shell-{n}" for n in ("ok", "no", "cancel"))
    for p in (approved, refused, cancelled):
        p.unlink(missing_ok=True)
    t = await Term.open(hoopy, ("agents", "shellers"))
    for path, verdict in ((approved, "approve"), (refused, "deny")):
        start = len(t.out)
        await t.type(f"touch {path}\r".encode())
        await t.expect(rb"waiting for approval \S+ by", start)
        note = t.out[start:].decode()
        assert "by ops" in note, note
        approval_id = note.split("waiting for approval ")[1].split()[0]
        await asyncio.to_thread(_admin, hoopy, "POST", f"/api/approvals/{approval_id}/{verdict}")
        if verdict == "deny":
            await t.expect(rb"hoopy: .*" + re.escape(approval_id.encode()), start)
        await t.type(f"echo done'-'{verdict}\r".encode())
        await t.expect(f"done-{verdict}".encode(), start)
    # Ctrl-C while a line waits stops the wait; the line never runs
    start = len(t.out)
    await t.type(f"touch {cancelled}\r".encode())
    await t.expect(rb"waiting for approval", start)
    await t.type(b"\x03")
    await t.expect(rb"hoopy: Ctrl-C: stopped waiting for approval; the line was not run", start)
    await t.type(b"exit 0\r")
    assert await t.finish() == 0
    assert approved.exists() and not refused.exists() and not cancelled.exists()


async def _read_until(proc: asyncssh.SSHClientProcess[str], pattern: str, seen: list[str]) -> None:
    async def read() -> None:
        while not re.search(pattern, "".join(seen)):
            chunk = await proc.stdout.read(4096)
            assert chunk, f"the shell ended before {pattern!r}: {''.join(seen)!r}"
            seen.append(chunk)

    await asyncio.wait_for(read(), 20)


async def test_window_changes_reach_the_backend_and_the_recording(hoopy: SshHoopy) -> None:
    token = hoopy.token("shell-resizer", ("agents", "shellers"))
    async with asyncssh.connect(
        "127.0.0.1", hoopy.ssh_port, username="web-1", password=token,
        known_hosts=str(hoopy.known_hosts()), agent_path=None, config=[], client_keys=None,
    ) as conn:  # fmt: skip
        proc = await conn.create_process(term_type="xterm", term_size=(80, 24))
        seen: list[str] = []
        proc.stdin.write("stty size\r")
        await _read_until(proc, r"24 80", seen)
        proc.change_terminal_size(132, 43)
        proc.stdin.write("stty size\r")
        await _read_until(proc, r"43 132", seen)
        proc.stdin.write("exit 0\r")
        await asyncio.wait_for(proc.wait(), 20)
        assert proc.exit_status == 0
    _, casts = _recording(hoopy, "shell-resizer")
    events = [json.loads(line) for line in casts[0].read_text().splitlines()[1:]]
    assert [d for _, code, d in events if code == "r"] == ["132x43"]


async def test_shell_output_is_masked(hoopy: SshHoopy) -> None:
    """Mask rules (detectors) for the identity on the connector apply to the whole
    terminal stream: the command's output and the backend's echo of the line."""
    t = await Term.open(hoopy, ("agents", "shellers"), "web-masked")
    await t.type(b"echo mail alice@example.com card 4111 1111 1111 1111 end'-'mark\r")
    await t.expect(rb"end-mark")
    await t.type(b"exit 0\r")
    assert await t.finish() == 0
    assert b"alice@example.com" not in t.out and b"4111 1111 1111 1111" not in t.out
    log, casts = _recording(hoopy, "end'-'mark")
    shown = "".join(
        d
        for _, code, d in (json.loads(x) for x in casts[0].read_text().splitlines()[1:])
        if code == "o"
    )
    assert "end-mark" in shown and "alice@example.com" not in shown
    assert hoopy.cli("verify", log.stem).returncode == 0


async def test_a_line_right_after_ctrl_c_runs_as_checked(hoopy: SshHoopy) -> None:
    """Ctrl-C and the next line in one burst: the line must reach bash whole (without
    waiting for the new prompt, bash sometimes lost its first character and ran `cho`)."""
    t = await Term.open(hoopy, ("agents", "shellers"))
    # (a Ctrl-C while the login shell still starts would end it, as with plain ssh)
    await t.type(b"echo ready'-'now\r")
    await t.expect(rb"ready-now\r\n.*# ")
    for i in range(15):
        start = len(t.out)
        await t.type(f"half typed\x03echo round'-'{i}\r".encode())
        await t.expect(f"[\\r\\n]round-{i}\\r".encode(), start)
        assert b"command not found" not in t.out[start:], t.out[start:]
    await t.type(b"exit 0\r")
    assert await t.finish() == 0


async def test_keys_that_need_the_backends_state_are_refused(hoopy: SshHoopy, sshd: Sshd) -> None:
    """History recall, history expansion and key bindings would make bash run text
    hoopy never saw: such lines are opaque (refused), and nothing of them runs."""
    marker = _marker(sshd, "shell-marker-2")
    t = await Term.open(hoopy, ("agents", "shellers"))
    await t.type(b"echo hist'-'one\r")
    await t.expect(rb"hist-one")
    for keys in (
        b"\x1b[A\r",  # Up: recall the previous line
        b"\x10\r",  # Ctrl-P
        b"!!\r",
        b"!e\r",
        b"^one^two\r",
        b'bind \'"q":"rm -rf /tmp/x\\n"\'\r',
        b"\x12echo\r",  # Ctrl-R search
        b"echo \xff\xfe\r",  # not UTF-8
        b"echo a\x00b\r",  # NUL
        b"echo a\x1bxb\r",  # Meta-x
        b"echo \x1b[1;5Cx\r",  # Ctrl-Right
    ):
        start = len(t.out)
        await t.type(keys)
        await t.expect(rb"hoopy: denied: shell_\w+", start)
    assert t.out.count(b"hist-one") == 1  # (the echo of the typed line shows hist'-'one)
    # a quote left open joins the next physical line: one echo, nothing else runs
    await t.type(f"echo 'a\r; rm -rf {marker}'\r".encode())
    await t.expect(rf"; rm -rf {marker}".encode() + rb"\r\n")
    await t.type(b"echo last'-'line\r")
    await t.expect(rb"last-line")
    await t.type(b"exit 0\r")
    assert await t.finish() == 0
    assert marker.read_text() == "still here\n"


async def test_ctrl_d_on_an_empty_line_ends_the_shell(hoopy: SshHoopy) -> None:
    t = await Term.open(hoopy, ("agents", "shellers"))
    await t.type(b"echo bye'-'soon\r")
    await t.expect(rb"bye-soon\r\n.*# ")  # the prompt: ^D typed ahead of it is lost
    await t.type(b"\x04")
    assert await t.finish() == 0


async def test_a_shell_outliving_its_token_runs_nothing_more(hoopy: SshHoopy) -> None:
    exp = time.time() + 4
    proc = await asyncio.create_subprocess_exec(
        *hoopy.ssh_argv("web-1", "-tt"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=hoopy.ssh_env(hoopy.token("shell-short", ("agents", "shellers"), ttl=4)),
    )
    t = Term(proc)
    await t.type(b"echo still'-'valid\r")
    await t.expect(rb"still-valid")
    while time.time() < exp + 1:  # the token's expiry is what is tested
        await asyncio.sleep(0.2)
    start = len(t.out)
    with contextlib.suppress(ConnectionError):  # the shell may have ended at the expiry
        await t.type(b"echo too'-'late\r")
    assert await t.finish() == 255
    assert b"token expired" in t.out and b"too-late" not in t.out[start:]
