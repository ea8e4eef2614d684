"""Session: one agent's connection through hoopy, and the ONE seam to policy.

Every proxy turns what it reads into a `Command` and awaits `check(command)`.
Nothing else calls the policy engine, the approval service or the recorder for
commands: that keeps "deny by default, record everything, fail closed" in one
place.  Decisions are cached per session by the command's literal-free
fingerprint (identity, connector and policies are fixed for a session).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hoopy.errors import (
    ApprovalRejected,
    AuthFailed,
    CommandDenied,
    QueryCanceled,
    RecordingFailed,
)
from hoopy.policy import Command, Decision, Identity, PolicySet, decide
from hoopy.recorder import RecorderError, SessionLog, encode_members
from hoopy.shellsecrets import scrub

log = logging.getLogger(__name__)

# Kinds whose meaning depends on session state: never cache their decisions.
_STATEFUL_KINDS = frozenset({"execute"})


def _unavailable(e: RecorderError, what: str = "command refused") -> RecordingFailed:
    """The agent learns that recording failed, not where recordings live (the log does)."""
    log.error("%s", e)
    return RecordingFailed(f"recording unavailable, {what} (see the gateway log)")


class CommandScope(Protocol):
    """A protocol's session state that changes how policy reads later commands
    (PostgreSQL: where unqualified table names point, protocols/postgres/searchpath.py).
    The session asks it of every command; protocols without such state have none."""

    @property
    def state(self) -> Hashable:
        """Identifies the current state; the same object while nothing changes, so caches
        keyed on it (approval grants, per-statement gates) may compare identity."""
        ...

    def observe(self, command: Command) -> bool:
        """Take in what `command` changes; True when decisions made before may not hold."""
        ...

    def place(self, command: Command) -> Command:
        """`command` as the policy must read it in this state."""
        ...


class ApprovalGate(Protocol):
    """What session.check needs from the approval service (hoopy.approvals)."""

    async def wait_for(
        self,
        session: Session,
        command: Command,
        decision: Decision,
        *,
        fresh: set[str] | None = None,
    ) -> str:
        """Block until approved (returns the approval id) or raise ApprovalRejected.
        `fresh`: approvals given for other statements of the same message, whose grants
        must not cover this one; the id used is added to it."""
        ...


def _as_written(text: str) -> tuple[str, tuple[str, ...]]:
    return text, ()


def _scrubbed(fields: dict[str, Any], secrets: tuple[str, ...]) -> dict[str, Any]:
    """`fields` with `secrets` scrubbed from their strings and lists of strings."""
    out: dict[str, Any] = {}
    for k, v in fields.items():
        if type(v) is str:
            v = scrub(v, secrets)
        elif type(v) is list:
            v = [scrub(x, secrets) if type(x) is str else x for x in v]
        out[k] = v
    return out


@dataclass
class Session:
    id: str
    identity: Identity
    connector: str
    protocol: str
    client: str
    log: SessionLog
    policies: Sequence[PolicySet]
    approvals: ApprovalGate | None = None
    tls: bool = False
    clock: Any = time.time
    # A command's text as recorded and shown to approvers: the protocol's secrets hidden
    # (PostgreSQL: passwords written into SQL, protocols/postgres/sqlsecrets.py).
    # Returns (the text shown, the secret values it hid, which no other field may show).
    hide: Callable[[str], tuple[str, tuple[str, ...]]] = _as_written
    # Tells the agent something while a command waits (PostgreSQL NoticeResponse, SSH stderr).
    notify: Callable[[str], None] = lambda message: None
    _cache: dict[str, Decision] = field(default_factory=dict)
    _fields_cache: dict[str, tuple[Decision, tuple[bytes, dict[str, Any]]]] = field(
        default_factory=dict
    )
    # fingerprint → the Command whose scope work is known to be none (see `decide`)
    _inert: dict[str, Command] = field(default_factory=dict)
    commands: int = 0
    denied: int = 0
    _waiting: asyncio.Future[str] | None = None  # an approval wait in progress
    _interrupted: bool = False  # interrupt() cancelled it
    # The protocol's state that changes how later commands read (see CommandScope).
    scope: CommandScope | None = None

    def decide(self, command: Command) -> Decision:
        """The policy's decision on `command` in this session's scope; a command that
        changes the scope (SET search_path) changes it for the commands after it."""
        key = command.fingerprint
        if key and self._inert.get(key) is command:
            # this very Command (a cached statement's) was decided before and cannot
            # change the scope: the scope's look would find nothing to take in
            hit = self._cache.get(key)
            if hit is not None:
                return hit
        scope = self.scope
        if scope is not None and scope.observe(command):
            self._cache.clear()  # decisions cached in the old scope
        cached = bool(key) and command.kinds.isdisjoint(_STATEFUL_KINDS)
        if cached:
            hit = self._cache.get(key)
            if hit is not None:
                if scope is not None:  # then the inert look may take it next time
                    self._note_inert(key, command)
                return hit
        placed = command if scope is None else scope.place(command)
        decision = decide(self.policies, self.identity, placed)
        if cached:
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[key] = decision
            if scope is not None:
                self._note_inert(key, command)
        return decision

    def _note_inert(self, key: str, command: Command) -> None:
        """Remember `command` (cached under `key`) for `decide`'s first look when the
        scope says it can never change it (SearchPath.inert)."""
        inert = getattr(self.scope, "inert", None)
        if inert is not None and inert(command):
            if len(self._inert) > 4096:
                self._inert.clear()
            self._inert[key] = command

    def observe(self, command: Command) -> None:
        """`command` changed the scope without being decided here (PostgreSQL: a
        search_path given at startup, taken in as the SET it stands for)."""
        if self.scope is not None and self.scope.observe(command):
            self._cache.clear()

    def _event_fields(self, command: Command, decision: Decision) -> tuple[bytes, dict[str, Any]]:
        """The command event's fields but its text, encoded once per fingerprint."""
        key = command.fingerprint
        hit = self._fields_cache.get(key) if key else None
        if hit is not None and hit[0] is decision:
            return hit[1]
        fields = {
            **_fields(command),
            "outcome": decision.outcome,
            "rule": decision.rule,
            "reason": decision.reason,
            **({"shadow": list(decision.shadow)} if decision.shadow else {}),
            **({"masks": list(decision.masks.rules)} if decision.masks else {}),
        }
        static = (encode_members(fields), fields)
        if key:
            if len(self._fields_cache) > 4096:
                self._fields_cache.clear()
            self._fields_cache[key] = (decision, static)
        return static

    def record(self, type_: str, **fields: Any) -> None:
        """Write one event; a recorder failure refuses whatever is in flight."""
        text = fields.get("text")
        if type(text) is str:
            shown, secrets = self.hide(text)
            if secrets:  # a parser error quoting the text near a literal, too
                fields = _scrubbed(fields, secrets)
            fields["text"] = shown
        try:
            self.log.event(type_, **fields)
        except RecorderError as e:
            raise _unavailable(e) from None

    def record_later(
        self,
        type_: str,
        fields: dict[str, Any],
        static: tuple[bytes, dict[str, Any]] | None = None,
    ) -> None:
        """An event about what already ran (results), or is about to (binds, see
        `flush`): written with the next command.  `static`: as in `event_static`."""
        try:
            self.log.buffer_fields(type_, fields, static)
        except RecorderError as e:
            raise _unavailable(e, "session ended") from None

    def flush(self) -> None:
        """Write what `record_later` chained; a recorder failure refuses what is in flight."""
        try:
            self.log.flush()
        except RecorderError as e:
            raise _unavailable(e) from None

    async def check(
        self,
        command: Command,
        *,
        fresh: set[str] | None = None,
        decision: Decision | None = None,
    ) -> Decision:
        """Decide, record, and wait for approval when needed.

        Returns the Decision when the command may run (its masks apply);
        raises CommandDenied / ApprovalRejected / RecordingFailed otherwise.
        `fresh`: one set per agent message with several statements (see ApprovalGate).
        `decision`: the caller's own decision on `command` (see check_now).
        """
        decision = self.check_now(command, decision)
        if decision.outcome == "require_approval":
            return await self._approve(command, decision, fresh)
        return decision

    def interrupt(self) -> bool:
        """The agent's cancel request (PostgreSQL CancelRequest, Ctrl-C): stop waiting for
        an approval, if a command waits for one; True if one did.  A command already sent
        to the backend is the backend's to cancel."""
        wait = self._waiting
        if wait is None or wait.done():
            return False
        self._interrupted = True
        wait.cancel()
        return True

    def expired(self) -> bool:
        return bool(self.identity.expires_at) and self.clock() > self.identity.expires_at

    def check_alive(self, what: str, text: str) -> None:
        """Refuse (recorded) anything that would run once the agent's token expired:
        a Bind of a statement prepared earlier runs with no new check_now."""
        if self.expired():
            self.record("command", text=text, kinds=[what], outcome="deny", reason="token expired")
            raise AuthFailed("token expired during the session; reconnect with a fresh token")

    def check_now(
        self, command: Command, decision: Decision | None = None, text: str | None = None
    ) -> Decision:
        """`check()` up to the approval wait: decide and record.  Returns the Decision
        (an allow, or a require_approval the caller must wait on through `check()`'s
        path); raises like `check()`.  Proxies call it directly for commands they know
        need no approval, so the common case runs without a coroutine.  `decision` is
        what `decide(command)` returned, when the caller asked already.  `text`: the
        command's own text when `command` is a cached one of the same fingerprint with
        another (PostgreSQL's cached-statement lane: no copy per statement)."""
        self.commands += 1
        if text is None:
            text = command.text
        expires = self.identity.expires_at
        if expires and self.clock() > expires:  # expired(), without its frame
            self.record(
                "command",
                text=text,
                **_fields(command),
                outcome="deny",
                reason="token expired",
            )
            raise AuthFailed("token expired during the session; reconnect with a fresh token")
        if decision is None:
            decision = self.decide(command)
        try:
            key = command.fingerprint  # _event_fields' cached case, without its frame
            hit = self._fields_cache.get(key) if key else None
            if hit is not None and hit[0] is decision:
                static = hit[1]
            else:
                static = self._event_fields(command, decision)
            shown, secrets = self.hide(text)
            if secrets:  # the simple commands of a shell line quote it too
                fields = _scrubbed(static[1], secrets)
                static = (encode_members(fields), fields)
            self.log.event_text("command", static, shown)
        except RecorderError as e:
            raise _unavailable(e) from None
        if decision.outcome == "deny":
            self.denied += 1
            raise CommandDenied(decision.message(), decision.rule)
        return decision

    async def _approve(
        self, command: Command, decision: Decision, fresh: set[str] | None = None
    ) -> Decision:
        if self.approvals is None:
            self.denied += 1
            raise CommandDenied(
                f"rule '{decision.rule}' requires approval by "
                f"{', '.join(decision.approvers) or 'an approver'}, "
                "but no approval service is configured",
                decision.rule,
            )
        wait = asyncio.ensure_future(self.approvals.wait_for(self, command, decision, fresh=fresh))
        self._waiting = wait
        try:
            approval_id = await wait
        except ApprovalRejected:
            self.denied += 1
            raise
        except asyncio.CancelledError:
            if not self._interrupted:
                raise  # the agent went away: the approval service cancelled its request
            self._interrupted = False
            self.denied += 1
            self.record("cancelled", reason="cancel request while waiting for approval")
            raise QueryCanceled() from None
        finally:
            self._waiting = None
        if self.expired():  # the token ran out while the command waited
            self.record("approval_void", approval=approval_id, reason="token expired")
            raise AuthFailed("token expired while the command waited for approval; reconnect")
        self.record("approved", approval=approval_id, rule=decision.rule)
        return decision


def _fields(command: Command) -> dict[str, Any]:
    out: dict[str, Any] = {"kinds": sorted(command.kinds)}
    if command.tables_read:
        out["reads"] = sorted(command.tables_read)
    if command.tables_written:
        out["writes"] = sorted(command.tables_written)
    if command.functions:
        out["functions"] = sorted(command.functions)
    if command.commands:  # shell lines: every simple command the line runs
        out["commands"] = list(command.commands)
    if command.opaque and command.protocol != "postgres":  # SQL's are among its kinds
        out["opaque"] = sorted(command.opaque)
    return out
