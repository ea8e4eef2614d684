"""pfrelay's agent side under a flood of tiny SPDY frames (pure relay, fake sockets)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiohttp import WSMsgType

from hoopy.protocols.kube import pfrelay, spdy


class _Agent:
    def __init__(self, messages: list[bytes]) -> None:
        self.messages = messages

    def __aiter__(self) -> Any:
        return self._gen()

    async def _gen(self) -> Any:
        for m in self.messages:
            yield SimpleNamespace(type=WSMsgType.BINARY, data=m)


class _Cluster:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        self.sent.append(data)


def test_a_message_of_tiny_frames_lets_other_tasks_run() -> None:
    """One 4 MiB message of empty data frames on an unopened stream (500,000 frames)
    was decoded and handled without a pause: every other session on the gateway
    waited over a second per such message."""
    frame = spdy.Encoder().encode(spdy.Data(99, b""))
    message = frame * (4 * 1024 * 1024 // len(frame))
    session: Any = SimpleNamespace(record=lambda *a, **k: None, record_later=lambda *a: None)

    async def judge(port: int) -> str | None:
        return None

    async def run() -> int:
        result = pfrelay.PortForwardResult(response=None, status=101)  # type: ignore[arg-type]
        relay = pfrelay._Relay(_Agent([message]), _Cluster(), session, judge, result)  # type: ignore[arg-type]
        ticks = 0
        done = False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        t = asyncio.ensure_future(ticker())
        await asyncio.sleep(0)
        start = ticks
        await relay.agent_side()
        done = True
        await t
        return ticks - start

    ticks = asyncio.run(run())
    assert ticks >= 32, f"the loop ran {ticks} times while one message was handled"
