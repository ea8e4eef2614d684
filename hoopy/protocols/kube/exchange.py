"""One agent request to the Kubernetes listener: its state, body and recording.

`Exchange` holds what forwarding (forward.py), upgrades (upgrades.py) and the policy
path (proxy.py) share about one request: the answer's status and bytes, what the
recording keeps of it, the request body as hoopy reads it, and the headers that go
to the cluster.  It is separate so those three can each be a module of their own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from hoopy.config import KubeConnector
from hoopy.errors import ProtocolError
from hoopy.masking import ValueMasker
from hoopy.policy import Decision, Masks
from hoopy.protocols.kube import h1server
from hoopy.protocols.kube.bodies import BodyError, body_namespace
from hoopy.protocols.kube.requestinfo import RequestInfo

if TYPE_CHECKING:
    from hoopy.protocols.kube.proxy import KubeListener, _Live

# Request headers forwarded to the cluster: nothing that authenticates or impersonates.
_FORWARD = ("Accept", "Content-Type", "User-Agent", "Kubectl-Command", "Kubectl-Session")
MAX_BODY = 8 * 1024 * 1024  # request bodies (kube-apiserver's own limit is 3 MiB)
RECORD_BODY = 4096  # bytes of each answer kept in the recording
SYSTEM = "system:"  # the users and groups Kubernetes reserves for itself


class _Out(Protocol):
    """A streamed answer: aiohttp's StreamResponse or h1server's Stream."""

    async def write(self, data: bytes) -> None: ...

    async def write_eof(self) -> None: ...


# What the listener's handler gets (aiohttp's request, or h1server's for a plain GET)
# and gives back (for a plain GET: h1server's Answer or Stream, or a web.Response).
_AnyRequest = web.BaseRequest | h1server.PlainRequest
_AnyAnswer = web.StreamResponse | h1server.Answer | h1server.Stream


class Exchange:
    """The state of one request, shared by its policy path, forwarding and upgrades."""

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

    async def _body(self, info: RequestInfo) -> bytes | None:
        if self.request.method not in ("POST", "PUT", "PATCH", "DELETE"):
            return None
        if not isinstance(self.request, web.BaseRequest):  # (h1server serves bodiless GETs)
            raise ProtocolError("a request body hoopy cannot read")
        if self.request.content_length is not None and self.request.content_length > MAX_BODY:
            raise _TooLarge()
        if self.request.headers.get("Content-Encoding"):
            # before reading: aiohttp would decompress it (and fail on a bad one)
            raise self._bad_body(info, BodyError("hoopy does not accept encoded request bodies"))
        body = bytearray()
        try:
            async for chunk in self.request.content.iter_any():
                body += chunk
                if len(body) > MAX_BODY:
                    raise _TooLarge()
        except RequestPayloadError:  # (a chunked body cut short or malformed)
            raise self._bad_body(info, BodyError("the request body is malformed")) from None
        ctype = self.request.headers.get("Content-Type", "")
        try:
            names = body_namespace(ctype, bytes(body))
        except BodyError as e:
            raise self._bad_body(info, e) from None
        if any(n != info.namespace for n in names) and info.resource != "namespaces":
            raise self._bad_body(  # (recorded: a refusal, as any other)
                info,
                BodyError(
                    "the namespace of the request body does not match the namespace of the path"
                ),
            )
        return bytes(body)

    def _bad_body(self, info: RequestInfo, e: BodyError) -> ProtocolError:
        """A body hoopy cannot read as the cluster would: recorded, answered 400."""
        self.status, self.decision = 400, "refused"
        self._record(info, reason=str(e))
        return ProtocolError(str(e))

    def _masker(self, decision: Decision) -> ValueMasker:
        return self._masker_of(decision.masks)

    def _masker_of(self, masks: Masks) -> ValueMasker:
        key = (masks.detectors, masks.detector_style)
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
        headers["Impersonate-User"] = ident.subject  # (never system:…: _Request.run)
        # `system:` groups are Kubernetes' own (system:masters is cluster-admin): an
        # identity provider's group of that name is not the agent's to carry in
        groups = sorted(g for g in ident.groups if not g.startswith(SYSTEM))
        return [*headers.items(), *(("Impersonate-Group", g) for g in groups)]


class _TooLarge(Exception):
    pass
