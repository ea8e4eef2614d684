"""Classification of large SQL texts, off the event loop, within time and memory limits.

Theory of operation
-------------------
A text up to `classify_inline_size` characters is classified on the event loop, as the
common small statement always was (the classifier's caches make that microseconds).
A longer one — a multi-row INSERT, a long IN list — costs time linear in its size
(see sqltree.py) but still tens of milliseconds per megabyte, which would stall every
other session: it is sent to a worker process instead.

A worker is `python -m hoopy.protocols.postgres.classworker`, started on first use and
kept; it limits its own address space (RLIMIT_AS) to `classify_memory` before reading
anything, and answers one request at a time over its stdin/stdout: a 4-byte length,
then JSON (never pickle: a worker that parsed hostile text is not trusted to send code);
the SQL text itself goes as a second frame of UTF-8, and statements come back as offsets
into it, so the event loop never encodes or decodes megabytes of JSON.
A request taking longer than `classify_timeout` gets the worker killed (and a new one
started for the next); running out of memory ends the request the same way.  Both
refuse the statement with SQLSTATE 54000 naming the setting, as does a text longer than
`max_statement_size` before any work is done.  Requests beyond the number of workers
wait their turn: a large text never waits on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import sys
from typing import Any

from hoopy.config import PostgresSettings
from hoopy.errors import UnparseableCommand
from hoopy.policy import Command
from hoopy.protocols.postgres import classify as cl
from hoopy.protocols.postgres.classcache import Classifier
from hoopy.protocols.postgres.classwalk import Prepared

log = logging.getLogger("hoopy.postgres.classworker")

_LEN = struct.Struct("!I")
_SETS = ("kinds", "tables_read", "tables_written", "functions", "maybe_functions", "opaque")


class StatementTooLarge(UnparseableCommand):
    """A text beyond a configured limit: refused, never forwarded (SQLSTATE 54000)."""

    sqlstate = "54000"


class WorkerFailed(Exception):
    """The worker died, or was killed for its time limit."""


def _to_json(cmd: Command) -> dict[str, Any]:
    out: dict[str, Any] = {k: sorted(getattr(cmd, k)) for k in _SETS}
    out["text"], out["fingerprint"] = cmd.text, cmd.fingerprint
    return out


def _spans(sql: str, cmds: tuple[Command, ...]) -> list[tuple[int, int]]:
    """Where each statement's text is in `sql` (in order): sent instead of the texts."""
    out, pos = [], 0
    for c in cmds:
        start = sql.find(c.text, pos)
        if start < 0:
            raise ValueError("statement text not found")
        pos = start + len(c.text)
        out.append((start, pos))
    return out


def _from_json(d: dict[str, Any], connector: str) -> Command:
    kinds, read, written, functions, maybe, opaque = (
        frozenset(str(x) for x in d[k]) for k in _SETS
    )
    return Command(
        "postgres", connector, str(d["text"]), kinds=kinds, tables_read=read,
        tables_written=written, functions=functions, maybe_functions=maybe, opaque=opaque,
        fingerprint=str(d["fingerprint"]),
    )  # fmt: skip


# ---------------------------------------------------------------- the worker process


def _answer(request: dict[str, Any], sql: str) -> dict[str, Any]:
    connector = str(request["connector"])
    prepared = {
        name: tuple(_from_json(c, connector) for c in cmds)
        for name, cmds in request["prepared"].items()
    }
    try:
        cmds, cacheable = cl._classify(sql, connector, prepared)
    except cl.SqlParseError as e:
        if e.message == "out of memory" and e.position is None:  # libpg_query's palloc
            return {"error": "memory"}
        return {"error": "parse", "message": e.message, "position": e.position}
    except MemoryError:
        return {"error": "memory"}
    try:
        spans = _spans(sql, cmds)
    except ValueError:
        return {"error": "parse", "message": "statement boundaries could not be determined"}
    commands = [{**_to_json(c), "text": span} for c, span in zip(cmds, spans, strict=True)]
    return {"commands": commands, "cacheable": cacheable}


def _serve(memory: int) -> None:
    """The worker's loop: one request in, one answer out, until stdin closes."""
    if memory > 0:
        import resource

        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(_LEN.size)
        if len(head) < _LEN.size:
            return
        header = json.loads(stdin.read(_LEN.unpack(head)[0]))
        sql = stdin.read(_LEN.unpack(stdin.read(_LEN.size))[0])
        try:
            answer = _answer(header, sql.decode())
            del sql
            data = json.dumps(answer).encode()
        except MemoryError:
            data = b'{"error": "memory"}'
        stdout.write(_LEN.pack(len(data)) + data)
        stdout.flush()


# ---------------------------------------------------------------- the gateway side


class _Worker:
    def __init__(self, memory: int) -> None:
        self.memory = memory
        self.proc: asyncio.subprocess.Process | None = None

    async def _started(self) -> asyncio.subprocess.Process:
        if self.proc is None or self.proc.returncode is not None:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", __name__, str(self.memory),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env={**os.environ, "PYTHONHASHSEED": "0"},
            )  # fmt: skip
        return self.proc

    async def ask(self, header: bytes, sql: bytes) -> dict[str, Any]:
        proc = await self._started()
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(_LEN.pack(len(header)) + header)
            proc.stdin.write(_LEN.pack(len(sql)))
            proc.stdin.write(sql)
            await proc.stdin.drain()
            (size,) = _LEN.unpack(await proc.stdout.readexactly(_LEN.size))
            answer = json.loads(await proc.stdout.readexactly(size))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            self.kill()
            raise WorkerFailed("the classification worker ended") from None
        except BaseException:  # timeout or cancellation: the worker may be mid-request
            self.kill()
            raise
        if not isinstance(answer, dict):
            self.kill()
            raise WorkerFailed("the classification worker answered nonsense")
        return answer

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            # reaped by asyncio's child watcher; its pipes close with the transport
            transport = getattr(proc, "_transport", None)
            if transport is not None:
                with contextlib.suppress(Exception):
                    transport.close()


class OffLoop:
    """Classification for a listener: inline for short texts, in workers for long ones,
    and the size ceiling for all."""

    def __init__(self, classifier: Classifier, settings: PostgresSettings) -> None:
        self.classifier = classifier
        self.settings = settings
        self._idle: asyncio.Queue[_Worker] | None = None
        self._workers: list[_Worker] = []
        self.offloaded = 0  # texts classified by a worker (metrics and tests)

    def inline(self, sql: str) -> bool:
        """May `sql` be classified on the event loop (small, or refused at once)?"""
        s = self.settings
        return len(sql) <= s.classify_inline_size or len(sql) > s.max_statement_size

    def check_size(self, sql: str) -> None:
        if len(sql) > self.settings.max_statement_size:
            raise StatementTooLarge(
                f"statement of {len(sql):,} characters exceeds postgres.max_statement_size "
                f"({self.settings.max_statement_size:,}) in hoopy's configuration"
            )

    def classify_now(
        self, sql: str, connector: str, prepared: Prepared | None
    ) -> tuple[Command, ...]:
        self.check_size(sql)
        return self.classifier.classify(sql, connector, prepared)

    async def classify(
        self, sql: str, connector: str, prepared: Prepared | None
    ) -> tuple[Command, ...]:
        """Every statement of `sql`, classified; raises SqlParseError or StatementTooLarge."""
        if self.inline(sql):
            return self.classify_now(sql, connector, prepared)
        hit = self.classifier.exact(sql, connector)
        if hit is not None:
            return hit
        # The text goes as it is, not inside JSON: encoding 4 MB of JSON on the event
        # loop would cost what the worker is there to spare it.  Prepared statements
        # all go: looking for the ones an EXECUTE names would scan the text too.
        header = json.dumps(
            {
                "connector": connector,
                "prepared": {
                    n: [_to_json(c) for c in cmds] for n, cmds in (prepared or {}).items()
                },
            }
        ).encode()
        answer = await self._ask(header, sql.encode())
        if "error" in answer:
            if answer["error"] == "parse":
                position = answer.get("position")
                raise cl.SqlParseError(
                    str(answer.get("message")), position if isinstance(position, int) else None
                )
            raise self._over("classify_memory", "memory")
        for c in answer["commands"]:
            start, end = c["text"]
            c["text"] = sql[start:end]
        cmds = tuple(_from_json(c, connector) for c in answer["commands"])
        self.classifier.remember(sql, connector, cmds, bool(answer["cacheable"]))
        return cmds

    async def _ask(self, header: bytes, sql: bytes) -> dict[str, Any]:
        if self._idle is None:
            self._idle = asyncio.Queue()
            for _ in range(max(1, self.settings.classify_workers)):
                w = _Worker(self.settings.classify_memory)
                self._workers.append(w)
                self._idle.put_nowait(w)
        worker = await self._idle.get()
        try:
            self.offloaded += 1
            async with asyncio.timeout(self.settings.classify_timeout):
                return await worker.ask(header, sql)
        except TimeoutError:
            raise self._over("classify_timeout", "time") from None
        except WorkerFailed:
            # killed by the kernel for memory (RLIMIT_AS makes allocation fail; a C
            # library may then abort): the same limit, as far as the agent can tell
            raise self._over("classify_memory", "memory") from None
        finally:
            self._idle.put_nowait(worker)

    def _over(self, setting: str, what: str) -> StatementTooLarge:
        value = getattr(self.settings, setting)
        shown = f"{value:g} s" if what == "time" else f"{value:,} bytes"
        return StatementTooLarge(
            f"statement too large for hoopy to analyse within postgres.{setting} ({shown})"
        )

    def close(self) -> None:
        for w in self._workers:
            w.kill()
        self._workers.clear()
        self._idle = None


if __name__ == "__main__":
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
