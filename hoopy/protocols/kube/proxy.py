"""The Kubernetes listener: kubectl → hoopy (HTTPS, aiohttp) → the connector's cluster.

Theory of operation: `/k8s/<connector>/` selects the connector and is stripped.
Every request carries the agent's OIDC token as a bearer token; validations are
cached by the token's hash until its `exp`, never beyond.  An admitted identity
gets one recorded session per connector, reused by its requests until it has been
idle for `idle` seconds, so a burst of kubectl calls is one session.  Each request
becomes a RequestInfo (requestinfo.py, refusing path tricks first), then a
`Command` that goes through `session.check` (deny → 403 Status naming the rule,
approval → the request waits).  Allowed requests are forwarded with hoopy's own
credential for the cluster; the agent's Authorization and any Impersonate-*
headers never reach it.  Responses pass through as they stream, unless hoopy must
read them (Secrets, mask rules, cross-namespace filtering): then it asks the
cluster for JSON and rewrites each object, list, table or watch event
(bodies.py).  exec/attach go through the WebSocket relay (execrelay.py).

This module holds the listener (connections, token admission, sessions) and each
request's policy path (`_Request.run`); what follows a decision is in forward.py
(plain requests and their answers) and upgrades.py (exec, attach, port-forward),
over the per-request state in exchange.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import re
import ssl
import time
import weakref
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from hoopy import shellsecrets
from hoopy.config import KubeConnector
from hoopy.errors import (
    AuthFailed,
    BackendUnavailable,
    CommandDenied,
    HoopyError,
    ProtocolError,
    UnknownConnector,
)
from hoopy.gateway import Gateway
from hoopy.httpguard import GuardedServer
from hoopy.masking import ValueMasker
from hoopy.policy import Identity
from hoopy.protocols.kube import h1server
from hoopy.protocols.kube.bodies import BodyError, body_names
from hoopy.protocols.kube.commands import (
    Visibility,
    cached_command,
    filters,
    generated,
    judge_write,
    parsed,
)
from hoopy.protocols.kube.exchange import MAX_BODY, SYSTEM, _AnyAnswer, _AnyRequest, _TooLarge
from hoopy.protocols.kube.forward import PARENT_ANSWERS, Forwarding, _read_all
from hoopy.protocols.kube.podcmds import Site, resolve, write_sites
from hoopy.protocols.kube.requestinfo import PathRejected, RequestInfo
from hoopy.protocols.kube.status import status, status_for
from hoopy.protocols.kube.upgrades import Upgrades
from hoopy.protocols.kube.upstream import KubeconfigError, Upstream, load
from hoopy.session import Session
from hoopy.shell import ShellReading

log = logging.getLogger("hoopy.kube")

_PREFIX = re.compile(r"/k8s/([A-Za-z0-9][A-Za-z0-9._-]{0,252})(/[^?]*)?\Z")
_DISCOVERY = re.compile(r"/(api|apis|version|openapi|healthz|livez|readyz)(/[^?]*)?\Z")
TOKEN_CACHE = 10000


@dataclass
class _Live:
    session: Session
    last: float
    inflight: int = 0
    filters: bool = False  # do namespace / name rules make lists need filtering?
    names: bool = False  # do name rules apply (a deletecollection has no name to judge)?
    scoped_masks: bool = False  # do mask rules scoped to namespaces or names apply?
    maskers: dict[tuple[tuple[str, ...], str], ValueMasker] = field(default_factory=dict)


class KubeListener:
    def __init__(self, gw: Gateway, tls: ssl.SSLContext, idle: float = 60.0) -> None:
        self.gw = gw
        self.tls = tls
        self.idle = idle
        self.upstreams: dict[str, Upstream] = {}
        self._tokens: dict[str, Identity] = {}
        self._admitted: dict[tuple[str, str, frozenset[str], str], KubeConnector] = {}
        self._live: dict[tuple[str, str, frozenset[str], str], _Live] = {}
        # Writes carrying container commands, one at a time per object: each is judged
        # on the object as the one before it left it (two patches, each half of a
        # command, cannot both be judged against the object before either ran)
        self.objects: weakref.WeakValueDictionary[tuple[str, str], asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        self._runner: web.ServerRunner | None = None
        self._server: asyncio.AbstractServer | None = None
        self._plain: set[h1server.Connection] = set()  # connections h1server serves
        self._reaper: asyncio.Task[None] | None = None
        self.clock = time.time  # token expiry is judged on this clock

    async def start(self, host: str, port: int) -> int:
        # Connections start on h1server (plain GETs); at their first other request they
        # go to a bare aiohttp web.Server: every path is this one handler's (no router,
        # no middlewares), with bounded request heads (httpguard)
        server = GuardedServer(self._handle_web, access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False)
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: h1server.Connection(self.handle, server, self._plain),
            host,
            port,
            ssl=self.tls,
            backlog=512,
        )
        self._reaper = loop.create_task(self._reap())
        return int(self._server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self._plain):
            conn.close()
        if self._runner is not None:
            await self._runner.cleanup()
        for key in list(self._live):
            self._end(key)
        for up in self.upstreams.values():
            await up.close()

    # ---- sessions -----------------------------------------------------------------
    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(max(0.5, min(5.0, self.idle / 4)))
            now = time.monotonic()
            for key, live in list(self._live.items()):
                if live.inflight == 0 and now - live.last >= self.idle:
                    self._end(key)

    def _end(self, key: tuple[str, str, frozenset[str], str]) -> None:
        live = self._live.pop(key, None)
        if live is None:
            return
        s = live.session
        try:
            s.log.close("closed", commands=s.commands, denied=s.denied)
        except Exception as e:
            log.error("cannot end kubernetes session %s: %s", s.id, e)

    def _session(self, identity: Identity, connector: str, client: str) -> _Live:
        key = (identity.issuer, identity.subject, identity.groups, connector)
        live = self._live.get(key)
        if live is not None and live.session.log.closed:
            self._live.pop(key, None)
            live = None
        if live is None:
            session = self.gw.open_session(identity, connector, "kubernetes", client, True)
            session.hide = shellsecrets.hidden  # an exec's command line
            live = _Live(
                session,
                time.monotonic(),
                filters=filters(session),
                names=filters(session, ("names",)),
                scoped_masks=filters(session, masks=True),
            )
            self._live[key] = live
        elif identity.expires_at > live.session.identity.expires_at:
            live.session.identity = identity  # the agent's newer token of the same identity
        return live

    async def _identity(self, request: _AnyRequest) -> Identity:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthFailed("a bearer token is required (kubectl --token or a kubeconfig user)")
        if not token.isascii():  # (a JWT is ASCII; bytes that are not UTF-8 would not encode)
            raise AuthFailed("token rejected: not a JWT (characters outside ASCII)")
        key = hashlib.sha256(token.strip().encode()).hexdigest()
        hit = self._tokens.get(key)
        if hit is not None and self.clock() < hit.expires_at:
            return hit
        identity = await self.gw.authenticate(token.strip())
        if len(self._tokens) >= TOKEN_CACHE:
            now = self.clock()
            self._tokens = {k: v for k, v in self._tokens.items() if v.expires_at > now}
            if len(self._tokens) >= TOKEN_CACHE:
                self._tokens.clear()
        self._tokens[key] = identity
        return identity

    def _admit(self, identity: Identity, name: str) -> KubeConnector:
        """gw.admit, remembered: it depends only on who it is and the policies, which
        do not change while hoopy runs (the token itself is checked every request)."""
        key = (identity.issuer, identity.subject, identity.groups, name)
        connector = self._admitted.get(key)
        if connector is None:
            admitted = self.gw.admit(identity, name, "kubernetes")
            assert isinstance(admitted, KubeConnector)
            if len(self._admitted) >= TOKEN_CACHE:
                self._admitted.clear()
            connector = self._admitted[key] = admitted
        return connector

    def upstream(self, connector: KubeConnector) -> Upstream:
        up = self.upstreams.get(connector.name)
        if up is None:
            try:
                up = self.upstreams[connector.name] = load(connector)
            except KubeconfigError as e:
                log.error("%s", e)
                raise BackendUnavailable(
                    f"connector {connector.name} is misconfigured (see the gateway log)"
                ) from None
        return up

    # ---- requests -----------------------------------------------------------------
    async def _handle_web(self, request: web.BaseRequest) -> web.StreamResponse:
        out = await self.handle(request)
        assert isinstance(out, web.StreamResponse)  # (an aiohttp request gets aiohttp's)
        return out

    async def handle(self, request: _AnyRequest) -> _AnyAnswer:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        client = f"{peer[0]}:{peer[1]}" if peer else "unknown"
        path, _, query = request.raw_path.partition("?")
        m = _PREFIX.match(path)
        if m is None:
            return status(404, "NotFound", "hoopy serves Kubernetes under /k8s/<connector>/")
        name, rest = m.group(1), m.group(2) or "/"
        identity: Identity | None = None
        try:
            identity = await self._identity(request)
            connector = self._admit(identity, name)
        except HoopyError as e:
            if not isinstance(e, UnknownConnector):
                self.gw.record_rejection("kubernetes", client, name, e.message, True, identity)
            return status_for(e)
        try:
            live = self._session(identity, name, client)
        except HoopyError as e:  # the recorder cannot open a session: refused
            return status_for(e)
        live.inflight += 1
        try:
            req = _Request(self, live, connector, request, rest, query)
            req.expires_at = identity.expires_at  # this request's own token
            try:
                return await req.run()
            finally:
                if req.held is not None:
                    req.held.release()
        except HoopyError as e:
            return status_for(e)
        finally:
            live.inflight -= 1
            live.last = time.monotonic()


class _Request(Forwarding, Upgrades):
    """One request: judged by the policy, then forwarded or relayed."""

    held: asyncio.Lock | None = None  # the object's lock, for a write carrying commands

    async def run(self) -> _AnyAnswer:
        try:
            q, info = parsed(self.request.method, self.path, self.query)
        except PathRejected as e:
            self.status, self.decision = 400, "refused"
            self.session.record(
                "refused", method=self.request.method, path=self.path[:512], reason=str(e)
            )
            return status(400, "BadRequest", f"hoopy refused the request path: {e}")
        if self.connector.impersonate and self.session.identity.subject.startswith(SYSTEM):
            # Kubernetes' own users (nodes, controllers, service accounts): never the agent
            self.status, self.decision = 403, "refused"
            self._record(info, reason="impersonation of a system: user")
            return status(
                403,
                "Forbidden",
                f"hoopy will not impersonate {self.session.identity.subject[:80]!r}: "
                "system: users are the cluster's own",
            )
        if not info.is_resource:
            return await self._non_resource(info)
        if info.verb == "proxy" or info.subresource == "proxy":
            # Every method of */proxy reaches a pod, service or kubelet with nothing
            # hoopy can read or mask: refused whatever the method (not only GET).
            self.status, self.decision = 403, "refused"
            self._record(info)
            return status(
                403,
                "Forbidden",
                f"hoopy does not relay the API server's proxy ({info.full_resource or 'proxy'})",
            )
        name = generate = ""
        ctype = self.request.headers.get("Content-Type", "")
        if self.request.method in ("POST", "PUT", "PATCH") and not info.connect:
            # the name of what is created, and the commands any write would have the
            # cluster run (podcmds.py), are in the body: the policy judges them
            try:
                self.early, self.read_early = await self._body(info), True
            except _TooLarge:
                self.status, self.decision = 413, "refused"
                self._record(info)
                return status(413, "RequestEntityTooLarge", f"request body over {MAX_BODY} bytes")
        if info.verb == "create" and not info.name and not info.connect:
            try:
                name, generate = body_names(ctype, self.early or b"")
            except BodyError as e:
                raise self._bad_body(info, e) from None
            if name or generate:
                info = dataclasses.replace(info, name=name or generate)
        command = cached_command(self.connector.name, info, q, self.request.method, self.query)
        if info.verb == "create" and not name and generate:
            command = generated(command)
        judged = None
        if self.early:
            try:
                sites = write_sites(
                    ctype, self.early, self.request.method, info.resource, info.subresource
                )
            except BodyError as e:
                raise self._bad_body(info, e) from None
            if sites:
                where = f"{info.group}/{info.resource}/{info.namespace}/{info.name}"
                key = (self.connector.name, where)
                lock = self.listener.objects.setdefault(key, asyncio.Lock())
                await lock.acquire()
                self.held = lock  # (released once the answer is sent: KubeListener.handle)
            if any(site.need for site in sites):
                sites = await self._completed(info, sites)
            if sites:
                command, judged = judge_write(self.session, command, sites)
        try:
            decision = await self.session.check(command, decision=judged)
        except CommandDenied as e:
            self.status, self.decision = 403, "deny"
            self._record(info)
            msg = e.message
            if (
                not info.namespace
                and info.verb in ("list", "watch")
                and info.resource != "namespaces"
            ):
                msg += (
                    " (a cluster-wide list or watch needs an allow rule without namespaces;"
                    " use -n NAMESPACE)"
                )
            raise CommandDenied(msg, e.rule) from None
        self.decision = decision.outcome
        transport = self.request.transport
        if transport is None or transport.is_closing():  # gave up while it waited
            self.status, self.decision = 499, "abandoned"
            self._record(info)
            raise ProtocolError("the client went away before the request could run")
        if info.subresource in PARENT_ANSWERS and info.verb in ("get", "list", "watch"):
            self._parent_read(info)
        if info.verb == "deletecollection" and not info.namespace and self.live.filters:
            # hoopy cannot take the governed namespaces' objects out of a cluster-wide delete
            self.status, self.decision = 403, "deny"
            self._record(info)
            raise CommandDenied(
                "a cluster-wide deletecollection is refused while namespace or name rules "
                "apply to you: delete in one namespace (-n NAMESPACE)"
            )
        if info.verb == "deletecollection" and self.live.names and not info.name:
            # nor the protected names' objects out of a delete of a whole collection
            self.status, self.decision = 403, "deny"
            self._record(info)
            raise CommandDenied(
                "a deletecollection is refused while name rules apply to you: "
                "delete objects by name"
            )
        if info.connect:
            return await self._connect(info, q, decision)
        return await self._forward(info, decision)

    async def _completed(self, info: RequestInfo, sites: list[Site]) -> list[Site]:
        """Sites of a patch that sets a container's command and not its args (or the
        reverse), completed by the object as the cluster has it now (read with hoopy's
        credential, never shown to the agent); one hoopy cannot read stays judged on the
        patch's own words, and opaque."""
        up = self.listener.upstream(self.connector)
        path = self.path.rsplit("/" + info.subresource, 1)[0] if info.subresource else self.path
        target = up.prefix + path
        try:
            async with up.pool().request("GET", target, self._headers(True), None) as resp:
                raw = await _read_all(resp)
                code = resp.status
            current = json.loads(raw) if code == 200 else None
            if code not in (200, 404) or not isinstance(current, (dict, type(None))):
                raise ValueError(f"status {code}")
        except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError, HoopyError) as e:
            log.warning("connector %s: cannot read the patched object: %s", self.connector.name, e)
            why = "unparseable: hoopy could not read the object this patch completes"
            return [
                dataclasses.replace(s, reading=ShellReading(s.reading.text, s.reading.commands,
                                                            (*s.reading.opaque, why)))
                if s.need else s
                for s in sites
            ]  # fmt: skip
        return resolve(sites, current)

    def _parent_read(self, info: RequestInfo) -> None:
        """Reading pods/status (or ephemeralcontainers) shows the whole pod: refused
        (CommandDenied) unless the same read of the pod itself would be allowed."""
        parent = Visibility(self.session, dataclasses.replace(info, subresource=""))
        decision = parent.decision(info.namespace, info.name)
        if decision.outcome != "allow":
            self.status, self.decision = 403, "deny"
            self._record(info, reason=f"{info.resource} {decision.outcome}")
            raise CommandDenied(
                f"{info.full_resource} answers the whole object, and {info.verb} "
                f"{info.resource} is not allowed: {decision.message()}",
                decision.rule,
            )

    async def _non_resource(self, info: RequestInfo) -> _AnyAnswer:
        if self.request.method not in ("GET", "HEAD") or not _DISCOVERY.match(self.path):
            self.status, self.decision = 403, "deny"
            self.session.record(
                "refused",
                method=self.request.method,
                path=self.path[:512],
                reason="non-resource URL outside discovery",
            )
            return status(
                403,
                "Forbidden",
                f"hoopy forwards only discovery among non-resource URLs, not {self.path}",
            )
        self.decision = "discovery"
        return await self._forward(info, None)
