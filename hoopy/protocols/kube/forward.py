"""Plain requests forwarded to the cluster, and the answers inspected on their way back.

A request hoopy lets through goes to the cluster over h1.py's pooled client with
hoopy's own credential.  Its answer streams back as it comes, unless hoopy must read
it (Secrets, mask rules, cross-namespace filtering): then hoopy asks for JSON and
rewrites each object, list, table or watch event (bodies.py, liststream.py), and a
log masked by a rule is rewritten line by line.  Separate from the policy path
(proxy.py) and from upgrades (upgrades.py), which share only `Exchange`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from typing import Any
from urllib.parse import unquote_plus

import aiohttp
from aiohttp import web

from hoopy.errors import BackendUnavailable
from hoopy.masking import ValueMasker
from hoopy.policy import Decision, Masks
from hoopy.protocols.kube import execrelay, h1, h1server
from hoopy.protocols.kube.bodies import BodyError, Inspector, reading_op
from hoopy.protocols.kube.commands import Visibility
from hoopy.protocols.kube.exchange import MAX_BODY, Exchange, _AnyAnswer, _Out, _TooLarge
from hoopy.protocols.kube.liststream import ListError, ListStream
from hoopy.protocols.kube.requestinfo import RequestInfo, go_bool, parse_query
from hoopy.protocols.kube.status import status

log = logging.getLogger("hoopy.kube")

_RETURN = ("Content-Type", "Cache-Control", "Warning", "Audit-Id", "Retry-After")
MAX_INSPECTED = 256 * 1024 * 1024  # a response hoopy must read whole
# List answers larger than this (or of unknown length) that hoopy must inspect are
# rewritten item by item as they arrive rather than read whole.
STREAM_LISTS_OVER = 1024 * 1024
SMALL = 1024 * 1024  # a passthrough answer this small is sent in one piece
MAX_LINE = 16 * 1024 * 1024  # one watch event / log line hoopy must read
# Resources whose objects hoopy rewrites when masking applies.
_DETECTED = (
    "configmaps",
    "pods",
    "deployments",
    "statefulsets",
    "daemonsets",
    "jobs",
    "replicasets",
    "cronjobs",
    "replicationcontrollers",
    "podtemplates",
    "controllerrevisions",
)

# Subresources whose answer is the whole parent object.
PARENT_ANSWERS = ("status", "ephemeralcontainers", "resize")
# Verbs whose answer holds items of other names (or namespaces) than the request's.
_COLLECTIONS = ("list", "watch", "deletecollection")
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
    ("batch", "cronjobs"): "CronJob",
    ("", "replicationcontrollers"): "ReplicationController",
    ("", "podtemplates"): "PodTemplate",
    ("apps", "controllerrevisions"): "ControllerRevision",
}


def secretive(info: RequestInfo) -> bool:
    """Does the answer hold secret values mask_secrets masks: Secrets, and the token of
    a TokenRequest (`kubectl create token`, what a service-account-token Secret held)?"""
    return info.resource == "secrets" or info.full_resource == "serviceaccounts/token"


class Forwarding(Exchange):
    """A request forwarded to the cluster, and its answer streamed or rewritten."""

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
        if body and self.request.method == "PATCH" and self._masked(info, decision):
            refused = self._reading_patch(info, body)
            if refused is not None:
                return refused
        masker = None
        if decision is not None and info.subresource == "log" and decision.masks.detectors:
            masker = self._masker(decision)
        up = self.listener.upstream(self.connector)
        pool = up.pool()
        query = self.query
        if inspector is not None and inspector.visible is not None and info.verb == "list":
            query = whole_list(query)
        target = up.prefix + self.path + ("?" + query if query else "")
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
        if readable and (not secretive(info) or self.connector.mask_secrets):
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

    def _masked(self, info: RequestInfo, decision: Decision | None) -> bool:
        """Are values of this resource's objects masked for the agent?"""
        if secretive(info) and self.connector.mask_secrets:
            return True
        return bool(
            decision and self._masks(info, decision).detectors and info.resource in _DETECTED
        )

    def _masks(self, info: RequestInfo, decision: Decision) -> Masks:
        """The mask rules of the answer's objects: a subresource that answers its parent
        object (pods/status, pods/ephemeralcontainers) is masked as the parent too (a
        rule on `pods` does not match `pods/status`, as in RBAC, but its answer is one)."""
        if info.subresource not in PARENT_ANSWERS:
            return decision.masks
        parent = dataclasses.replace(info, subresource="")
        masks = Visibility(self.session, parent).decision(info.namespace, info.name).masks
        return Masks((*decision.masks.entries, *masks.entries))

    def _reading_patch(self, info: RequestInfo, body: bytes) -> _AnyAnswer | None:
        """A 403 for a JSON patch that reads a masked object's values (bodies.READING_OPS)."""
        try:
            op = reading_op(self.request.headers.get("Content-Type", ""), body)
        except BodyError as e:
            raise self._bad_body(info, e) from None
        if not op:
            return None
        self.status, self.decision = 403, "refused"
        self._record(info, reason=f"JSON patch op {op[:40]!r} on masked values")
        return status(
            403,
            "Forbidden",
            f"hoopy refuses JSON patch operation {op[:40]!r} on {info.full_resource}: their "
            "values are masked, and copy, move and test would reveal them "
            "(use add, replace or remove)",
        )

    def _inspector(self, info: RequestInfo, decision: Decision | None) -> Inspector | None:
        if decision is None or info.subresource == "log":
            return None  # (masked line by line)
        # Other subresources are read too: `status`, `ephemeralcontainers` and `resize`
        # answer the whole parent object, env values included
        masker = None
        detected = info.resource in (*_DETECTED, "secrets")
        masks = self._masks(info, decision)
        if masks.detectors and detected:
            masker = self._masker_of(masks)
        visible = None
        # (even with a name: `fieldSelector=metadata.name=X` across namespaces is a list)
        if self.live.filters and info.verb in ("list", "watch"):
            visible = Visibility(self.session, info).visible
        item_masker = None
        if self.live.scoped_masks and detected and info.verb in _COLLECTIONS:
            items = Visibility(self.session, info)

            # a mask rule for namespace N (or names X) masks the items in N (named X) of
            # a list across namespaces (or of a whole namespace): each by its own rules
            def item_masker(ns: str, name: str) -> ValueMasker | None:
                both = Masks((*masks.entries, *items.decision(ns, name).masks.entries))
                return self._masker_of(both) if both.detectors else None

        mask_secrets = secretive(info) and self.connector.mask_secrets
        if masker is None and visible is None and not mask_secrets and item_masker is None:
            return None
        return Inspector(
            mask_secrets=self.connector.mask_secrets,
            masker=masker,
            visible=visible,
            item_masker=item_masker,
            kind="TokenRequest"
            if secretive(info) and info.subresource
            else _KINDS.get((info.group, info.resource), ""),
        )


# A filtered list is asked for whole: the cluster's pages would tell of the items
# hoopy hides (`remainingItemCount` counts them, and the `continue` token is base64
# JSON naming the last key of the page, perhaps a hidden object's namespace and name).
_PAGING = frozenset(("limit", "continue"))


def whole_list(query: str) -> str:
    """The query without `limit` and `continue` (the rest as the agent sent it)."""
    pairs = [p for p in query.split("&") if unquote_plus(p.partition("=")[0]) not in _PAGING]
    return "&".join(pairs)


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
