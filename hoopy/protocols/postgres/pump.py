"""Moving bytes without a task switch per message: protocol callbacks + eager coroutines.

After login, both sockets of a session get a `Pipe` protocol: bytes are handled in the
event loop's callback that delivered them (parse, decide, record, forward), instead of
waking a reader task per chunk.  The handling code stays `async` because a few steps
may wait — an approval, a catalog lookup for masking — so `Eager` runs each batch's
coroutine synchronously until it finishes or first suspends; only then does a task
take over, and the side's reading is paused until it is done (order is kept: later
bytes wait in the codec's buffer).  Flow control is the transports' own: when one
side's write buffer fills, the other side's reading pauses.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

Batch = Callable[[], Coroutine[Any, Any, None]]


class Pipe(asyncio.Protocol):
    def __init__(
        self,
        on_data: Callable[[bytes], None],
        on_closed: Callable[[BaseException | None], None],
        on_pressure: Callable[[bool], None],
    ) -> None:
        self.on_data = on_data
        self.on_closed = on_closed
        self.on_pressure = on_pressure
        # Called for every read: the callback itself, not a method calling it.
        self.data_received = on_data  # type: ignore[method-assign,assignment]

    def data_received(self, data: bytes) -> None:
        self.on_data(data)

    def eof_received(self) -> bool:
        self.on_closed(None)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.on_closed(exc)

    def pause_writing(self) -> None:
        self.on_pressure(True)

    def resume_writing(self) -> None:
        self.on_pressure(False)


class Eager:
    """Runs batches one at a time: synchronously when they do not wait, in a task when
    they do.  `fail` receives what a batch raised."""

    def __init__(
        self,
        transport: asyncio.BaseTransport,
        batch: Batch,
        again: Callable[[], None],
        fail: Callable[[BaseException], None],
    ) -> None:
        self.transport = transport
        self.batch = batch
        self.again = again  # called when a task ends: handle what arrived meanwhile
        self.fail = fail
        self.task: asyncio.Task[None] | None = None
        self.pause_when_busy = True

    @property
    def busy(self) -> bool:
        return self.task is not None

    def run(self, eager: bool = True) -> None:
        """Process what is pending.  `eager=False` when the batch may need a task
        context (timeouts, approvals, catalog queries): it then runs in one from the
        start."""
        if self.task is not None:
            return  # the running task picks the new bytes up when it ends
        coro = self.batch()
        if not eager:
            self._pause()
            self.task = asyncio.get_running_loop().create_task(self._finish(coro, None, True))
            return
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except BaseException as e:
            self.fail(e)
            return
        self._pause()
        self.task = asyncio.get_running_loop().create_task(self._finish(coro, waiting))

    async def _finish(
        self, coro: Coroutine[Any, Any, None], waiting: Any, fresh: bool = False
    ) -> None:
        try:
            if fresh:  # not started yet: simply run it inside this task
                await coro
            else:
                await self._resume_coroutine(coro, waiting)
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self.fail(e)
            return
        finally:
            self.task = None
        self._resume()
        self.again()

    @staticmethod
    async def _resume_coroutine(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
        """Drive a coroutine that suspended outside any task, from inside this one."""
        while True:
            try:
                if waiting is None:
                    await asyncio.sleep(0)
                else:
                    await waiting  # the coroutine reads the outcome when resumed
            except asyncio.CancelledError:
                if waiting is None or not waiting.cancelled():
                    coro.close()
                    raise
            except BaseException:
                pass
            try:
                waiting = coro.send(None)
            except StopIteration:
                return

    def _pause(self) -> None:
        if not self.pause_when_busy:
            return
        pause = getattr(self.transport, "pause_reading", None)
        if pause is not None and not self.transport.is_closing():
            pause()

    def _resume(self) -> None:
        resume = getattr(self.transport, "resume_reading", None)
        if resume is not None and not self.transport.is_closing():
            resume()
