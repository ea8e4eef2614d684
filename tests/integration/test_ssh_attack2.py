"""A second attack review of the SSH path, with the real OpenSSH client (or, for requests
OpenSSH never sends, a hand-made asyncssh client) against hoopy and a real sshd: each
test reproduces an attack that got a denied command run on the backend (a marker file
deleted) before its fix; the classifier's side is in tests/test_shell_attack2.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from asyncssh.packet import String, UInt32

from tests.integration.sshd import Sshd, SshHoopy, start_ssh_hoopy, stop
from tests.integration.test_ssh_shell import Term

pytest_plugins = ["tests.integration.sshd"]

# A deny-list for PTY shells: every line hoopy can read runs, but not rm (the no-rm rule
# of sshd.SSH_POLICY).
DENY_LIST = """\
mode: enforce
rules:
  - name: shells
    effect: allow
    match: {groups: [shellers], ssh: {shell: true}}
  - name: anything-visible
    effect: allow
    match: {groups: [shellers], ssh: {commands: ["*"]}}
  - name: everything-but-rm
    effect: allow
    match: {groups: [everything]}
"""


@pytest.fixture(scope="module")
def deny_list(sshd: Sshd, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshHoopy]:
    h = start_ssh_hoopy(tmp_path_factory.mktemp("hoopy-attack2"), sshd, {"dl": DENY_LIST})
    try:
        yield h
    finally:
        stop(h.proc)


def _marker(sshd: Sshd, name: str) -> Path:
    path = sshd.folder / name
    path.write_text("still here\n")
    return path


class PtyTerm:
    """The real `ssh -tt` on a terminal of its own whose modes the test sets first
    (`stty` on the agent's side): OpenSSH sends them in its pty-req."""

    def __init__(self, h: SshHoopy, groups: tuple[str, ...], modes: dict[int, object]) -> None:
        self.master, slave = pty.openpty()
        attrs = termios.tcgetattr(slave)
        for index, value in modes.items():
            if index >= 100:  # a special character: attrs[6][index - 100]
                attrs[6][index - 100] = value
            else:  # (flag word, bits to set)
                word, bits = value  # type: ignore[misc]
                attrs[word] |= bits
        termios.tcsetattr(slave, termios.TCSANOW, attrs)
        self.proc = subprocess.Popen(
            [*h.ssh_argv("web-1", "-tt")],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=h.ssh_env(h.token("shell-agent", groups)),
            start_new_session=True,
        )
        os.close(slave)
        self.out = b""

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, pattern: bytes, since: int = 0, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.out[since:]):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {pattern!r} in {self.out[-2000:]!r}")
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"ssh ended before {pattern!r}: {self.out[-2000:]!r}")
            self.out += chunk

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(10)
        os.close(self.master)


# The agent's terminal modes, as `stty` would set them on its side.
KILL_Q = {100 + termios.VKILL: b"Q"}  # readline binds the tty's kill char: unix-line-discard
WERASE_Q = {100 + termios.VWERASE: b"Q"}  # … its word-erase char: unix-word-rubout
ERASE_Q = {100 + termios.VERASE: b"Q"}  # … its erase char: backward-delete-char
UPPER_TO_LOWER = {0: (0, termios.IUCLC)}  # the tty lowers every letter typed


@pytest.mark.parametrize(
    "modes, line",
    [
        (KILL_Q, "echo Q rm -f {m}"),  # hoopy: echo; bash: ` rm -f …` after the kill
        (WERASE_Q, "echo ''Q rm -f {m}"),
        (ERASE_Q, "echo QQQQQrm -f {m}"),
        (UPPER_TO_LOWER, "$'\\X72M' -f {m}"),  # hoopy: a program `\X72M`; bash: rm
    ],
    ids=["kill-char", "werase-char", "erase-char", "iuclc"],
)
def test_the_agents_terminal_modes_cannot_edit_a_checked_line(
    deny_list: SshHoopy, sshd: Sshd, modes: dict[int, object], line: str
) -> None:
    """The backend's readline takes its erase, kill and word-erase keys from the
    terminal's modes, and the tty lowers letters under IUCLC: modes the agent picks
    (its pty-req) would turn the line hoopy checked into another one."""
    marker = _marker(sshd, "marker-modes")
    t = PtyTerm(deny_list, ("agents", "shellers"), modes)
    try:
        t.type(b"echo be''gin\r")
        t.expect(rb"[\r\n]begin\r\n")
        t.type(line.format(m=marker).encode() + b"\r")
        t.type(b"echo do''ne\r")
        t.expect(rb"[\r\n]done\r\n")
    finally:
        t.close()
    assert marker.exists(), f"{line!r} ran rm on the backend: {t.out[-600:]!r}"


async def _agent(h: SshHoopy, groups: tuple[str, ...] = ("agents", "shellers")) -> Any:
    return await asyncssh.connect(
        "127.0.0.1",
        h.ssh_port,
        username="web-1",
        password=h.token("raw-agent", groups),
        known_hosts=asyncssh.import_known_hosts(h.known_hosts().read_text()),
        client_keys=None,
        agent_path=None,
        config=None,
        preferred_auth="password",
    )


class Collect(asyncssh.SSHClientSession[bytes]):
    """A client channel's output, and when it closed."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes, datatype: Any) -> None:
        (self.err if datatype == asyncssh.EXTENDED_DATA_STDERR else self.out).extend(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def test_a_pty_requested_after_exec_is_refused(deny_list: SshHoopy) -> None:
    """asyncssh's server takes a pty-req after the exec request (OpenSSH's client never
    sends one, a hand-made client can): the command was read as run without a terminal
    (where a pager's `!` reads nothing), so it must not get one afterwards."""
    async with await _agent(deny_list) as conn:
        chan, session = await conn.create_session(Collect, "sleep 0.5; tty", encoding=None)
        pty_req = (String("xterm"), UInt32(80), UInt32(24), UInt32(0), UInt32(0), String(b"\0"))
        got = await chan._make_request(b"pty-req", *pty_req)
        await asyncio.wait_for(session.closed, 20)
    assert got is False, "hoopy accepted a pty-req after the exec request"
    assert b"not a tty" in session.out and b"/dev/pts" not in session.out, bytes(session.out)


def _denied(h: SshHoopy, sshd: Sshd, spelling: str, token: str) -> None:
    marker = _marker(sshd, "marker-redirect")
    command = spelling.format(m=marker)
    r = h.ssh(command, token=token)
    assert r.returncode == 126, (command, r.stdout, r.stderr)
    assert "hoopy: denied" in r.stderr, r.stderr
    assert marker.exists(), f"{command!r} reached the backend"


def test_a_closed_descriptor_hides_no_program(ssh_hoopy: SshHoopy, sshd: Sshd) -> None:
    """`>&-` takes no file, but tree-sitter took the next word for one: with the
    allow-list of sshd.SSH_POLICY (echo and env allowed, rm denied) hoopy saw `echo`
    and `env`; bash ran bash, which read `rm` from the pipe."""
    _denied(ssh_hoopy, sshd, "echo rm -f {m} | env 2>&- bash", ssh_hoopy.token())


@pytest.mark.parametrize(
    "spelling",
    [
        "echo {m} | xargs 2>&- rm",  # hoopy saw echo and xargs (running echo)
        "exec {{fd}}>/dev/null rm -f {m}",  # hoopy saw the programs `exec` and `{{fd}}`
    ],
)
def test_a_closed_or_named_descriptor_hides_no_program_from_a_deny_list(
    deny_list: SshHoopy, sshd: Sshd, spelling: str
) -> None:
    _denied(deny_list, sshd, spelling, deny_list.token("raw-agent", ("agents", "shellers")))


async def test_exec_cannot_give_the_shell_input_hoopy_never_checks(
    deny_list: SshHoopy, sshd: Sshd
) -> None:
    """`exec <<< 'rm …'` (or `exec < file`) in an interactive shell: bash then reads its
    next lines from there instead of the terminal whose lines hoopy checks."""
    marker = _marker(sshd, "marker-exec-stdin")
    t = await Term.open(deny_list, ("agents", "shellers"))
    try:
        await t.type(f"exec <<< 'rm -f {marker}'\r".encode())
        await t.type(b"echo do''ne\r")
        await t.expect(rb"[\r\n]done\r\n|ssh ended")
        assert b"hoopy: denied: shell_code" in t.out, t.out[-600:]
        await t.type(b"exit 0\r")
        await t.finish()
    finally:
        if t.proc.returncode is None:
            t.proc.kill()
            await t.proc.wait()
    assert marker.exists(), f"bash read rm from exec's here-string: {t.out[-600:]!r}"


async def test_a_command_allowed_without_a_terminal_is_checked_again_with_one(
    deny_list: SshHoopy, sshd: Sshd, tmp_path: Path
) -> None:
    """One connection (OpenSSH's ControlMaster), two channels: `less f` runs without a
    terminal (it only copies the file), then `ssh -t … 'less f'` on the same connection,
    where less's `!` runs what is typed.  The session cached the first decision by the
    command's fingerprint, which did not say whether a terminal made it opaque."""
    marker = _marker(sshd, "marker-cached")
    token = deny_list.token("raw-agent", ("agents", "shellers"))
    env = deny_list.ssh_env(token)
    ctl = str(tmp_path / "ctl")
    master = subprocess.Popen(
        deny_list.ssh_argv("web-1", "-M", "-S", ctl, "-N"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        check = [*deny_list.ssh_argv("web-1", "-S", ctl, "-O", "check")]
        deadline = time.monotonic() + 20
        while subprocess.run(check, env=env, capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and master.poll() is None, "no ControlMaster"
            select.select([], [], [], 0.05)
        r = subprocess.run(
            [*deny_list.ssh_argv("web-1", "-S", ctl), "less /etc/hostname"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, r.stderr
        proc = await asyncio.create_subprocess_exec(
            *deny_list.ssh_argv("web-1", "-S", ctl, "-tt"),
            "less /etc/hostname",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        t = Term(proc)
        try:
            await t.type(f"!rm -f {marker}\r".encode())
            await t.type(b"q")
            status = await t.finish()
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert status == 126 and b"denied: shell_code" in t.out, (status, t.out[-600:])
    finally:
        master.terminate()
        master.wait(10)
    assert marker.exists(), "less on a terminal ran the typed `!rm`"


def test_a_command_between_redirections_is_seen(deny_list: SshHoopy, sshd: Sshd) -> None:
    """`>/dev/null 2>&1 rm -f m >/dev/null`: tree-sitter read only redirections (the
    words went into `2>&1`'s file), so hoopy saw no command at all: nothing for the
    no-rm rule to match."""
    token = deny_list.token("raw-agent", ("agents", "shellers"))
    _denied(deny_list, sshd, ">/dev/null 2>&1 rm -f {m} >/dev/null", token)


def test_a_hash_after_an_escaped_blank_is_no_comment(ssh_hoopy: SshHoopy, sshd: Sshd) -> None:
    """`echo \\ #$(rm -f m)`: tree-sitter took `#…` for a comment; to bash the escaped
    blank and the # are one word, whose command substitution runs rm.  With the
    allow-list of sshd.SSH_POLICY hoopy saw only `echo` (allowed)."""
    _denied(ssh_hoopy, sshd, "echo \\ #$(rm -f {m})", ssh_hoopy.token())


async def test_comments_stay_comments_in_a_shell(deny_list: SshHoopy, sshd: Sshd) -> None:
    """With interactive_comments off, an interactive bash reads `#$(rm …)` as a word
    (its command substitution runs); hoopy reads lines as bash does by default."""
    marker = _marker(sshd, "marker-comments")
    t = await Term.open(deny_list, ("agents", "shellers"))
    try:
        await t.type(b"shopt -u interactive_comments\r")
        await t.expect(rb"hoopy: denied: shell_alias")
        await t.type(f"echo #$(rm -f {marker})\r".encode())
        await t.type(b"echo do''ne\r")
        await t.expect(rb"[\r\n]done\r\n")
        await t.type(b"exit 0\r")
        assert await t.finish() == 0
    finally:
        if t.proc.returncode is None:
            t.proc.kill()
            await t.proc.wait()
    assert marker.exists(), f"bash ran the 'comment': {t.out[-600:]!r}"


async def test_an_empty_exec_command_opens_no_shell_on_the_backend(
    deny_list: SshHoopy, sshd: Sshd
) -> None:
    """An exec request with an empty command (a hand-made client; OpenSSH's sends a
    shell request instead) read as a line that runs nothing, allowed by a rule without
    an `ssh` key; asyncssh's client turns an empty command into a *shell* request, and
    the backend's login shell then ran the agent's stdin (`rm …`) unchecked."""
    marker = _marker(sshd, "marker-empty-exec")
    async with await _agent(deny_list, ("everything",)) as conn:
        chan = asyncssh.SSHClientChannel(
            conn, asyncio.get_running_loop(), "strict", None, "", 65536, 32768
        )  # type: ignore[arg-type]
        await chan._open(b"session")
        session = Collect()
        chan._session = session
        session.connection_made(chan)
        ok = await chan._make_request(b"exec", String(""))
        chan.resume_reading()  # (asyncssh's create() does this once the request is answered)
        with contextlib.suppress(BrokenPipeError):  # hoopy may have closed it already
            chan.write(f"rm -f {marker}\n".encode())
            chan.write_eof()
        await asyncio.wait_for(session.closed, 20)
    assert marker.exists(), f"the backend ran stdin as a shell (exec accepted: {ok})"
    assert b"empty command" in session.err, bytes(session.err)
