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
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from yarl import URL

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
from hoopy.policy import Decision, Identity
from hoopy.protocols.kube import execrelay, h1, h1server, pfrelay
from hoopy.protocols.kube.bodies import BodyError, Inspector, body_names, body_namespace
from hoopy.protocols.kube.commands import (
    Visibility,
    cached_command,
    filters,
    generated,
    parsed,
)
from hoopy.protocols.kube.liststream import ListError, ListStream
from hoopy.protocols.kube.requestinfo import (
    PathRejected,
    RequestInfo,
    go_bool,
    parse_query,
)
from hoopy.protocols.kube.status import status, status_for
from hoopy.protocols.kube.upstream import KubeconfigError, Upstream, load
from hoopy.session import Session

log = logging.getLogger("hoopy.kube")

_PREFIX = re.compile(r"/k8s/([A-Za-z0-9][A-Za-z0-9._-]{0,252})(/[^?]*)?\Z")
_DISCOVERY = re.compile(r"/(api|apis|version|openapi|healthz|livez|readyz)(/[^?]*)?\Z")
# Request headers forwarded to the cluster: nothing that authenticates or impersonates.
_FORWARD = ("Accept", "Content-Type", "User-Agent", "Kubectl-Command", "Kubectl-Session")
_RETURN = ("Content-Type", "Cache-Control", "Warning", "Audit-Id", "Retry-After")
MAX_BODY = 8 * 1024 * 1024  # request bodies (kube-apiserver's own limit is 3 MiB)
MAX_INSPECTED = 256 * 1024 * 1024  # a response hoopy must read whole
# List answers larger than this (or of unknown length) that hoopy must inspect are
# rewritten item by item as they arrive rather than read whole.
STREAM_LISTS_OVER = 1024 * 1024
RECORD_BODY = 4096  # bytes of each answer kept in the recording
SMALL = 1024 * 1024  # a passthrough answer this small is sent in one piece
MAX_LINE = 16 * 1024 * 1024  # one watch event / log line hoopy must read
TOKEN_CACHE = 10000
# Resources whose objects hoopy rewrites when masking applies.
_DETECTED = (
    "configmaps",
    "pods",
    "deployments",
    "statefulsets",
    "daemonsets",
    "jobs",
    "replicasets",
)

# The kind each inspected resource holds (list items come without theirs).
_KINDS = {
    ("", "secrets"): "Secret",
    ("", "configmaps"): "ConfigMap",
    ("", "pods"): "Pod",
    ("", "namespaces"): "Namespace",
    ("apps", "deployments"): "Deployment",
    ("apps", "statefulsets"): "StatefulSet",
    ("apps", "daemonsets"): "DaemonSet",
    ("apps", "replicasets"): "ReplicaSet",
    ("batch", "jobs"): "Job",
}


class _Out(Protocol):
    """A streamed answer: aiohttp's StreamResponse or h1server's Stream."""

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self) -> None: ...


# What the listener's handler gets (aiohttp's request, or h1server's for a plain GET)
# and gives back (for a plain GET: h1server's Answer or Stream, or a web.Response).
_AnyRequest = web.BaseRequest | h1server.PlainRequest
_AnyAnswer = web.StreamResponse | h1server.Answer | h1server.Stream


@dataclass
class _Live:
    session: Session
    last: float
    inflight: int = 0
    filters: bool = False  # do namespace / name rules make lists need filtering?
    names: bool = False  # do name rules apply (a deletecollection has no name to judge)?
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
            live = _Live(
                session,
                time.monotonic(),
                filters=filters(session),
                names=filters(session, ("names",)),
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
            return await req.run()
        except HoopyError as e:
            return status_for(e)
        finally:
            live.inflight -= 1
            live.last = time.monotonic()


class _Request:
    def __init__(
        self,
        listener: KubeListener,
        live: _Live,
        connector: KubeConnector,
        request: _AnyRequest,
        path: str,
        query: str,
    ) -> None:
        self.listener = listener
        self.live = live
        self.session = live.session
        self.connector = connector
        self.request = request
        self.path = path
        self.query = query
        self.sent = 0
        self.capture: bytearray | None = None  # the start of the answer, for the recording
        self.status = 0
        self.decision = ""
        self.early: bytes | None = None  # a create's body, read before the policy check
        self.read_early = False
        # When the token this request came with expires (0: never); an exec or
        # port-forward stream ends then (the session may hold a newer token's identity)
        self.expires_at = 0.0

    def _record(self, info: RequestInfo | None, **extra: Any) -> None:
        fields: dict[str, Any] = {"method": self.request.method, "path": self.path}
        if info is not None and info.is_resource:
            fields.update(
                verb=info.verb,
                resource=info.full_resource,
                namespace=info.namespace,
                name=info.name,
            )
        fields.update(status=self.status, bytes=self.sent, decision=self.decision, **extra)
        if self.capture:
            fields["body"] = self.capture.decode("utf-8", "replace")
            fields["body_truncated"] = self.sent > len(self.capture)
        if self.status >= 400 or self.decision in ("deny", "refused"):
            self.session.record("request", **fields)  # refusals reach the disk at once
        else:  # the rest goes with the next command, or the gateway's flush each second
            self.session.record_later("request", fields)

    def _out(self, data: bytes) -> None:
        """Count what the agent is sent; keep its start for the recording."""
        self.sent += len(data)
        c = self.capture
        if c is not None and len(c) < RECORD_BODY:
            c += data[: RECORD_BODY - len(c)]

    async def run(self) -> _AnyAnswer:
        try:
            q, info = parsed(self.request.method, self.path, self.query)
        except PathRejected as e:
            self.status, self.decision = 400, "refused"
            self.session.record(
                "refused", method=self.request.method, path=self.path[:512], reason=str(e)
            )
            return status(400, "BadRequest", f"hoopy refused the request path: {e}")
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
        if info.verb == "create" and not info.name and not info.connect:
            # the name of what is created is in the body: name rules judge that one
            try:
                self.early, self.read_early = await self._body(info), True
            except _TooLarge:
                self.status, self.decision = 413, "refused"
                self._record(info)
                return status(413, "RequestEntityTooLarge", f"request body over {MAX_BODY} bytes")
            try:
                ctype = self.request.headers.get("Content-Type", "")
                name, generate = body_names(ctype, self.early or b"")
            except BodyError as e:
                raise self._bad_body(info, e) from None
            if name or generate:
                info = dataclasses.replace(info, name=name or generate)
        command = cached_command(self.connector.name, info, q, self.request.method, self.query)
        if info.verb == "create" and not name and generate:
            command = generated(command)
        try:
            decision = await self.session.check(command)
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

    async def _body(self, info: RequestInfo) -> bytes | None:
        if self.request.method not in ("POST", "PUT", "PATCH", "DELETE"):
            return None
        if not isinstance(self.request, web.BaseRequest):  # (h1server serves bodiless GETs)
            raise ProtocolError("a request body hoopy cannot read")
        if self.request.content_length is not None and self.request.content_length > MAX_BODY:
            raise _TooLarge()
        body = bytearray()
        async for chunk in self.request.content.iter_any():
            body += chunk
            if len(body) > MAX_BODY:
                raise _TooLarge()
        ctype = self.request.headers.get("Content-Type", "")
        if self.request.headers.get("Content-Encoding"):
            raise ProtocolError("hoopy does not accept encoded request bodies")
        try:
            names = body_namespace(ctype, bytes(body))
        except BodyError as e:
            raise self._bad_body(info, e) from None
        if any(n != info.namespace for n in names) and info.resource != "namespaces":
            raise ProtocolError(
                "the namespace of the request body does not match the namespace of the path"
            )
        return bytes(body)

    def _bad_body(self, info: RequestInfo, e: BodyError) -> ProtocolError:
        """A body hoopy cannot read as the cluster would: recorded, answered 400."""
        self.status, self.decision = 400, "refused"
        self._record(info, reason=str(e))
        return ProtocolError(str(e))

    def _inspector(self, info: RequestInfo, decision: Decision | None) -> Inspector | None:
        if decision is None or info.subresource not in ("", "status"):
            return None  # pods/log is masked line by line; other subresources are not objects
        masker = None
        if decision.masks and decision.masks.detectors and info.resource in (*_DETECTED, "secrets"):
            masker = self._masker(decision)
        visible = None
        # (even with a name: `fieldSelector=metadata.name=X` across namespaces is a list)
        if self.live.filters and info.verb in ("list", "watch"):
            visible = Visibility(self.session, info).visible
        mask_secrets = info.resource == "secrets" and self.connector.mask_secrets
        if masker is None and visible is None and not mask_secrets:
            return None
        return Inspector(
            mask_secrets=self.connector.mask_secrets,
            masker=masker,
            visible=visible,
            kind=_KINDS.get((info.group, info.resource), ""),
        )

    def _masker(self, decision: Decision) -> ValueMasker:
        key = (decision.masks.detectors, decision.masks.detector_style)
        masker = self.live.maskers.get(key)
        if masker is None:
            masker = ValueMasker(key[0], key[1], self.listener.gw.mask_key)
            self.live.maskers[key] = masker
        return masker

    def _headers(self, inspect: bool) -> list[tuple[str, str]]:
        """What goes to the cluster: the agent's harmless headers, the connector's
        credentials, and (impersonate: true) the agent's identity."""
        headers = {h: self.request.headers[h] for h in _FORWARD if h in self.request.headers}
        if inspect:  # hoopy reads the answer: JSON, never protobuf
            accept = headers.get("Accept", "")
            table = "as=Table" in accept
            headers["Accept"] = (
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"
                if table
                else "application/json"
            )
        up = self.listener.upstream(self.connector)
        headers.update(up.auth)
        if not self.connector.impersonate:
            return list(headers.items())
        ident = self.session.identity
        headers["Impersonate-User"] = ident.subject
        return [*headers.items(), *(("Impersonate-Group", g) for g in sorted(ident.groups))]

    def _upgrade_url(self) -> tuple[Upstream, URL]:
        """The cluster and URL an exec / attach / port-forward WebSocket goes to."""
        up = self.listener.upstream(self.connector)
        url = URL(up.server + self.path + ("?" + self.query if self.query else ""), encoded=True)
        return up, url

    async def _forward(self, info: RequestInfo, decision: Decision | None) -> _AnyAnswer:
        try:
            if self.read_early:
                body = self.early
            else:
                body = await self._body(info) if info.is_resource else None
        except _TooLarge:
            self.status, self.decision = 413, "refused"
            self._record(info)
            return status(413, "RequestEntityTooLarge", f"request body over {MAX_BODY} bytes")
        inspector = self._inspector(info, decision)
        masker = None
        if decision is not None and info.subresource == "log" and decision.masks.detectors:
            masker = self._masker(decision)
        up = self.listener.upstream(self.connector)
        pool = up.pool()
        target = up.prefix + self.path + ("?" + self.query if self.query else "")
        hdrs = self._headers(inspector is not None)
        try:
            async with pool.request(self.request.method, target, hdrs, body) as resp:
                return await self._respond(info, resp, inspector, masker)
        except (aiohttp.ClientError, TimeoutError) as e:
            log.warning(
                "connector %s: cluster request failed: %s", self.connector.name, type(e).__name__
            )
            self.status = 502
            self._record(info)
            if self.sent:
                raise
            return status(
                502,
                "ServiceUnavailable",
                f"the cluster of connector {self.connector.name} is unreachable",
            )

    async def _respond(
        self,
        info: RequestInfo,
        resp: h1.Response,
        inspector: Inspector | None,
        masker: ValueMasker | None,
    ) -> _AnyAnswer:
        self.status = resp.status
        headers = {h: resp.headers[h] for h in _RETURN if h in resp.headers}
        ctype = resp.headers.get("Content-Type", "")
        json_body = ctype.startswith("application/json")
        whole = inspector is not None and json_body and info.verb != "watch"
        small = resp.content_length is not None and resp.content_length <= SMALL
        readable = json_body or ctype.startswith("text/plain")
        if readable and (info.resource != "secrets" or self.connector.mask_secrets):
            self.capture = bytearray()  # (never a Secret's values: they are not masked)
        try:
            if inspector is not None and not json_body and resp.status < 300:
                raise BackendUnavailable(
                    "the cluster answered a response hoopy must inspect in a form it cannot read"
                )
            big = resp.content_length is None or resp.content_length > STREAM_LISTS_OVER
            out: _AnyAnswer
            if whole and info.verb == "list" and big:
                assert inspector is not None
                out, stream = await self._open(resp.status, headers)
                await self._list(resp, stream, inspector)
                await stream.write_eof()
            elif whole or (inspector is None and masker is None and small):
                data = await _read_all(resp)
                if whole:
                    assert inspector is not None
                    data = self._rewrite(data, inspector)
                self._out(data)
                if isinstance(self.request, h1server.PlainRequest):
                    out = h1server.Answer(resp.status, headers, data)
                else:
                    out = web.Response(status=resp.status, body=data, headers=headers)
            else:
                out, stream = await self._open(resp.status, headers)
                work = asyncio.ensure_future(self._stream(resp, stream, inspector, masker))
                try:  # a watch (or a followed log) ends with the token it was opened with
                    await execrelay.until_expiry(self.session, work, self._stream_expiry(info))
                finally:
                    work.cancel()  # (done already, or the agent went away)
                await stream.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self._record(info, aborted=True)
            raise
        counts = dict(inspector.counts) if inspector is not None else {}
        self._record(info, **({"inspected": counts} if counts else {}))
        return out

    async def _open(self, code: int, headers: dict[str, str]) -> tuple[_AnyAnswer, _Out]:
        """A streamed answer's head, sent: (what the handler returns, what to write to)."""
        if isinstance(self.request, h1server.PlainRequest):
            stream = self.request.open_stream(code, headers)
            return stream, stream
        out = web.StreamResponse(status=code, headers=headers)
        await out.prepare(self.request)
        return out, out

    async def _stream(
        self,
        resp: h1.Response,
        out: _Out,
        inspector: Inspector | None,
        masker: ValueMasker | None,
    ) -> None:
        if inspector is not None:
            await self._watch(resp, out, inspector)
        elif masker is not None:
            await self._lines(resp, out, masker)
        else:
            async for chunk in resp.content.iter_any():
                await out.write(chunk)
                self._out(chunk)

    def _stream_expiry(self, info: RequestInfo) -> float:
        """When an endless answer must end (0: it is not endless)."""
        follow = info.subresource == "log" and go_bool(parse_query(self.query).get("follow"))
        return self.expires_at if info.verb == "watch" or follow else 0.0

    def _rewrite(self, raw: bytes, inspector: Inspector) -> bytes:
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            raise BackendUnavailable("the cluster answered JSON hoopy cannot read") from None
        return json.dumps(inspector.value(value), separators=(",", ":")).encode()

    async def _list(self, resp: h1.Response, out: _Out, inspector: Inspector) -> None:
        """A large list answer, rewritten and sent item by item (liststream.py)."""
        stream = ListStream(inspector, MAX_INSPECTED)
        try:
            async for chunk in resp.content.iter_any():
                text = stream.feed(chunk)
                if text:
                    data = text.encode()
                    await out.write(data)
                    self._out(data)
            data = stream.end().encode()
        except ListError as e:
            # part of the answer went out: cut the connection, so the agent cannot take
            # what it got for a whole list (an error answer here would land in the body)
            log.warning("connector %s: %s", self.connector.name, e)
            if self.request.transport is not None:
                self.request.transport.abort()
            raise BackendUnavailable(str(e)) from None
        await out.write(data)
        self._out(data)

    async def _watch(self, resp: h1.Response, out: _Out, inspector: Inspector) -> None:
        async for line in _lines(resp):
            if not line.strip():
                continue
            try:
                event = inspector.event(json.loads(line))
            except (ValueError, RecursionError):
                raise BackendUnavailable("unreadable watch event from the cluster") from None
            if event is None:
                continue
            data = json.dumps(event, separators=(",", ":")).encode() + b"\n"
            await out.write(data)
            self._out(data)

    async def _lines(self, resp: h1.Response, out: _Out, masker: ValueMasker) -> None:
        async for line in _lines(resp):
            text, _ = masker.mask_text(line.decode("utf-8", "replace"))
            data = text.encode()
            await out.write(data)
            self._out(data)

    async def _connect(
        self, info: RequestInfo, q: dict[str, list[str]], decision: Decision
    ) -> _AnyAnswer:
        upgrade = self.request.headers.get("Upgrade", "").lower()
        if info.subresource == "portforward" and decision.masks.detectors:
            # (before the SPDY answer: kubectl retries a refused tunnel over SPDY)
            self.status, self.decision = 403, "refused"
            self._record(info)
            return status(
                403,
                "Forbidden",
                "hoopy refuses port-forward while a mask rule applies "
                f"({', '.join(decision.masks.rules)}): forwarded bytes cannot be masked",
            )
        if upgrade.startswith("spdy"):
            self.status = 400
            self._record(info)
            return status(
                400,
                "BadRequest",
                "hoopy relays exec and attach over WebSocket (kubectl 1.30 or newer) and "
                "port-forward through kubectl's WebSocket tunnel (kubectl 1.31 or newer, "
                "without KUBECTL_PORT_FORWARD_WEBSOCKETS=false), never over SPDY",
            )
        if info.subresource == "portforward" and upgrade == "websocket":
            return await self._portforward(info)
        if upgrade != "websocket" or info.subresource not in ("exec", "attach"):
            self.status = 400
            self._record(info)
            return status(
                400,
                "BadRequest",
                f"hoopy does not relay {info.full_resource} {upgrade or 'without an upgrade'}",
            )
        assert isinstance(self.request, web.BaseRequest)  # (h1server hands upgrades over)
        up, url = self._upgrade_url()
        result = await execrelay.relay(
            self.request,
            up,
            url,
            self._headers(False),
            self.session,
            tty=go_bool(q.get("tty")),  # as the cluster reads it ("yes" is a TTY too)
            stdin=go_bool(q.get("stdin")),
            masker=self._masker(decision) if decision.masks.detectors else None,
            expires_at=self.expires_at,
        )
        self.status = result.status
        self.sent = result.sent
        self._record(
            info,
            exit=result.exit_code,
            stdin=result.received,
            stdout=result.stdout,
            stderr=result.stderr,
        )
        return result.response

    async def _portforward(self, info: RequestInfo) -> _AnyAnswer:
        assert isinstance(self.request, web.BaseRequest)  # (h1server hands upgrades over)
        if not pfrelay.offered(self.request):
            self.status = 400
            self._record(info)
            return status(
                400,
                "BadRequest",
                f"hoopy relays port-forward only as {pfrelay.PROTOCOL} (kubectl 1.31 or newer)",
            )
        up, url = self._upgrade_url()
        result = await pfrelay.relay(
            self.request,
            up,
            url,
            self._headers(False),
            self.session,
            pfrelay.judge(self.session, info.full_resource, info.namespace, info.name),
            expires_at=self.expires_at,
        )
        self.status = result.status
        self.sent = result.sent
        self._record(
            info,
            ports=result.ports,
            streams=result.streams,
            refused=result.refused,
            received=result.received,
        )
        return result.response


class _TooLarge(Exception):
    pass


async def _lines(resp: h1.Response) -> Any:
    """Newline-terminated lines of a streamed body (the last one may lack its newline)."""
    buf = bytearray()
    async for chunk in resp.content.iter_any():
        buf += chunk
        while True:
            i = buf.find(b"\n")
            if i < 0:
                break
            yield bytes(buf[: i + 1])
            del buf[: i + 1]
        if len(buf) > MAX_LINE:
            raise BackendUnavailable(
                "a line of the cluster's stream is too long for hoopy to inspect"
            )
    if buf:
        yield bytes(buf)


async def _read_all(resp: h1.Response) -> bytes:
    whole = resp.whole()
    if whole is not None and len(whole) <= MAX_INSPECTED:  # (a small answer: one piece)
        return whole
    body = bytearray()
    async for chunk in resp.content.iter_any():
        body += chunk
        if len(body) > MAX_INSPECTED:
            raise BackendUnavailable("the cluster's answer is too large for hoopy to inspect")
    return bytes(body)
