"""One agent session channel (exec, shell, subsystem) bridged to one backend channel.

Theory of operation: asyncssh calls the `Bridge` (an SSHServerSession) for what the
agent's channel does and the `BackendSide` (an SSHClientSession) for what the backend's
channel does; both are plain callbacks, so relaying costs no task per read.  An exec
request is accepted at once (SSH has no way to answer it later), then checked in a
task: the command line goes through `hoopy.shell` into a `Command` and
`session.check()`.  A denial or a refused approval answers on stderr and exit status
126; the agent's connection stays open for its next channel.  Only an allowed
command opens a channel to the backend.

Flow control is end to end: when one side's send buffer passes its high-water mark
asyncssh calls `pause_writing`, and the bridge stops *reading* the other side, which
stops granting it window: a slow agent slows the backend down instead of growing a
buffer in hoopy.  Agent stdin that arrives before the backend is ready (bounded by
the channel window) waits in `_early`, with reading paused.

What the agent sees (masked when mask rules with detectors apply) is what the
recording gets: an asciicast file per channel (`o` output, `i` input, `r` resizes),
capped at `ssh.record_bytes` per channel and direction (the exit event holds the
full byte counts), plus `channel` / `exit` events in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import asyncssh
from asyncssh.channel import SSHChannel

from hoopy.errors import (
    AuthFailed,
    BackendUnavailable,
    CommandDenied,
    HoopyError,
    ProtocolError,
)
from hoopy.masking import ValueMasker
from hoopy.protocols.ssh import backend as be
from hoopy.protocols.ssh.streammask import StreamMasker
from hoopy.recorder import AsciicastWriter, RecorderError
from hoopy.shell import on_a_terminal, read_line, shell_command

if TYPE_CHECKING:
    from hoopy.protocols.ssh.proxy import AgentConnection

log = logging.getLogger("hoopy.ssh")

# Where Session.notify writes while a channel's command waits: the channel of the task
# that is checking (several channels of one connection may wait at once).
NOTIFY: contextvars.ContextVar[Callable[[str], None]] = contextvars.ContextVar("ssh_notify")
ENV_ALLOWED = re.compile(r"(LANG|LC_[A-Z_]+|TERM)\Z")
# A locale whose charset is not UTF-8 changes how the backend's bash reads the line's
# bytes (in BIG5, GBK or Shift_JIS a byte 0x5c after a lead byte is no backslash):
# hoopy reads lines as UTF-8, so only UTF-8, C and POSIX locales are passed on.
LOCALE_ALLOWED = re.compile(r"(C|POSIX|[A-Za-z0-9_@-]*\.(?i:utf-?8)(@[A-Za-z0-9_-]+)?)?\Z")


# The agent's terminal modes passed to the backend's PTY: speeds, output and echo
# settings.  The rest would change what the backend makes of the text hoopy checked:
# readline binds the tty's erase, kill, word-erase and lnext characters (`stty kill Q`
# made `echo Q rm -rf /` run `rm -rf /`), the tty acts on its signal and flow
# characters and lowers letters under IUCLC, IGNCR/INLCR/ISTRIP change the bytes.
# Left out, they keep the backend pty's defaults, the keys hoopy's line editor reads.
PTY_MODES_PASSED = frozenset(
    {
        asyncssh.PTY_OP_ISPEED,
        asyncssh.PTY_OP_OSPEED,
        asyncssh.PTY_IMAXBEL,
        asyncssh.PTY_IUTF8,
        asyncssh.PTY_ECHO,
        asyncssh.PTY_ECHOE,
        asyncssh.PTY_ECHOK,
        asyncssh.PTY_ECHONL,
        asyncssh.PTY_ECHOCTL,
        asyncssh.PTY_ECHOKE,
        asyncssh.PTY_TOSTOP,
        asyncssh.PTY_OPOST,
        asyncssh.PTY_ONLCR,
        asyncssh.PTY_OCRNL,
        asyncssh.PTY_ONOCR,
        asyncssh.PTY_ONLRET,
    }
)


def pty_modes(modes: Any) -> dict[int, int]:
    """The agent's terminal modes the backend may get (PTY_MODES_PASSED)."""
    if not isinstance(modes, dict):
        return {}
    return {k: v for k, v in modes.items() if k in PTY_MODES_PASSED and isinstance(v, int)}


def env_allowed(name: str | bytes, value: str | bytes) -> bool:
    if not isinstance(name, str) or not isinstance(value, str) or not ENV_ALLOWED.match(name):
        return False
    return name == "TERM" or bool(LOCALE_ALLOWED.match(value))


# What hoopy grants the backend: bigger packets mean fewer Python callbacks per MB.
BACKEND_WINDOW = 4 * 1024 * 1024
BACKEND_PACKET = 256 * 1024
WRITE_HIGH = 512 * 1024  # agent-side send buffer before the backend is paused
WRITE_LOW = 256 * 1024  # a send buffer below which the other side is read again
IDLE_FLUSH = 0.03  # s: masked output held for look-behind goes out when the stream pauses
IDLE_FINAL = 0.3  # s: … and the rest of a line (a prompt) after this long
STDERR = asyncssh.EXTENDED_DATA_STDERR


def limit_buffers(out: SSHChannel[bytes], source: SSHChannel[bytes]) -> None:
    """Write-buffer limits for `out`, whose pauses pause reading `source`.  asyncssh
    grants its peer a full window again at the first delivery after a resume, however
    much it still holds undelivered; so each resume must be able to take all a paused
    channel can hold (its window) before pausing again, or every pause/resume cycle
    would add up to a window to what hoopy buffers (measured: 200 MiB for a 400 MiB
    stream to a reader half as fast).  With high - low >= the source's window, what is
    held per direction stays under twice the window plus the low-water mark."""
    out.set_write_buffer_limits(high=source.get_recv_window() + WRITE_LOW, low=WRITE_LOW)


def notify_current(message: str) -> None:
    """Session.notify for SSH sessions: to the waiting channel's stderr."""
    fn = NOTIFY.get(None)
    if fn is not None:
        fn(message)


class Bridge(asyncssh.SSHServerSession[bytes]):
    """The agent's side of one session channel."""

    def __init__(self, conn: AgentConnection, number: int) -> None:
        self.conn = conn
        self.number = number
        self.chan: asyncssh.SSHServerChannel[bytes] | None = None
        self.backend: asyncssh.SSHClientChannel[bytes] | None = None
        self.request: tuple[str, str] = ("", "")  # (exec|shell|subsystem, command/name)
        self.pty: tuple[str, tuple[int, int, int, int], Any] | None = None
        self.task: asyncio.Task[None] | None = None
        self.cast: AsciicastWriter | None = None
        self.maskers: dict[bool, StreamMasker] = {}  # stderr? -> masker
        self._early: list[bytes] = []
        self._early_eof = False
        self._timer: asyncio.TimerHandle | None = None
        self._exit_status: int | None = None
        self._exit_signal: tuple[str, bool, str, str] | None = None
        self.bytes = {"out": 0, "err": 0, "in": 0}
        self._recorded = {"o": 0, "i": 0}
        self._done = False
        self._exited = False  # the exit event is recorded
        self._expiry: asyncio.TimerHandle | None = None  # the token's end (_open_backend)
        # Where the agent's input goes instead of the backend channel (a PTY shell's line
        # editor, an SFTP server's stream): see `delegate_to`.
        self.delegate: asyncssh.SSHServerSession[bytes] | None = None

    # ---- asyncssh: the agent's channel ------------------------------------------------
    def connection_made(self, chan: asyncssh.SSHServerChannel[bytes]) -> None:
        self.chan = chan
        chan.set_write_buffer_limits(high=WRITE_HIGH)

    def pty_requested(self, term_type: str, term_size: Any, term_modes: Any) -> bool:
        if self.request[0]:
            # asyncssh takes a pty-req after exec: the command was checked as run
            # without a terminal (no pager's `!`), so it gets none
            self._event("refused", channel=self.number, what="pty-req after " + self.request[0])
            return False
        self.pty = (term_type, tuple(term_size), term_modes)
        return True

    def shell_requested(self) -> bool:
        self.request = ("shell", "")
        return True

    def exec_requested(self, command: str) -> bool:
        self.request = ("exec", command)
        return True

    def subsystem_requested(self, subsystem: str) -> bool:
        self.request = ("subsystem", subsystem)
        return True

    def session_started(self) -> None:
        self.task = self.conn.spawn(self._run())

    def data_received(self, data: bytes, datatype: Any) -> None:
        if self.delegate is not None:
            self.delegate.data_received(data, datatype)
            return
        if self.backend is None:
            self._early.append(data)
            if self.chan is not None:
                self.chan.pause_reading()  # until the command is allowed and running
            return
        self.bytes["in"] += len(data)
        self._cast("i", data)
        self.backend.write(data)

    def eof_received(self) -> bool:
        if self.delegate is not None:
            self.delegate.eof_received()
            return True
        if self.backend is None:
            self._early_eof = True
        else:
            self.backend.write_eof()
        return True  # half-close: the backend's output still flows

    def signal_received(self, signal: str) -> None:
        if self.backend is not None:
            self.backend.send_signal(signal)
            self._event("signal", signal=signal)

    def break_received(self, msec: int) -> bool:
        if self.backend is None:
            return False
        self.backend.send_break(msec)
        return True

    def terminal_size_changed(self, width: int, height: int, pw: int, ph: int) -> None:
        if self.backend is not None:
            self.backend.change_terminal_size(width, height, pw, ph)
        if self.cast is not None:
            try:
                self.cast.resize(width, height)
            except RecorderError as e:
                self._recording_failed(e)

    def pause_writing(self) -> None:
        if self.backend is not None:
            self.backend.pause_reading()
        if self.delegate is not None:
            self.delegate.pause_writing()

    def resume_writing(self) -> None:
        if self.backend is not None:
            self.backend.resume_reading()
        if self.delegate is not None:
            self.delegate.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        """The agent closed the channel (or the connection went)."""
        if self.task is not None and not self.task.done():
            self.task.cancel()  # e.g. stop waiting for an approval nobody will read
        if self.backend is not None:
            self.backend.close()
        if self.delegate is not None:
            self.delegate.connection_lost(exc)
        self.conn.open_channels -= 1  # asyncssh calls this once per channel
        self._done = True
        if self._expiry is not None:
            self._expiry.cancel()

    # ---- the request -------------------------------------------------------------------
    async def _run(self) -> None:
        kind, what = self.request
        try:
            self.conn.session.record(
                "channel", channel=self.number, request=kind, pty=bool(self.pty)
            )
            if kind == "exec":
                await self._exec(what)
            elif kind == "shell":
                await self.conn.listener.hooks.shell(self)
            elif kind == "subsystem" and what == "sftp":
                await self.conn.listener.hooks.sftp(self)
            else:
                raise CommandDenied(f"subsystem '{what}' is not available through hoopy")
        except HoopyError as e:
            self.fail(e)
        except asyncio.CancelledError:
            if not self._exited:  # (a shell's backend may have ended it already)
                self._event("exit", channel=self.number, reason="agent closed the channel")
            raise
        except Exception:
            log.exception("ssh session %s channel %d crashed", self.conn.session.id, self.number)
            self.fail(ProtocolError("internal error in hoopy"))

    async def _exec(self, command: str) -> None:
        conn = self.conn
        if not command:
            # sshd would run `sh -c ''`, but asyncssh's client sends an empty command
            # as a *shell* request: the backend's login shell would read stdin unchecked
            raise CommandDenied(
                "an empty command runs nothing; for an interactive shell use ssh -t "
                "(it needs an allow rule with ssh: {shell: true})"
            )
        reading = read_line(command)
        if self.pty is not None:  # `ssh -t host less f`: less's `!` runs what is typed
            reading = on_a_terminal(reading)
        cmd = shell_command("ssh", conn.session.connector, reading)
        token = NOTIFY.set(self._notify)
        try:
            decision = await conn.session.check(cmd)
        finally:
            NOTIFY.reset(token)
        backend = await conn.backend()
        if decision.masks.detectors:
            masker = ValueMasker(
                decision.masks.detectors, decision.masks.detector_style, conn.listener.gw.mask_key
            )
            self.maskers = {False: StreamMasker(masker), True: StreamMasker(masker)}
        await self._open_backend(backend, command)

    async def _open_backend(
        self, backend: asyncssh.SSHClientConnection, command: str | None
    ) -> None:
        """Start `command` (None: a shell) on the backend and relay; the callbacks take
        it from here."""
        assert self.chan is not None
        if command == "":  # (refused in _exec) asyncssh would open a shell instead
            raise CommandDenied("an empty command runs nothing")
        width, height = (self.pty[1][0], self.pty[1][1]) if self.pty else (80, 24)
        env: dict[str | bytes, str | bytes] = {
            k: v for k, v in self.chan.get_environment().items() if env_allowed(k, v)
        }
        pty: dict[str, Any] = {}
        if self.pty is not None:
            pty = {
                "request_pty": "force",
                "term_type": self.pty[0] or "xterm",
                "term_size": self.pty[1],
                "term_modes": pty_modes(self.pty[2]),
            }
        opening = asyncio.ensure_future(
            backend.create_session(
                lambda: BackendSide(self),
                command,
                env=env,
                encoding=None,
                window=BACKEND_WINDOW,
                max_pktsize=BACKEND_PACKET,
                **pty,
            )
        )
        # The backend's channel opens while the recording's file is created (a file
        # system round of its own): the task runs up to waiting for the channel's
        # confirmation, its request leaves now, and the command itself is sent only
        # after that confirmation, which cannot be read before the cast exists.
        try:
            await asyncio.sleep(0)
            be.flush_sends(backend)
            self.cast = self.conn.session.log.open_asciicast(
                width or 80, height or 24, name=f"ch{self.number}"
            )
        except RecorderError as e:
            opening.cancel()  # the command is never sent
            raise _refused(e) from None
        except BaseException:
            opening.cancel()  # (awaited below, a cancel reaches it by itself)
            raise
        try:
            chan, _ = await opening
        except (asyncssh.Error, OSError) as e:
            msg = getattr(e, "reason", "") or type(e).__name__
            raise BackendUnavailable(f"the backend refused the command's channel ({msg})") from None
        self.backend = chan
        limit_buffers(self.chan, chan)
        limit_buffers(chan, self.chan)
        if self._done:  # the agent went while the backend channel opened
            chan.close()
            return
        expires = self.conn.session.identity.expires_at
        if expires:  # a running command lives no longer than the token it ran under
            delay = max(0.0, expires - self.conn.session.clock())
            self._expiry = asyncio.get_running_loop().call_later(delay, self._expire)
        for data in self._early:
            self.data_received(data, None)
        self._early.clear()
        if self._early_eof:
            chan.write_eof()
        self.chan.resume_reading()

    def delegate_to(self, delegate: asyncssh.SSHServerSession[bytes]) -> None:
        """From now on the agent's input (and EOF, flow control, close) goes to
        `delegate`, starting with what arrived before it was set."""
        assert self.chan is not None
        self.delegate = delegate
        delegate.connection_made(self.chan)
        early, self._early = self._early, []
        for data in early:
            delegate.data_received(data, None)
        if self._early_eof:
            self._early_eof = False
            delegate.eof_received()
        self.chan.resume_reading()

    def _notify(self, message: str) -> None:
        self._write_stderr(f"hoopy: {message}")

    # ---- the backend's channel -------------------------------------------------------------
    def backend_data(self, data: bytes, datatype: Any) -> None:
        stderr = datatype == STDERR
        masker = self.maskers.get(stderr)
        if masker is not None:
            data = masker.feed(data)
            self._arm_flush(IDLE_FLUSH, final=False)
        self._send(data, stderr)

    def _send(self, data: bytes, stderr: bool) -> None:
        if not data or self.chan is None or self._done:
            return
        self.bytes["err" if stderr else "out"] += len(data)
        self._cast("o", data)
        if stderr:
            self.chan.write_stderr(data)
        else:
            self.chan.write(data)

    def _arm_flush(self, delay: float, final: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(delay, self._idle_flush, final)

    def _idle_flush(self, final: bool) -> None:
        self._timer = None
        held = False
        for stderr, masker in self.maskers.items():
            self._send(masker.flush(final=final), stderr)
            held = held or masker.held > 0
        if held and not final:
            self._arm_flush(IDLE_FINAL, final=True)

    def backend_eof(self) -> None:
        self._flush_all()
        if self.chan is not None and not self._done:
            self.chan.write_eof()

    def backend_exit(self, status: int | None, signal: tuple[str, bool, str, str] | None) -> None:
        if status is not None:
            self._exit_status = status
        if signal is not None:
            self._exit_signal = signal

    def backend_closed(self, exc: Exception | None) -> None:
        """The backend's channel is done: every byte was delivered to `backend_data`."""
        if self._expiry is not None:
            self._expiry.cancel()
        self._flush_all()
        status, sig = self._exit_status, self._exit_signal
        self._event(
            "exit",
            channel=self.number,
            status=status,
            signal=sig[0] if sig else None,
            bytes_out=self.bytes["out"],
            bytes_err=self.bytes["err"],
            bytes_in=self.bytes["in"],
            **({"masked": dict(self._mask_counts())} if self.maskers else {}),
            **({"error": type(exc).__name__} if exc else {}),
        )
        self._exited = True
        self._close_cast()
        chan = self.chan
        if chan is None or self._done:
            return
        if sig is not None:
            chan.exit_with_signal(sig[0], sig[1], sig[2], sig[3])
        elif status is not None:
            chan.exit(status)
        else:
            chan.close()

    def _flush_all(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for stderr, masker in self.maskers.items():
            self._send(masker.flush(final=True), stderr)

    def _mask_counts(self) -> dict[str, int]:
        total: dict[str, int] = {}
        for m in self.maskers.values():
            for k, v in m.counts.items():
                total[k] = total.get(k, 0) + v
        return total

    # ---- recording -----------------------------------------------------------------------
    def _cast(self, code: str, data: bytes) -> None:
        if self.cast is None:
            return
        cap = self.conn.listener.gw.config.ssh.record_bytes
        room = cap - self._recorded[code]
        if room <= 0:
            return
        try:
            self.cast.output(data[:room]) if code == "o" else self.cast.input(data[:room])
            self._recorded[code] += len(data)
            if self._recorded[code] >= cap:
                what = "output" if code == "o" else "input"
                self._event("recording_capped", channel=self.number, stream=what, bytes=cap)
        except RecorderError as e:
            self._recording_failed(e)

    def _event(self, kind: str, **fields: Any) -> None:
        try:
            self.conn.session.log.event(kind, **fields)
        except RecorderError as e:
            self._recording_failed(e)

    def _expire(self) -> None:
        """The agent's token ran out while the command ran: it ends (exit 255), as a
        Kubernetes exec stream does, and as the next command would be refused."""
        self._expiry = None
        if self._exited or self._done:
            return
        self._event("expired", channel=self.number, reason="token expired: the command ends")
        if self.backend is not None:
            self.backend.close()
        self.fail(AuthFailed("token expired during the session; reconnect with a fresh token"))

    def _recording_failed(self, e: RecorderError) -> None:
        """Nothing runs unrecorded: stop the command."""
        log.error("%s", e)
        if self.backend is not None:
            self.backend.close()
        self.fail(_refused(e))

    def _close_cast(self) -> None:
        if self.cast is not None:
            try:
                self.cast.close()
            except RecorderError as e:
                log.error("%s", e)

    # ---- answers -----------------------------------------------------------------------------
    def _write_stderr(self, text: str) -> None:
        if self.chan is None or self._done:
            return
        eol = "\r\n" if self.pty else "\n"
        data = (text.rstrip("\n") + eol).encode("utf-8", "replace")
        with contextlib.suppress(OSError, asyncssh.Error):
            self.chan.write_stderr(data)

    def fail(self, e: HoopyError) -> None:
        """Tell the agent why (stderr) and end the channel with the error's exit status."""
        self._event("error", channel=self.number, message=e.message, exit=e.ssh_exit)
        self._close_cast()
        self._write_stderr(f"hoopy: {e.message}")
        if self.chan is not None and not self._done:
            self._done = True
            with contextlib.suppress(OSError, asyncssh.Error):
                self.chan.exit(e.ssh_exit)


class BackendSide(asyncssh.SSHClientSession[bytes]):
    """The backend's side of one channel: everything goes to the Bridge."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def data_received(self, data: bytes, datatype: Any) -> None:
        self.bridge.backend_data(data, datatype)

    def eof_received(self) -> bool:
        self.bridge.backend_eof()
        return True

    def exit_status_received(self, status: int) -> None:
        self.bridge.backend_exit(status, None)

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.bridge.backend_exit(None, (signal, core_dumped, msg, lang))

    def pause_writing(self) -> None:
        if self.bridge.chan is not None:
            self.bridge.chan.pause_reading()

    def resume_writing(self) -> None:
        if self.bridge.chan is not None:
            self.bridge.chan.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.bridge.backend_closed(exc)


def _refused(e: RecorderError) -> HoopyError:
    from hoopy.errors import RecordingFailed

    log.error("%s", e)
    return RecordingFailed("recording unavailable, command refused (see the gateway log)")
