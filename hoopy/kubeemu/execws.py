"""pods/exec over WebSocket (v5.channel.k8s.io, v4.channel.k8s.io), run locally.

Every binary message starts with a channel byte: 0 stdin, 1 stdout, 2 stderr,
3 error (a Status JSON once the process ended), 4 resize ({"Width","Height"});
v5 adds 255 "close" whose payload byte names the channel closed (stdin EOF).
The command runs on this host (the emulator's "container"), under a pty for tty.
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
from typing import Any

from aiohttp import WSMsgType, web

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")


def _flag(q: dict[str, list[str]], name: str) -> bool:
    """As kube-apiserver reads a bool parameter: absent, "0" or "false" is false."""
    v = q.get(name)
    return v is not None and bool(v) and v[0] != "0" and v[0].lower() != "false"


def exit_status(code: int) -> dict[str, Any]:
    if code == 0:
        return {"metadata": {}, "status": "Success"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }


async def serve(request: web.Request, q: dict[str, list[str]]) -> web.StreamResponse:
    ws = web.WebSocketResponse(protocols=PROTOCOLS, max_msg_size=0)
    await ws.prepare(request)
    argv = q.get("command") or []
    tty = _flag(q, "tty")
    use_stdin = _flag(q, "stdin")
    if not argv:
        await ws.send_bytes(b"\x03" + json.dumps(exit_status(126)).encode())
        await ws.close()
        return ws
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
            stdin=asyncio.subprocess.PIPE if use_stdin else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    send_lock = asyncio.Lock()

    async def send(channel: int, data: bytes) -> None:
        async with send_lock:
            await ws.send_bytes(bytes([channel]) + data)

    pumps = []
    if tty:
        pumps.append(asyncio.ensure_future(_pump_pty(master, send)))
    else:
        assert proc.stdout is not None and proc.stderr is not None
        pumps.append(asyncio.ensure_future(_pump(proc.stdout, 1, send)))
        pumps.append(asyncio.ensure_future(_pump(proc.stderr, 2, send)))
    reader = asyncio.ensure_future(_read_client(ws, proc, master, use_stdin))
    code = await proc.wait()
    await asyncio.gather(*pumps, return_exceptions=True)
    reader.cancel()
    with contextlib.suppress(BaseException):
        await reader
    if master >= 0:
        os.close(master)
    with contextlib.suppress(ConnectionError):
        await send(3, json.dumps(exit_status(code)).encode())
        await ws.close()
    return ws


async def _pump(stream: asyncio.StreamReader, channel: int, send: Any) -> None:
    while True:
        data = await stream.read(64 * 1024)
        if not data:
            return
        await send(channel, data)


async def _pump_pty(master: int, send: Any) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(master, 64 * 1024)
        except OSError:
            data = b""
        queue.put_nowait(data)
        if not data:
            loop.remove_reader(master)

    loop.add_reader(master, readable)
    while True:
        data = await queue.get()
        if not data:
            return
        await send(1, data)


async def _read_client(
    ws: web.WebSocketResponse, proc: asyncio.subprocess.Process, master: int, use_stdin: bool
) -> None:
    async for msg in ws:
        # kube-apiserver (x/net/websocket's Message.Receive into []byte) reads a text
        # message's bytes as it reads a binary one's
        raw = msg.data.encode() if msg.type == WSMsgType.TEXT else msg.data
        if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT) or not raw:
            continue
        channel, data = raw[0], raw[1:]
        if channel == 0 and use_stdin:
            if master >= 0:
                os.write(master, data)
            elif proc.stdin is not None:
                proc.stdin.write(data)
                with contextlib.suppress(ConnectionError):
                    await proc.stdin.drain()
        elif channel == 4 and master >= 0:
            size = json.loads(data)
            fcntl.ioctl(
                master, termios.TIOCSWINSZ, struct.pack("HHHH", size["Height"], size["Width"], 0, 0)
            )
        elif channel == 255 and data[:1] == b"\x00":
            if master >= 0:
                os.write(master, b"\x04")
            elif proc.stdin is not None:
                proc.stdin.close()
    if proc.stdin is not None and master < 0:
        proc.stdin.close()
