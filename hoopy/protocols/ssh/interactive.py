"""Interactive shells (PTY) and the SFTP subsystem, plugged into the listener's `Hooks`.

Theory of operation
-------------------
Shell: opening one is itself a policy Command (kind `shell_session`, allowed only by a
rule with `ssh: {shell: true}`, denied by any deny rule that says so, or waiting for an
approval rule's approvers).  Then a shell starts on the backend with the agent's PTY
(type, size, modes) and the agent's keystrokes go to a `ShellPump` instead of the
backend: the sans-I/O `LineEditor` rebuilds each line, and every complete line is a
Command (`line_command`) checked through `session.check`.  Only an allowed line's
reconstructed text (`LineReady.wire`) reaches the backend; a denied one is answered on
the agent's terminal and nothing is sent.  Ctrl-C, Ctrl-D (empty line), Ctrl-Z and
Ctrl-\\ go through as they are (`Forward`); Ctrl-C also stops an approval wait.
Backend output goes back through the Bridge's relay (masked with every mask rule that
may apply to this identity on this connector: a stream has no per-line decision) and
into the channel's asciicast, with the raw keystrokes as `i` events.

SFTP: the subsystem opens only when some allow rule names `ssh.sftp` operations for
this identity and connector (`policy.may_sftp`).  asyncssh's SFTP server then runs on
the agent's channel through a stream adapter (the Bridge delegates the channel's
input to an `SSHStreamSession`), serving an `SftpBridge` whose every operation goes
through `session.check` and acts on an SFTP client session on this connection's own
backend connection.  Reads where a mask rule (detectors) applies are refused: file
contents are not a text stream hoopy can mask without changing the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

import asyncssh
from asyncssh.sftp import MIN_SFTP_VERSION, run_sftp_server
from asyncssh.stream import SSHReader, SSHServerStreamSession, SSHWriter

from hoopy.errors import AuthFailed, CommandDenied, HoopyError, QueryCanceled
from hoopy.masking import ValueMasker
from hoopy.policy import SHELL_SESSION, Command, identity_masks, may_sftp
from hoopy.protocols.ssh.channel import NOTIFY, Bridge
from hoopy.protocols.ssh.lineedit import Abandoned, Forward, LineEditor, LineReady, line_command
from hoopy.protocols.ssh.sftp import SftpBridge
from hoopy.protocols.ssh.streammask import StreamMasker

log = logging.getLogger("hoopy.ssh")

QUEUED = 64  # chunks of agent input waiting for a check before reading pauses
SIGNAL_KEYS = frozenset({b"\x03", b"\x1a", b"\x1c"})  # Ctrl-C, Ctrl-Z, Ctrl-\\
SETTLE_STEP = 0.02  # s: how often the backend's output is looked at after a signal key
SETTLE_MAX = 1.0  # s: the longest a line waits for the backend to answer a signal key
SIGNAL_PAD = b" " * 16  # blanks before the first line after a signal key (see _handle)


# ---- interactive shells --------------------------------------------------------------


async def run_shell(bridge: Bridge) -> None:
    """Hooks.shell: a PTY shell on the backend with every typed line checked."""
    conn = bridge.conn
    session = conn.session
    if bridge.pty is None:
        session.record("refused", channel=bridge.number, what="shell", reason="no pty")
        raise CommandDenied(
            "an interactive shell through hoopy needs a terminal (ssh -t); "
            "to run a command: ssh <connector>@<gateway> 'command'"
        )
    term, size = bridge.pty[0] or "xterm", bridge.pty[1]
    opening = Command(
        "ssh",
        session.connector,
        f"(interactive shell, {term} {size[0]}x{size[1]})",
        kinds=frozenset({SHELL_SESSION}),
        fingerprint="ssh:shell_session",
    )
    token = NOTIFY.set(bridge._notify)
    try:
        await session.check(opening)
    except CommandDenied as e:
        if e.rule:
            raise
        raise CommandDenied(
            f"{e.message}: interactive shells need an allow rule with ssh: {{shell: true}}"
        ) from None
    finally:
        NOTIFY.reset(token)
    backend = await conn.backend()
    masks = identity_masks(session.policies, session.identity, session.connector)
    if masks.detectors:
        masker = ValueMasker(masks.detectors, masks.detector_style, conn.listener.gw.mask_key)
        bridge.maskers = {False: StreamMasker(masker), True: StreamMasker(masker)}
    pump = ShellPump(bridge)
    bridge.delegate_to(pump)  # keystrokes typed meanwhile wait in the pump
    await bridge._open_backend(backend, None)
    await pump.run()


class ShellPump(asyncssh.SSHServerSession[bytes]):
    """The agent's keystrokes → LineEditor → checked lines → the backend's shell.

    Input is queued by the channel callbacks and worked off by `run()` (the channel's
    task), one line's check at a time; reading from the agent pauses while more than
    QUEUED chunks wait, so input is bounded by the channel window."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.editor = LineEditor()
        self.queue: deque[bytes | None] = deque()  # None: the agent's EOF
        self.wake = asyncio.Event()
        self.checking = False
        self.paused = False
        self.uncast: list[bytes] | None = []  # typed before the recording opened
        self.settle_from: int | None = None  # output count when a signal key went

    # -- asyncssh callbacks, forwarded by the Bridge --------------------------------
    def data_received(self, data: bytes, datatype: Any) -> None:
        b = self.bridge
        b.bytes["in"] += len(data)
        if self.uncast is not None:
            self.uncast.append(data)
        else:
            b._cast("i", data)
        if self.checking and b"\x03" in data:
            b.conn.session.interrupt()  # Ctrl-C: stop waiting for an approval
        self._put(data)

    def eof_received(self) -> bool:
        self._put(None)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.wake.set()

    def _put(self, item: bytes | None) -> None:
        self.queue.append(item)
        self.wake.set()
        if len(self.queue) > QUEUED and not self.paused and self.bridge.chan is not None:
            self.paused = True
            self.bridge.chan.pause_reading()

    # -- the pump -------------------------------------------------------------------
    async def run(self) -> None:
        b = self.bridge
        for data in self.uncast or ():
            b._cast("i", data)
        self.uncast = None
        while not b._done and not b._exited:
            await self.wake.wait()
            self.wake.clear()
            while self.queue and b.backend is not None and not b._done:
                item = self.queue.popleft()
                if item is None:
                    with contextlib.suppress(OSError, asyncssh.Error):
                        b.backend.write_eof()
                    continue
                for event in self.editor.feed(item):
                    await self._handle(event)
            if self.paused and len(self.queue) <= QUEUED // 2 and b.chan is not None:
                self.paused = False
                b.chan.resume_reading()

    async def _handle(self, event: LineReady | Forward | Abandoned) -> None:
        b = self.bridge
        assert b.backend is not None
        if isinstance(event, Forward):
            await self._settle()
            self._write(event.data)
            if event.data in SIGNAL_KEYS:
                self.settle_from = self._output()
        elif isinstance(event, Abandoned):
            if event.text:
                b._event("line_abandoned", channel=b.number, chars=len(event.text))
        elif not event.text.strip() and not event.uncertain:
            await self._settle()
            self._write(event.wire)  # an empty line runs nothing
        elif await self._allowed(event):
            after_signal = await self._settle()
            # Leading blanks change nothing bash runs, and absorb the few characters a
            # readline interrupted by the signal may still swallow if the settle above
            # guessed wrong (so `xrm -rf /`, checked, can never run as `rm -rf /`).
            self._write(SIGNAL_PAD + event.wire if after_signal else event.wire)

    def _write(self, data: bytes) -> None:
        """To the backend's shell, unless it went meanwhile (e.g. during an approval)."""
        b = self.bridge
        if b.backend is not None and not b._done and not b._exited:
            with contextlib.suppress(OSError, asyncssh.Error):
                b.backend.write(data)

    def _output(self) -> int:
        return self.bridge.bytes["out"] + self.bridge.bytes["err"]

    async def _settle(self) -> bool:
        """After a signal key the backend's terminal flushes its input and bash's
        readline starts over; text arriving meanwhile can lose characters (bash ran
        `cho` for a checked `echo`).  So the next text waits until the backend has
        answered (its new prompt) and gone quiet, SETTLE_MAX at most.  True if a signal
        key went before."""
        base, self.settle_from = self.settle_from, None
        if base is None:
            return False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SETTLE_MAX
        seen = base
        while loop.time() < deadline:
            await asyncio.sleep(SETTLE_STEP)
            now = self._output()
            if now > base and now == seen:
                return True
            seen = now
        return True

    async def _allowed(self, line: LineReady) -> bool:
        session = self.bridge.conn.session
        command = line_command(line, session.connector)
        token = NOTIFY.set(self._note)
        self.checking = True
        try:
            await session.check(command)
            return True
        except AuthFailed:
            self._close_backend()
            raise  # the token expired: the channel ends
        except QueryCanceled:
            self._note("Ctrl-C: stopped waiting for approval; the line was not run")
            return False
        except CommandDenied as e:  # denied, approval refused
            keys = f" (the line was typed with {', '.join(line.uncertain)})"
            self._note(e.message + (keys if line.uncertain and not e.rule else ""))
            return False
        except HoopyError:
            self._close_backend()  # recording down: nothing runs unrecorded
            raise
        finally:
            self.checking = False
            NOTIFY.reset(token)

    def _note(self, message: str) -> None:
        """A line on the agent's terminal (and in the recording, as output)."""
        self.bridge._send(f"\r\nhoopy: {message}\r\n".encode("utf-8", "replace"), False)

    def _close_backend(self) -> None:
        if self.bridge.backend is not None:
            self.bridge.backend.close()


# ---- SFTP -------------------------------------------------------------------------------


class _ExitingWriter(SSHWriter[bytes]):
    """asyncssh's SFTP server closes its writer when the agent is done: end the channel
    with exit status 0 then, as sshd does (OpenSSH's scp fails on a missing status)."""

    def close(self) -> None:
        chan = self.channel
        assert isinstance(chan, asyncssh.SSHServerChannel)
        with contextlib.suppress(OSError, asyncssh.Error):
            chan.exit(0)


async def run_sftp(bridge: Bridge) -> None:
    """Hooks.sftp: asyncssh's SFTP server on the agent's channel, serving an
    SftpBridge whose every operation is checked and done on the backend."""
    conn = bridge.conn
    session = conn.session
    if not may_sftp(session.policies, session.identity, session.connector):
        session.record("refused", channel=bridge.number, what="sftp")
        raise CommandDenied(
            f"SFTP is not allowed for '{session.identity.subject}' on '{session.connector}': "
            "no allow rule names ssh.sftp operations"
        )
    backend = await conn.backend()
    assert bridge.chan is not None
    chan = bridge.chan
    stream: SSHServerStreamSession[bytes] = SSHServerStreamSession(None)
    bridge.delegate_to(stream)

    async def check(command: Command) -> object:
        """session.check, and a refusal's reason also on the channel's stderr: OpenSSH's
        sftp shows only "Permission denied" of the SFTP status, its ssh shows stderr."""
        token = NOTIFY.set(bridge._notify)  # an approval note goes there too
        try:
            decision = await session.check(command)
            if decision.masks.detectors and "sftp_read" in command.kinds:
                # file contents are bytes hoopy cannot mask faithfully: never hand them over
                rules = ", ".join(decision.masks.rules)
                session.record("refused", channel=bridge.number, what="sftp_read", masks=rules)
                raise CommandDenied(
                    f"mask rule '{rules}' applies here and SFTP cannot mask file contents; "
                    "read it with an exec command (masked) instead"
                )
            return decision
        except HoopyError as e:
            bridge._notify(f"{command.text}: {e.message}")
            raise
        finally:
            NOTIFY.reset(token)

    server = SftpBridge(chan, backend.start_sftp_client, session.connector, check, session.record)
    reader: SSHReader[bytes] = SSHReader(stream, chan)
    writer: SSHWriter[bytes] = _ExitingWriter(stream, chan)
    try:
        await run_sftp_server(server, reader, writer, MIN_SFTP_VERSION)
    finally:
        bridge._exited = True
        bridge._event("exit", channel=bridge.number, status=0, what="sftp")
        if not bridge._done:
            bridge._done = True
            with contextlib.suppress(OSError, asyncssh.Error):
                chan.exit(0)
