"""Slack: announce approvals with Approve/Deny buttons and accept the clicks.

Theory of operation
-------------------
`SlackNotifier` is an approvals `Notifier`: `requested()` posts a Block Kit message
(who, where, what, why, expiry, two buttons carrying the approval id) with
`chat.postMessage` and returns `{"channel", "ts"}` as JSON, which the service stores
as the approval's `notice`; `decided()` rewrites that message with `chat.update`,
showing the outcome and removing the buttons.  Errors propagate: the service logs them
and the approval can still be decided from the CLI or admin API.

Clicks arrive either as signed HTTP callbacks (`SlackInteractions.handle`, mounted at
`POST /slack/interactions`) or over Socket Mode (`SlackSocketMode`, for gateways without
public ingress).  Both feed the same core, `SlackInteractions.handle_action(payload)`,
which authorises the click and calls `ApprovalService.decide()` — no Slack I/O there.
Authorisation fails closed: the clicking Slack user must be listed under one of the
approval's approver groups in `slack.approvers`, must not be the requester, and the
approval must still be pending and unexpired (and, to approve, shown in full).  Whatever
happens, HTTP answers 200 once the signature is valid (Slack expects it); refusals reach
the clicker as an ephemeral message, posted in the background so the answer stays fast.

Everything shown in Slack that came from the agent (the command, its values, its
subject) is escaped for Slack's mrkdwn (`&`, `<`, `>`), so a statement cannot mention
`@channel` or forge links, and is fenced so it cannot break out of its code block;
invisible and direction-changing characters are shown as escapes and non-ASCII letters
are named in a warning (`hoopy.showsafe`).  SQL is shown without its comments (a long
comment would push the rest of the statement out of view).  The values a statement runs
with (a Bind's) come from their own field, in a block of their own, never from the
agent's text.  A command or value that must be cut is marked so, with where to read it
whole, and gets no Approve button.  Who asked is the subject *and* its token issuer.  A
rule that grants reuse says so: approving then also releases statements of the same shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from slack_sdk.signature import SignatureVerifier
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from hoopy import showsafe
from hoopy.approvals import APPROVED, CANCELLED, DENIED, EXPIRED, PENDING, Approval, ApprovalService
from hoopy.config import SlackConfig

log = logging.getLogger("hoopy.slack")

APPROVE_ACTION = "hoopy_approve"
DENY_ACTION = "hoopy_deny"
ACTIONS_BLOCK = "hoopy_approval"
TIMEOUT = 5  # seconds per Slack Web API call (slack-sdk retries a refused connection once)
_DEADLINE = 3 * TIMEOUT  # hard bound on one notifier call, retries included
MAX_COMMAND = 2500  # characters of the command shown (Slack allows 3000 per section)
MAX_LINES = 40
MAX_SHAPE = 1000  # characters of the statement shape a reuse grant covers
MAX_VALUES = 32  # values shown (a Bind's parameters); more: shown cut, no Approve
MAX_VALUE = 2000  # characters of one value shown; longer (or all past MAX_COMMAND): cut
# Longer SQL is not scanned for comments (≈ 0.2 s at most, on the event loop): it is shown
# cut, as sent, and gets no Approve button.
_MAX_SCAN = 32 * 1024
_COMMENTS = frozenset({"C_COMMENT", "SQL_COMMENT"})
_MAX_FIELD = 300
_MAX_ID = 100  # an approval id longer than this is not ours

# Click outcomes besides APPROVED / DENIED.
NOT_APPROVER = "not_approver"
OWN_REQUEST = "own_request"
ALREADY_DECIDED = "already_decided"
EXPIRED_CLICK = "expired"
TRUNCATED = "truncated"  # Approve on a command Slack shows cut short (no such button)
UNKNOWN = "unknown"
IGNORED = "ignored"  # not a hoopy button click: nothing to do, nothing to report

ClickCallback = Callable[[str, dict[str, Any]], None]


def make_client(config: SlackConfig) -> AsyncWebClient:
    """The Web API client for `config`, with a short timeout (reads the bot token)."""
    base = config.api_url if config.api_url.endswith("/") else config.api_url + "/"
    return AsyncWebClient(token=config.token.get(), base_url=base, timeout=TIMEOUT)


# ---- message rendering (pure) ---------------------------------------------------------


def escape(text: str) -> str:
    """Slack mrkdwn escaping: only these three characters are control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int = _MAX_FIELD) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def strip_comments(sql: str) -> str:
    """`sql` without comments, each run of whitespace between tokens made one space or
    newline: what the server executes.  Raises when libpg_query cannot scan it."""
    from hoopy.protocols.postgres import pgquery

    out: list[str] = []
    pos, gap = 0, ""
    for tok in pgquery.scan(sql):
        gap += sql[pos : tok.start]
        pos = tok.end + 1
        if tok.name in _COMMENTS:
            gap += " "  # a comment separates tokens like whitespace does
            continue
        if gap.strip():  # text the scanner skipped that is not whitespace: do not guess
            raise ValueError("unexpected text between tokens")
        if out and gap:
            out.append("\n" if "\n" in gap else " ")
        out.append(sql[tok.start : pos])
        gap = ""
    return "".join(out)


def pretty_sql(text: str) -> str:
    """SQL as an approver should read it: comments left out, re-indented when it parses."""
    if len(text) <= _MAX_SCAN:
        with contextlib.suppress(Exception):  # not scannable: the printer may still do
            text = strip_comments(text)
    if len(text) <= 2 * MAX_COMMAND:
        try:
            from hoopy.protocols.postgres import pgquery

            return pgquery.pretty(text)  # printed from the tree: comments are dropped
        except Exception:  # not parseable, or not printed faithfully: show it as it is
            return text
    return text


def pretty_command(a: Approval) -> str:
    """The command as an approver should read it (SQL without comments, re-indented).
    The values it runs with are not part of it: see `_values_section`."""
    text = a.command.strip()
    return pretty_sql(text) if a.protocol == "postgres" else text


def clip_code(
    command: str, limit: int = MAX_COMMAND, max_lines: int = MAX_LINES
) -> tuple[str, bool]:
    """A mrkdwn code block of at most `limit` escaped characters, and whether it was cut."""
    lines = command.splitlines()
    cut = len(lines) > max_lines
    out: list[str] = []
    size = 0
    for ch in "\n".join(lines[:max_lines]):
        safe = escape(ch)
        if size + len(safe) > limit:
            cut = True
            break
        out.append(safe)
        size += len(safe)
    # Runs of backticks would close the fence: break them with zero-width spaces.
    body = re.sub(r"`(?=`)", "`\u200b", "".join(out))
    return f"```\n{body}\n```", cut


def _expiry(a: Approval) -> str:
    fallback = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(a.expires))
    minutes = max(1, round((a.expires - a.created) / 60))
    return f"<!date^{int(a.expires)}^{{date_short_pretty}} {{time}}|{fallback}> ({minutes} min)"


def _who(decided_by: str) -> str:
    m = re.fullmatch(r"slack:([A-Z0-9]+)(?: \(.*\))?", decided_by)
    return f"<@{m.group(1)}>" if m else escape(decided_by or "an approver")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.3g} h"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def _whole_hint(a: Approval, what: str) -> str:
    return (
        f"\n:warning: *{what}* Read it whole with `hoopy approvals show {a.id}` or "
        f"`GET /api/approvals/{a.id}`" + (" before deciding." if a.state == PENDING else ".")
    )


def _command_section(a: Approval) -> tuple[dict[str, Any], bool]:
    # Only what can be shown is scanned (a longer text is cut all the same).
    shown = showsafe.reveal(pretty_command(a)[: 2 * MAX_COMMAND + 1])
    block, cut = clip_code(shown)
    if cut:
        block += _whole_hint(
            a, f"This command is truncated ({len(a.command):,} characters as sent)."
        )
    return _section(block), cut


def _values_section(a: Approval) -> tuple[list[dict[str, Any]], bool]:
    """The values the command runs with, in a block of their own (the agent's text
    cannot produce this heading), each whole or marked cut."""
    if not a.values:
        return [], False
    cut = len(a.values) > MAX_VALUES
    lines = []
    for v in a.values[:MAX_VALUES]:
        shown = showsafe.reveal(v[: MAX_VALUE + 1]).replace("\n", "\\n")
        if len(shown) > MAX_VALUE:
            shown, cut = shown[: MAX_VALUE - 1] + "…", True
        lines.append(shown)
    block, clipped = clip_code("\n".join(lines), max_lines=MAX_VALUES)
    cut = cut or clipped
    head = f"*It runs with these {len(a.values)} value(s):*\n"
    if cut:
        block += _whole_hint(a, "These values are truncated.")
    return [_section(head + block)], cut


def _notes_section(a: Approval) -> list[dict[str, Any]]:
    found = showsafe.notes([a.command, *a.values, a.subject, a.issuer, *a.groups])
    if not found:
        return []
    text = ":warning: *Read closely:* it contains " + "; ".join(found)
    return [_section(escape(_clip(text, MAX_COMMAND)))]


def shown_whole(a: Approval) -> bool:
    """Does Slack show everything that runs (the command and its values) uncut?  Only
    then is Approve offered there."""
    return not (_command_section(a)[1] or _values_section(a)[1])


def _reuse_sections(a: Approval) -> tuple[list[dict[str, Any]], bool]:
    """What a reuse grant also releases: said before anyone approves, and after."""
    if a.reuse_for <= 0 or a.state not in (PENDING, APPROVED):
        return [], False
    shape = a.fingerprint or a.command
    shown = pretty_sql(shape) if a.protocol == "postgres" else shape
    block, cut = clip_code(showsafe.reveal(shown), MAX_SHAPE)
    lead = "Approving also allows" if a.state == PENDING else "This approval also allows"
    text = (
        f":repeat: *{lead}* every statement of this shape (literals may differ) by "
        f"{escape(_agent(a))} on {escape(_clip(a.connector, 100))} "
        f"for {_duration(a.reuse_for)}, without asking again:\n{block}"
    )
    return [_section(text + ("\n_(truncated)_" if cut else ""))], cut


def _details(a: Approval) -> tuple[list[dict[str, Any]], bool]:
    """The request's details, and whether any text in them had to be cut."""
    groups = ", ".join(a.groups) or "no groups"
    fields = [
        ("Requested by", f"{a.subject} ({groups})"),
        ("Token issuer", a.issuer or "(unknown)"),
        ("Where", f"{a.connector} ({a.protocol})"),
        ("Rule", a.rule or "(unnamed)"),
        ("Approvers", ", ".join(a.approvers) or "(none)"),
    ]
    command, cut = _command_section(a)
    values, values_cut = _values_section(a)
    reuse, reuse_cut = _reuse_sections(a)
    summary = {
        "type": "section",
        "fields": [
            {"type": "mrkdwn", "text": f"*{k}*\n{escape(_one_line(_clip(v)))}"} for k, v in fields
        ]
        + [{"type": "mrkdwn", "text": f"*Expires*\n{_expiry(a)}"}],
    }
    notes = _notes_section(a)
    return [summary, command, *values, *notes, *reuse], cut or values_cut or reuse_cut


def _agent(a: Approval) -> str:
    """Who asked, as approvers read it: the subject and the issuer vouching for it."""
    who = _one_line(_clip(a.subject, 100))
    return f"{who} (of {_one_line(_clip(a.issuer, 100))})" if a.issuer else who


def _one_line(text: str) -> str:
    """A field on one line: a subject with a newline could forge the next field."""
    return showsafe.reveal(text).replace("\n", "\\n").replace("\t", "\\t")


def request_text(a: Approval) -> str:
    reuse = f"; approving allows its shape for {_duration(a.reuse_for)}" if a.reuse_for > 0 else ""
    return escape(
        f"Approval {a.id} requested: {_agent(a)} wants to run a {a.protocol} "
        f"command on {a.connector} (rule {a.rule}{reuse})"
    )


def _button(a: Approval, action_id: str, label: str, style: str) -> dict[str, Any]:
    return {
        "type": "button",
        "value": a.id,
        "action_id": action_id,
        "style": style,
        "text": {"type": "plain_text", "text": label},
    }


def request_blocks(a: Approval) -> list[dict[str, Any]]:
    """The pending message: details, command, and the buttons — no Approve for a command
    the approver cannot read whole here."""
    details, cut = _details(a)
    deny = _button(a, DENY_ACTION, "Deny", "danger")
    if cut:
        elements = [deny]
        hint = (
            "Approve is offered only for a command shown in full: read it, then an admin "
            f"runs `hoopy approvals approve {a.id}` (with the admin token) or uses the admin API"
        )
    else:
        elements = [_button(a, APPROVE_ACTION, "Approve", "primary"), deny]
        hint = f"or an admin runs `hoopy approvals approve {a.id}` (with the admin token)"
    return [
        {"type": "header", "text": {"type": "plain_text", "text": f"Approval {a.id} requested"}},
        *details,
        {"type": "actions", "block_id": ACTIONS_BLOCK, "elements": elements},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": hint}]},
    ]


_OUTCOMES = {
    APPROVED: ":white_check_mark: *Approved*",
    DENIED: ":no_entry: *Denied*",
    EXPIRED: ":hourglass: *Expired* without a decision",
    CANCELLED: ":heavy_multiplication_x: *Cancelled*",
}


def outcome_line(a: Approval) -> str:
    line = _OUTCOMES.get(a.state, f"*{escape(a.state)}*")
    if a.state in (APPROVED, DENIED):
        line += f" by {_who(a.decided_by)}"
    if a.reason:
        line += f": {escape(_clip(a.reason))}"
    return line


def decided_text(a: Approval) -> str:
    by = f" by {a.decided_by}" if a.state in (APPROVED, DENIED) and a.decided_by else ""
    return escape(f"Approval {a.id} {a.state}{by}")


def decided_blocks(a: Approval) -> list[dict[str, Any]]:
    """The final message: the same details, the outcome instead of the buttons."""
    return [
        {"type": "header", "text": {"type": "plain_text", "text": f"Approval {a.id}"}},
        *_details(a)[0],
        _section(outcome_line(a)),
    ]


# ---- the notifier ---------------------------------------------------------------------


class SlackNotifier:
    """Posts approval requests to `config.channel` and updates them once decided."""

    def __init__(self, config: SlackConfig, client: AsyncWebClient | None = None) -> None:
        self.config = config
        self.client = client if client is not None else make_client(config)

    def describe(self) -> str:
        ch = self.config.channel
        return f"in {ch}" if ch.startswith("#") else f"in Slack channel {ch}"

    async def requested(self, a: Approval) -> str:
        async with asyncio.timeout(_DEADLINE):
            resp = await self.client.chat_postMessage(
                channel=self.config.channel,
                text=request_text(a),
                blocks=request_blocks(a),
                unfurl_links=False,
                unfurl_media=False,
            )
        # Slack answers with the channel's id, which chat.update requires.
        return json.dumps({"channel": resp["channel"], "ts": resp["ts"]})

    async def decided(self, a: Approval) -> None:
        try:
            ref = json.loads(a.notice)
            channel, ts = str(ref["channel"]), str(ref["ts"])
        except (ValueError, TypeError, KeyError):
            return  # never announced (Slack was down): nothing to update
        async with asyncio.timeout(_DEADLINE):
            await self.client.chat_update(
                channel=channel, ts=ts, text=decided_text(a), blocks=decided_blocks(a)
            )


# ---- interactivity --------------------------------------------------------------------


@dataclass(frozen=True)
class Click:
    """One press of a hoopy button, as Slack reported it."""

    approval_id: str
    approve: bool
    user_id: str
    username: str
    channel: str

    @property
    def by(self) -> str:
        return (
            f"slack:{self.user_id} ({self.username})" if self.username else f"slack:{self.user_id}"
        )


@dataclass(frozen=True)
class Outcome:
    """What a click did.  `reply` is told to the clicker alone (ephemeral), if non-empty."""

    result: str  # approved | denied | not_approver | own_request | already_decided | …
    click: Click | None = None
    reply: str = ""
    approval: Approval | None = None

    def info(self, transport: str) -> dict[str, Any]:
        c = self.click
        return {
            "user": c.user_id if c else "",
            "username": c.username if c else "",
            "action": ("approve" if c.approve else "deny") if c else "",
            "outcome": self.result,
            "transport": transport,
        }


def _str(d: Any, key: str) -> str:
    v = d.get(key) if isinstance(d, Mapping) else None
    return v if isinstance(v, str) else ""


def parse_click(payload: Mapping[str, Any]) -> Click | None:
    """The hoopy button press in a `block_actions` payload, or None."""
    if payload.get("type") != "block_actions":
        return None
    user = payload.get("user")
    user_id = _str(user, "id")
    actions = payload.get("actions")
    if not user_id or not isinstance(actions, list):
        return None
    for action in actions:
        action_id, value = _str(action, "action_id"), _str(action, "value")
        if action_id in (APPROVE_ACTION, DENY_ACTION) and 0 < len(value) <= _MAX_ID:
            channel = _str(payload.get("channel"), "id") or _str(
                payload.get("container"), "channel_id"
            )
            username = _str(user, "username") or _str(user, "name")
            return Click(value, action_id == APPROVE_ACTION, user_id, username, channel)
    return None


def approver_groups(approvers: Mapping[str, Sequence[str]], user_id: str) -> set[str]:
    """The approver groups a Slack user id belongs to."""
    return {g for g, ids in approvers.items() if user_id in ids}


class SlackInteractions:
    """Slack button clicks → `ApprovalService.decide()`, for HTTP and Socket Mode."""

    def __init__(
        self,
        service: ApprovalService,
        config: SlackConfig,
        client: AsyncWebClient | None = None,
        on_click: ClickCallback | None = None,
    ) -> None:
        self.service = service
        self.config = config
        self.client = client if client is not None else make_client(config)
        self.on_click = on_click
        self._verifier = SignatureVerifier(config.signing_secret.get())
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- the core (no Slack I/O) ----
    def handle_action(self, payload: Mapping[str, Any]) -> Outcome:
        click = parse_click(payload)
        if click is None:
            return Outcome(IGNORED)
        refused = self._refusal(click, self.service.store.get(click.approval_id))
        if refused is not None:
            return Outcome(refused[0], click, refused[1])
        done = self.service.decide(click.approval_id, click.approve, by=click.by)
        if done is None:  # someone else was faster
            return Outcome(
                ALREADY_DECIDED, click, f"Approval {click.approval_id} was already decided."
            )
        return Outcome(done.state, click, "", done)

    def _refusal(self, click: Click, a: Approval | None) -> tuple[str, str] | None:
        aid = click.approval_id
        if a is None:
            return UNKNOWN, f"Approval {escape(aid)} is unknown to this gateway."
        me = {click.user_id.casefold(), click.username.casefold()} - {""}
        # Slack users are not OIDC identities: a clicker whose id or name is the
        # requester's subject *under any issuer* is refused (stricter, never looser).
        if a.subject.casefold() in me:
            return OWN_REQUEST, f"You requested {aid}; someone else has to approve or deny it."
        mine = approver_groups(self.config.approvers, click.user_id) & set(a.approvers)
        if not mine:
            wanted = ", ".join(a.approvers) or "(none)"
            return NOT_APPROVER, f"You are not an approver for group {wanted}, so {aid} stays open."
        if a.state != PENDING:
            return ALREADY_DECIDED, f"Approval {aid} was already {a.state}."
        if a.expires <= self.service.clock():
            return EXPIRED_CLICK, f"Approval {aid} has expired."
        if click.approve and not shown_whole(a):  # e.g. a button from an older message
            return TRUNCATED, (
                f"Approval {aid} shows its command or values truncated: read them whole with "
                f"`hoopy approvals show {aid}` and approve it there."
            )
        return None

    # ---- what every transport does after the core ----
    async def deliver(self, outcome: Outcome, transport: str) -> None:
        """Report the click to `on_click` and tell a refused clicker why."""
        click = outcome.click
        if click is None:
            return
        log.info("slack click on %s by %s: %s", click.approval_id, click.user_id, outcome.result)
        if self.on_click is not None:
            try:
                self.on_click(click.approval_id, outcome.info(transport))
            except Exception as e:
                log.error(
                    "slack click on %s: on_click failed: %s", click.approval_id, type(e).__name__
                )
        if outcome.reply and click.channel:
            try:
                async with asyncio.timeout(_DEADLINE):
                    await self.client.chat_postEphemeral(
                        channel=click.channel, user=click.user_id, text=outcome.reply
                    )
            except Exception as e:
                log.error(
                    "slack click on %s: ephemeral failed: %s", click.approval_id, type(e).__name__
                )

    # ---- HTTP transport ----
    async def handle(self, request: web.Request) -> web.Response:
        """`POST /slack/interactions`: verify, decide, answer 200 at once."""
        body = await request.read()
        if not self._signed(body, request.headers):
            log.warning("slack interaction with a bad or stale signature from %s", request.remote)
            return web.Response(status=401, text="invalid signature\n")
        payload = _form_payload(body)
        if payload is None:
            return web.Response(status=400, text="expected a form field 'payload' with JSON\n")
        outcome = self.handle_action(payload)
        if outcome.click is not None:
            task = asyncio.get_running_loop().create_task(self.deliver(outcome, "http"))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.Response(status=200)

    def _signed(self, body: bytes, headers: Mapping[str, str]) -> bool:
        try:  # a non-numeric timestamp or non-UTF-8 body raises inside the verifier
            return self._verifier.is_valid_request(body, dict(headers))
        except Exception:
            return False

    async def close(self) -> None:
        """Let in-flight ephemeral replies finish (bounded)."""
        for t in list(self._tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, _DEADLINE)


def _form_payload(body: bytes) -> dict[str, Any] | None:
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8"), strict_parsing=True, max_num_fields=20)
        payload = json.loads(form["payload"][0])
    except (ValueError, KeyError, IndexError):
        return None
    return payload if isinstance(payload, dict) else None


# ---- Socket Mode transport ------------------------------------------------------------


class SlackSocketMode:
    """Receives clicks over Slack's Socket Mode WebSocket (no public ingress needed)."""

    def __init__(self, interactions: SlackInteractions, app_token: str | None = None) -> None:
        self.interactions = interactions
        if app_token is None:
            secret = interactions.config.app_token
            if secret is None:
                raise ValueError("slack.app_token is required for Socket Mode")
            app_token = secret.get()
        self._app_token = app_token
        self._client: Any = None

    async def start(self) -> None:
        # Imported here: the module creates an aiohttp session on construction.
        from slack_sdk.socket_mode.aiohttp import SocketModeClient

        self._client = SocketModeClient(
            app_token=self._app_token, web_client=self.interactions.client, logger=log
        )
        self._client.socket_mode_request_listeners.append(self.on_request)
        await self._client.connect()

    async def on_request(self, client: Any, req: SocketModeRequest) -> None:
        """Acknowledge every envelope (else Slack redelivers), act on `interactive` ones."""
        await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
        if req.type != "interactive":
            return
        outcome = self.interactions.handle_action(req.payload)
        await self.interactions.deliver(outcome, "socket")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
