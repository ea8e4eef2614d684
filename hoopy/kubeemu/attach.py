"""pods/attach: the stdio of a process running "in" the pod (WebSocket v5/v4.channel).

A test starts the pod's process with `POST /emu/attach/<ns>/<pod>`
`{"command": [...], "tty": bool}`; `kubectl attach` then joins its stdio: channel 0
goes to the process's stdin, its output comes back on channel 1 (output written while
nobody is attached is dropped, as a container's is), and when the process ends the
attached client gets its exit status on channel 3.  As with `stdinOnce`, the client
closing stdin (v5 channel 255) closes the process's stdin.  One process per pod;
without a started process, attach answers exit status 126 at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import struct
import termios
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from hoopy.kubeemu.execws import PROTOCOLS, exit_status

Send = Callable[[int, bytes], Awaitable[None]]


@dataclass
class _Proc:
    proc: asyncio.subprocess.Process
    master: int  # the pty's master side, or -1
    listeners: set[Send] = field(default_factory=set)
    code: asyncio.Future[int] | None = None

    def write(self, data: bytes) -> None:
        if self.master >= 0:
            os.write(self.master, data)
        elif self.proc.stdin is not None:
            self.proc.stdin.write(data)

    def close_stdin(self) -> None:
        if self.master >= 0:
            os.write(self.master, b"\x04")
        elif self.proc.stdin is not None:
            self.proc.stdin.close()


procs: dict[tuple[str, str], _Proc] = {}


async def start(pod: tuple[str, str], argv: list[str], tty: bool) -> None:
    master = -1
    if tty:
        master, slave = pty.openpty()
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
    else:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    p = _Proc(proc, master)
    p.code = asyncio.ensure_future(_run(p))
    procs[pod] = p


async def _run(p: _Proc) -> int:
    loop = asyncio.get_running_loop()
    if p.master >= 0:
        queue: asyncio.Queue[bytes] = asyncio.Queue()

        def readable() -> None:
            try:
                data = os.read(p.master, 64 * 1024)
            except OSError:
                data = b""
            queue.put_nowait(data)
            if not data:
                loop.remove_reader(p.master)

        loop.add_reader(p.master, readable)
        read: Callable[[], Awaitable[bytes]] = queue.get
    else:
        assert p.proc.stdout is not None
        stdout = p.proc.stdout
        read = lambda: stdout.read(64 * 1024)  # noqa: E731
    while data := await read():
        for send in list(p.listeners):
            with contextlib.suppress(ConnectionError):
                await send(1, data)
    return await p.proc.wait()


async def serve(
    request: web.Request, q: dict[str, list[str]], pod: tuple[str, str]
) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=0)
    await ws.prepare(request)
    p = procs.get(pod)
    if p is None or p.code is None or p.code.done():
        await ws.send_bytes(b"\x03" + json.dumps(exit_status(126)).encode())
        await ws.close()
        return ws
    lock = asyncio.Lock()

    async def send(channel: int, data: bytes) -> None:
        async with lock:
            await ws.send_bytes(bytes([channel]) + data)

    p.listeners.add(send)
    reader = asyncio.ensure_future(_read_client(ws, p))
    try:
        waits: set[asyncio.Future[Any]] = {reader, p.code}
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        p.listeners.discard(send)
        reader.cancel()  # before closing: close() reads the client's close frame itself
        with contextlib.suppress(BaseException):
            await reader
    if p.code.done():
        with contextlib.suppress(ConnectionError):
            await send(3, json.dumps(exit_status(p.code.result())).encode())
            await ws.close()
    return ws


async def _read_client(ws: web.WebSocketResponse, p: _Proc) -> None:
    async for msg in ws:
        if msg.type != WSMsgType.BINARY or not msg.data:
            continue
        channel, data = msg.data[0], msg.data[1:]
        if channel == 0:
            p.write(data)
            if p.master < 0 and p.proc.stdin is not None:
                with contextlib.suppress(ConnectionError):
                    await p.proc.stdin.drain()
        elif channel == 4 and p.master >= 0:
            size = json.loads(data)
            fcntl.ioctl(
                p.master,
                termios.TIOCSWINSZ,
                struct.pack("HHHH", size["Height"], size["Width"], 0, 0),
            )
        elif channel == 255 and data[:1] == b"\x00":
            p.close_stdin()
