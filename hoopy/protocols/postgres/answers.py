"""The backend → agent half of the relay: what the server answers, scrubbed, masked,
recorded and sent on.

Sessions without masking relay runs of ordinary messages as the bytes they came in,
looked at only to record them; masking sessions track each result to its statement
and rewrite rows (results.py, rowmask.py).  The marker's error (see relay.py) becomes
hoopy's own, backend credentials are scrubbed from every message, and a
ParameterStatus that makes the server read texts otherwise than hoopy does ends the
session.  `Answers` (a base class of `relay.Relay`) holds this side apart from the
agent's, which it shares only the pipeline's bookkeeping with (pipeline.py).
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable
from typing import Any, NoReturn, cast

from hoopy.errors import (
    CommandDenied,
    HoopyError,
    ProtocolError,
    RecordingFailed,
    UnparseableCommand,
)
from hoopy.protocols.postgres import backend as be
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.maskplan import Planner
from hoopy.protocols.postgres.maskwire import (
    copy_format,
    mask_message_fields,
    message_masks,
    notification,
    parameter_value,
    result_plan,
)
from hoopy.protocols.postgres.pipeline import Pipeline
from hoopy.protocols.postgres.resultrun import on_ready, relay_backend
from hoopy.protocols.postgres.textsettings import unsafe_encoding
from hoopy.recorder import RecorderError

log = logging.getLogger("hoopy.postgres")


def error_bytes(e: HoopyError) -> bytes:
    """The one place a hoopy error becomes a PostgreSQL ErrorResponse."""
    severity = "FATAL" if e.fatal else "ERROR"
    if isinstance(e, UnparseableCommand):  # shaped like the server's syntax error
        return pg.error_response(
            e.sqlstate, e.message, severity, e.detail or None, e.hint, e.position
        )
    return pg.error_response(e.sqlstate, e.message, severity=severity)


class Answers(Pipeline):
    """The backend → agent path; see the module docstring."""

    # Set by AgentConnection before the relay starts.
    backend: be.BackendConn | None
    marker: str
    refusals: deque[tuple[int, HoopyError]]
    scrub_words: tuple[str, ...]
    planner: Planner | None
    _backend_events: list[pg.BackendEvent]
    _unwritten: list[bytes]
    _agent_write: Callable[[bytes], None]  # the agent transport's own write
    _columns: dict[bytes, tuple[str, ...]]  # RowDescription → column names

    def _write_events(self) -> None:
        raise NotImplementedError  # relay.Relay: the deferred events, written

    def _to_agent(self, out: list[bytes]) -> None:
        raise NotImplementedError  # relay.Relay: events written, then `out` sent

    async def _backend_batch(self) -> None:
        """Every complete message from the database so far: scrub, mask, record, relay."""
        assert self.backend is not None
        if self.tracker is None:
            self._relay_backend()
            return
        events, self._backend_events = self._backend_events, []
        if events:
            await self._masked_batch(events)

    # The backend → agent path of a session without masking (resultrun.py, compiled
    # when built): runs of ordinary messages (rows, descriptions, completions) go
    # through as the bytes they came in, looked at only to record them; anything else
    # is handled event by event (`_on_ready`, `_other_backend_event`, `_record_result`).
    _relay_backend = relay_backend

    def _write_failed(self, e: RecorderError) -> NoReturn:
        """The events of what was about to be forwarded or sent (relay.Relay._write_events,
        relay_backend) could not be written: the session ends (fail closed)."""
        log.error("%s", e)  # where recordings live is for the gateway's log only
        failed = RecordingFailed("recording unavailable, command refused (see the gateway log)")
        failed.fatal = True
        raise failed from None

    async def _masked_batch(self, events: list[pg.BackendEvent]) -> None:
        """The backend → agent path of a masking session: every result is tracked to its
        statement, and rows are rewritten where mask rules apply."""
        tracker, planner = self.tracker, self.planner
        assert tracker is not None and planner is not None
        out: list[bytes] = []
        for ev in events:
            t = type(ev)
            if t is pg.DataRows:
                rows = cast(pg.DataRows, ev)
                result = tracker.rows()
                plan = result.plan or await result_plan(planner, result)
                raw = plan.rewrite(rows.raw)
                if raw is not rows.raw:
                    rows = pg.DataRows(raw, rows.count)
                self.result.add(rows)  # recorded as the agent sees it: masked
                out.append(raw)
                continue
            if t is pg.RowDescription:
                described = tracker.row_description(cast(pg.RowDescription, ev).fields)
                if described is not None:
                    await result_plan(planner, described)
            elif t is pg.NoData:
                tracker.no_data()
            elif t in (pg.ParseComplete, pg.BindComplete, pg.CloseComplete):
                tracker.simple_ack()
                if t is pg.ParseComplete:
                    self._parse_complete()
            elif t is pg.EmptyQueryResponse:
                tracker.complete()
            elif t is pg.PortalSuspended:
                tracker.complete()
                self._record_result("", suspended=True)
            elif t is pg.CommandComplete:
                tracker.complete()
                self._record_result(tag=cast(pg.CommandComplete, ev).tag)
                out.append(ev.raw)
                continue
            elif t is pg.ErrorResponse:
                assert self.session is not None
                current = message_masks(self.session, tracker.current_mask())
                tracker.error()
                out.append(self._on_error(cast(pg.ErrorResponse, ev), current))
                continue
            elif t is pg.ReadyForQuery:
                tracker.ready()
                ready = cast(pg.ReadyForQuery, ev)
                if planner.catalog_dirty and ready.status == "I":
                    planner.catalog_dirty = False  # the schema change is committed or gone
                    planner.catalog.invalidate()
                if not self._on_ready(ready.status):
                    out.append(ev.raw)
                continue
            elif t is pg.CopyOutResponse:
                copy = cast(pg.CopyOutResponse, ev)
                result = tracker.copy_out(copy.column_formats)
                result.plan = await planner.copy_plan(
                    result.statement.mask, len(copy.column_formats)
                )
                if copy.format != 0 and result.plan.active:
                    raise ProtocolError("a binary COPY result cannot be masked; session closed")
            elif t is pg.CopyData:
                copying = tracker.result
                if copying is None:
                    raise ProtocolError("COPY data outside a COPY; session closed")
                if copying.plan is not None and copying.plan.active:
                    data = cast(pg.CopyData, ev).data
                    fmt = copy_format(copying)
                    new = copying.plan.rewrite_copy(data, fmt)
                    self.result.add_copy(new)
                    out.append(b"d" + struct.pack("!I", len(new) + 4) + new)
                    continue
            out.append(self._other_backend_event(ev))
        if out:
            self._to_agent(out)

    # A ReadyForQuery: the batch is answered; True when it ends a batch of hoopy's own
    # (not sent on).  resultrun.py (compiled), which calls it inline on its path.
    _on_ready = on_ready

    def _other_backend_event(self, ev: pg.BackendEvent) -> bytes:
        if isinstance(ev, pg.RowDescription):
            self.result.describe(ev)
            return ev.raw
        if isinstance(ev, pg.ErrorResponse):
            return self._on_error(ev)
        if isinstance(ev, pg.NoticeResponse):
            return self._scrub_notice(ev)
        if isinstance(ev, pg.ParameterStatus):
            self._check_param(ev.name, ev.value)
            value = self._scrub_param(ev.name, ev.value)
            if self.planner is not None and self.session is not None:
                value = parameter_value(self.planner, self.session, ev.name, value)
            return ev.raw if value == ev.value else pg.parameter_status(ev.name, value)
        if isinstance(ev, pg.CopyData):
            self.result.add_copy(ev.data)
            return ev.raw
        if isinstance(ev, pg.NotificationResponse):
            assert self.session is not None
            return notification(self.planner, self.session, ev)  # masked, recorded
        if isinstance(ev, pg.EmptyQueryResponse):
            self.result.reset()
        if isinstance(ev, pg.FunctionCallResponse):
            self._record_result("FUNCTION CALL")  # a fast-path call's answer
        return ev.raw

    def _on_error(self, ev: pg.ErrorResponse, masking: Any = None) -> bytes:
        self.batch_failed = True
        if self.copy_in_flight and self.batches_done + 1 >= self.copy_batch:
            self.copy_in_flight = False  # the COPY failed or aborted: no copy mode now
        if self.marker in ev.fields.get("M", "") + ev.fields.get("D", ""):
            # _on_ready drops refusals of finished batches, so the front is this batch's.
            if self.refusals:
                _, err = self.refusals.popleft()
                self.result.reset()
                return error_bytes(err)
            return error_bytes(CommandDenied("statement refused by hoopy"))
        assert self.session is not None
        fields = ev.fields
        if masking is not None:
            fields = mask_message_fields(fields, masking)
        self.session.record("error", code=ev.code, message=self._scrub(fields.get("M", "")))
        self.result.reset()
        return self._rewrite_fields(fields, ev.raw if fields is ev.fields else b"", b"E")

    def _scrub_notice(self, ev: pg.NoticeResponse) -> bytes:
        fields = ev.fields
        if self.tracker is not None and self.session is not None:
            current = message_masks(self.session, self.tracker.current_mask())
            if current is not None:
                fields = mask_message_fields(fields, current)
        return self._rewrite_fields(fields, ev.raw if fields is ev.fields else b"", b"N")

    def _rewrite_fields(self, fields: dict[str, str], raw: bytes, kind: bytes) -> bytes:
        scrubbed = {k: self._scrub(v) for k, v in fields.items()}
        if scrubbed == fields and raw:
            return raw
        body = b"".join(k.encode() + v.encode() + b"\0" for k, v in scrubbed.items()) + b"\0"
        return kind + struct.pack("!I", len(body) + 4) + body

    def _scrub(self, text: str) -> str:
        for word in self.scrub_words:
            if word and word in text:
                text = text.replace(word, "***")
        return text

    def _scrub_param(self, name: str, value: str) -> str:
        if name == "session_authorization" and self.session is not None:
            return self.session.identity.subject
        return self._scrub(value)

    def _check_param(self, name: str, value: str) -> None:
        if name == "standard_conforming_strings" and value.lower() != "on":
            raise ProtocolError(
                "standard_conforming_strings must stay on through hoopy; session closed"
            )
        if name == "client_encoding" and unsafe_encoding(value):
            raise ProtocolError(f"client_encoding {value} is not supported; session closed")

    def _record_result(self, tag: str, suspended: bool = False) -> None:
        assert self.session is not None
        fields = self.result.take(tag)
        if suspended:
            fields["suspended"] = True  # the portal may run on: no tag yet
        self.session.record_later("result", fields)
