"""pump.Eager: batches run in the callback unless they wait; order and errors are kept."""

from __future__ import annotations

import asyncio

from hoopy.protocols.postgres.pump import Eager


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return False


async def test_a_batch_that_does_not_wait_runs_inside_the_call() -> None:
    seen: list[str] = []

    async def batch() -> None:
        seen.append("ran")

    pump = Eager(FakeTransport(), batch, lambda: None, lambda e: seen.append(repr(e)))
    pump.run()
    assert seen == ["ran"] and not pump.busy  # no task, no loop turn needed


async def test_a_waiting_batch_continues_in_a_task_with_reading_paused() -> None:
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen: list[str] = []
    again: list[bool] = []
    transport = FakeTransport()

    async def batch() -> None:
        seen.append("start")
        seen.append(await gate)

    pump = Eager(transport, batch, lambda: again.append(True), lambda e: seen.append(repr(e)))
    pump.run()
    assert seen == ["start"] and pump.busy and transport.paused
    pump.run()  # more bytes meanwhile: left for the running task
    assert seen == ["start"]
    gate.set_result("resumed")
    assert pump.task is not None
    await pump.task
    assert seen == ["start", "resumed"] and not transport.paused and again == [True]


async def test_errors_reach_the_session_eagerly_and_from_the_task() -> None:
    errors: list[BaseException] = []
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def fails_now() -> None:
        raise ValueError("bad message")

    async def fails_later() -> None:
        await gate
        raise KeyError("later")

    Eager(FakeTransport(), fails_now, lambda: None, errors.append).run()
    later = Eager(FakeTransport(), fails_later, lambda: None, errors.append)
    later.run()
    gate.set_result(None)
    assert later.task is not None
    await later.task
    assert [type(e) for e in errors] == [ValueError, KeyError]


async def test_a_batch_that_needs_a_task_context_can_ask_for_one() -> None:
    seen: list[bool] = []

    async def batch() -> None:
        async with asyncio.timeout(5):  # needs a current task
            seen.append(asyncio.current_task() is not None)

    pump = Eager(FakeTransport(), batch, lambda: None, lambda e: seen.append(False))
    pump.run(eager=False)
    assert pump.task is not None
    await pump.task
    assert seen == [True]
