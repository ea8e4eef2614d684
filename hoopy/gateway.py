"""The composition root: one identity verifier, one recorder, one state store,
one approval service and the policies, shared by every protocol listener.

Protocol proxies call `authenticate()`, `admit()` and `open_session()` in that
order; afterwards they only talk to their `Session`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import time
import weakref
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hoopy.approvals import ApprovalService
from hoopy.config import Config, Connector
from hoopy.errors import AuthFailed, NotAdmitted, RecordingFailed, UnknownConnector
from hoopy.identity import AuthError, IdentityVerifier
from hoopy.policy import Identity, admits
from hoopy.recorder import Recorder, RecorderError, SessionLog, new_session_id, recover_session
from hoopy.session import Session
from hoopy.state import (
    DEAD,
    OwnerLock,
    SessionRow,
    StateError,
    StateStore,
    lock_owner,
    owner_token,
    owners_dir,
)

log = logging.getLogger("hoopy.gateway")


BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)


@dataclass
class Metrics:
    counters: Counter[str] = field(default_factory=Counter)
    gauges: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, list[float]] = field(default_factory=dict)

    def inc(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def observe(self, name: str, value: float) -> None:
        self.histograms.setdefault(name, []).append(value)

    def _render_histograms(self) -> list[str]:
        lines = []
        for name, values in sorted(self.histograms.items()):
            lines.append(f"# TYPE hoopy_{name} histogram")
            for b in BUCKETS:
                lines.append(f'hoopy_{name}_bucket{{le="{b}"}} {sum(v <= b for v in values)}')
            lines.append(f'hoopy_{name}_bucket{{le="+Inf"}} {len(values)}')
            lines.append(f"hoopy_{name}_sum {sum(values)}")
            lines.append(f"hoopy_{name}_count {len(values)}")
        return lines

    def render(self) -> str:
        lines = []
        for name, value in sorted(self.counters.items()):
            metric, _, labels = name.partition("|")
            lab = "{" + labels + "}" if labels else ""
            lines.append(f"hoopy_{metric}{lab} {value}")
        for name, g in sorted(self.gauges.items()):
            lines.append(f"hoopy_{name} {g}")
        lines.extend(self._render_histograms())
        return "\n".join(lines) + "\n"


@dataclass
class CancelTarget:
    connector: Connector
    pid: int
    key: int
    # stops what hoopy itself holds for the session (an approval wait); True if it did
    interrupt: Callable[[], bool] | None = None
    # True while the backend has work hoopy sent it and it has not answered yet
    busy: Callable[[], bool] | None = None


@dataclass
class _Window:
    """Refused connections of one client host since `start`."""

    start: float
    recorded: int = 0
    suppressed: int = 0  # refused, counted but not recorded one by one


REJECTIONS_RECORDED = 30  # refused connections recorded one by one, per client host …
REJECTION_WINDOW = 10.0  # … per this many seconds


class Gateway:
    def __init__(
        self,
        config: Config,
        verifier: IdentityVerifier,
        store: StateStore,
        recorder: Recorder,
        approvals: ApprovalService | None = None,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.store = store
        self.recorder = recorder
        self.approvals = approvals
        self.metrics = Metrics()
        self.started = time.time()
        # fake (pid, key) shown to agents → the real backend key; never the other way.
        self.cancels: dict[tuple[int, int], CancelTarget] = {}
        self.open_logs: weakref.WeakSet[SessionLog] = weakref.WeakSet()
        self.live: weakref.WeakValueDictionary[str, Session] = weakref.WeakValueDictionary()
        self._flusher: asyncio.Task[None] | None = None
        self._owner: OwnerLock | None = None
        # client host -> [window start, recorded, suppressed]: see record_rejection
        self._rejections: dict[str, _Window] = {}
        # postgres.workers (pgworkers.py): this process's number among `count` serving
        # PostgreSQL, and who passes a cancel key this process does not hold on
        self.process: tuple[int, int] = (0, 1)
        self.cancel_elsewhere: Callable[[int, int], Awaitable[None]] | None = None
        # … and who hands a Slack click on to the process running the session
        self.click_elsewhere: Callable[[str, str, dict[str, Any]], None] | None = None

    def start_flusher(self, interval: float = 1.0) -> None:
        """The gateway's background duties, started once before the listeners: take this
        process's ownership lock, end the sessions dead gateways left open, then every
        `interval` write buffered events to disk and what is on disk to the index."""
        self._take_ownership()
        self.recover_crashed()
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop(interval))

    def _take_ownership(self) -> None:
        try:
            self._owner = OwnerLock(owners_dir(self.config.state_dir))
        except StateError as e:  # sessions still run; they just cannot be recovered later
            log.error("no ownership lock, a crash will leave sessions open: %s", e)
            return
        self.recorder.owner = self._owner.id

    def recover_crashed(self) -> None:
        """End, as "crashed", the open sessions of gateways proven dead: their lock file in
        the shared state folder is no longer held.  Sessions of a live gateway (another
        replica) or of one this host cannot judge are left open."""
        folder = owners_dir(self.config.state_dir)
        if not folder.is_dir():
            return
        by_owner: dict[str, list[SessionRow]] = {}
        for row in self.store.list_sessions(outcome="open", limit=None):
            by_owner.setdefault(owner_token(row.owner) or "", []).append(row)
        for lock in sorted(folder.glob("*.lock")):
            with lock_owner(folder, lock.stem) as state:
                if state == DEAD and self._recover(by_owner.get(lock.stem, [])):
                    lock.unlink(missing_ok=True)  # still held here: no one else acts on it

    def _recover(self, rows: list[SessionRow]) -> bool:
        """True if every row was ended (the dead owner's lock file can go)."""
        done = True
        for row in rows:
            try:
                res = recover_session(self.store, row, time.time())
            except StateError as e:
                log.error("cannot end crashed session %s: %s", row.id, e)
                done = False
                continue
            problems = f"; recording does not verify: {res.problems[0]}" if res.problems else ""
            log.warning(
                "session %s of dead gateway %s ended as crashed at %d events%s",
                row.id,
                row.owner,
                res.events,
                problems,
            )
        return done

    async def _flush_loop(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.flush_logs()
            self.flush_rejections()

    def flush_logs(self) -> None:
        """Buffered events to disk, then the open sessions' on-disk count and head to the
        index (one transaction, only for sessions that moved)."""
        progress: list[tuple[str, int, str]] = []
        for slog in list(self.open_logs):
            try:
                slog.flush()
            except RecorderError as e:
                log.error("recording %s failed: %s", slog.id, e)
            moved = slog.progress()
            if moved is not None:
                progress.append((slog.id, *moved))
        try:  # lets verify catch a tail cut from an open session (or a crashed one)
            self.store.sessions_progress(progress)
        except StateError as e:
            log.error("cannot index recording progress: %s", e)

    async def authenticate(self, token: str) -> Identity:
        try:
            identity = await self.verifier.verify(token)
        except AuthError as e:
            self.metrics.inc(f'auth_failures_total|reason="{e.reason}"')
            raise AuthFailed(f"token rejected: {e.message}") from None
        return identity

    def admit(self, identity: Identity, connector_name: str, protocol: str) -> Connector:
        connector = self.config.connectors.get(connector_name)
        if connector is None or connector.type != protocol:
            raise UnknownConnector(f'connector "{connector_name}" does not exist')
        if not admits(self.config.policies, identity, connector_name):
            raise NotAdmitted(
                f"identity '{identity.subject}' is not allowed to use connector '{connector_name}'"
            )
        return connector

    def open_session(
        self,
        identity: Identity,
        connector: str,
        protocol: str,
        client: str,
        tls: bool,
        extra: dict[str, Any] | None = None,
    ) -> Session:
        sid = new_session_id()
        try:
            slog = self.recorder.open_session(
                sid,
                protocol=protocol,
                connector=connector,
                subject=identity.subject,
                groups=sorted(identity.groups),
                client=client,
                tls=tls,
                extra={
                    "issuer": identity.issuer,
                    "token": identity.token_fingerprint,
                    **(extra or {}),
                },
            )
        except RecorderError as e:
            log.error("cannot record session: %s", e)
            raise RecordingFailed("recording unavailable; session refused") from None
        self.open_logs.add(slog)
        self.metrics.inc(f'sessions_total|protocol="{protocol}"')
        session = Session(
            id=sid,
            identity=identity,
            connector=connector,
            protocol=protocol,
            client=client,
            log=slog,
            policies=self.config.policies,
            approvals=self.approvals,
            tls=tls,
        )
        self.live[sid] = session
        return session

    def record_rejection(
        self,
        protocol: str,
        client: str,
        connector: str,
        reason: str,
        tls: bool,
        identity: Identity | None = None,
    ) -> None:
        """Refused connections are recorded too (a short session of their own), up to
        REJECTIONS_RECORDED per client host per REJECTION_WINDOW: past that, a client
        without a token could fill the recordings disk (and so stop every session,
        since nothing runs unrecorded).  The rest are counted and recorded as one."""
        self.metrics.inc(f'rejected_connections_total|protocol="{protocol}"')
        host = client.rsplit(":", 1)[0]
        now = time.monotonic()
        window = self._rejections.get(host)
        if window is None or now - window.start >= REJECTION_WINDOW:
            self._summarise(protocol, host)
            if len(self._rejections) > 10000:
                self.flush_rejections(everything=True)
            window = self._rejections[host] = _Window(now)
        if window.recorded >= REJECTIONS_RECORDED:
            window.suppressed += 1
            return
        window.recorded += 1
        self._record_rejected(protocol, client, connector, tls, identity, reason)

    def flush_rejections(self, everything: bool = False) -> None:
        """Record the counts of refusals not recorded one by one, for windows that are
        over (`everything`: all of them, at shutdown), so none goes unrecorded."""
        now = time.monotonic()
        for host, window in list(self._rejections.items()):
            if everything or now - window.start >= REJECTION_WINDOW:
                self._summarise("", host)
                del self._rejections[host]

    def _summarise(self, protocol: str, host: str) -> None:
        window = self._rejections.get(host)
        if window is not None and window.suppressed:
            self._record_rejected(
                protocol, host, "", False, None,
                f"{window.suppressed} more connection(s) from {host} refused within "
                f"{REJECTION_WINDOW:.0f} s (not recorded one by one)",
            )  # fmt: skip
            window.suppressed = 0

    def _record_rejected(
        self,
        protocol: str,
        client: str,
        connector: str,
        tls: bool,
        identity: Identity | None,
        reason: str,
    ) -> None:
        sid = new_session_id()
        try:
            slog = self.recorder.open_session(
                sid,
                protocol=protocol,
                connector=connector,
                subject=identity.subject if identity else "",
                groups=sorted(identity.groups) if identity else [],
                client=client,
                tls=tls,
                extra=(
                    {"issuer": identity.issuer, "token": identity.token_fingerprint}
                    if identity
                    else {}
                ),
            )
            slog.event("rejected", reason=reason)
            slog.close("rejected")
        except RecorderError as e:
            log.error("cannot record rejected connection: %s", e)

    def record_click(self, approval_id: str, info: dict[str, Any]) -> None:
        """A Slack click (valid or not) goes into the waiting session's recording."""
        a = self.approvals.store.get(approval_id) if self.approvals else None
        session = self.live.get(a.session_id) if a else None
        if session is None and a is not None and self.click_elsewhere is not None:
            self.click_elsewhere(a.session_id, approval_id, info)  # another process's
        if session is not None:
            try:
                session.log.event("approval_click", approval=approval_id, **info)
            except (RecorderError, ValueError) as e:
                log.error("cannot record click on %s: %s", approval_id, e)

    @functools.cached_property
    def mask_key(self) -> bytes:
        """Key of the `hash` mask style: configured, or generated once in the state folder
        (stable, so hashed values still join across sessions and restarts)."""
        secret = self.config.masking.hash_key
        if secret is not None:
            return secret.get().encode()
        path = self.config.state_dir / "masking-key"
        with contextlib.suppress(FileExistsError):
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        return path.read_text().strip().encode()

    def register_cancel(self, target: CancelTarget) -> tuple[int, int]:
        index, count = self.process  # the fake pid names the process (mod count)
        while True:
            fake = (secrets.randbelow((1 << 31) // count) * count + index, secrets.randbits(31))
            if fake not in self.cancels:
                self.cancels[fake] = target
                return fake

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        self.flush_logs()
        self.flush_rejections(everything=True)
        self._release_ownership()
        await self.verifier.close()

    def _release_ownership(self) -> None:
        """Sessions still open in the index at shutdown were not finished: keeping the lock
        file lets the next gateway to start end them as crashed."""
        if self._owner is None:
            return
        try:
            mine = self.store.list_sessions(outcome="open", owner=self._owner.id, limit=1)
            unfinished = bool(mine)
        except StateError:
            unfinished = True
        self._owner.release(keep=unfinished)
