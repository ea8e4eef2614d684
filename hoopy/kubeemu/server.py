"""A purpose-built Kubernetes API emulator that real kubectl talks to.

Theory of operation: one aiohttp app over HTTPS (its own self-signed CA), bearer
token auth, and a catch-all route that parses `/api/v1/...` and
`/apis/<group>/<version>/...` into (kind, namespace, name, subresource).  Objects
live in `store.Store`; responses are JSON as kube-apiserver sends them: objects,
`<Kind>List`s with `limit`/`continue`, `Table`s for `Accept: ...;as=Table`, watch
streams of newline-delimited events, `Status` errors.  pods/log streams the log
lines appended through `/emu/log`; pods/exec runs the command as a local process
behind a WebSocket speaking v5/v4.channel.k8s.io.  See README.md for the gaps.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime as dt
import json
import secrets
from typing import Any
from urllib.parse import parse_qs

import yaml
from aiohttp import web

from hoopy.kubeemu import attach, execws, portforward, protobuf
from hoopy.kubeemu.store import BY_PATH, KINDS, SUBRESOURCES, Gone, Kind, Store
from hoopy.kubeemu.wire import (
    GoYAML,
    continue_key,
    continue_token,
    json_patch,
    merge_patch,
    storage_key,
)

JSON = "application/json"


def status(code: int, reason: str, message: str, **details: Any) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return web.json_response(body, status=code)


class Emulator:
    def __init__(self, token: str) -> None:
        self.token = token
        self.store = Store()
        self.requests: list[dict[str, Any]] = []  # what the tests may inspect
        self.port = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self.route)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        given = header[7:] if header.startswith("Bearer ") else ""
        self.requests.append(
            {
                "method": request.method,
                "path": request.raw_path,
                "authorization": header,
                "impersonate_user": request.headers.get("Impersonate-User", ""),
                "impersonate_group": request.headers.getall("Impersonate-Group", []),
                "accept": request.headers.get("Accept", ""),
                # every header name (lower case) and every Impersonate-* value as sent
                "headers": sorted({h.lower() for h in request.headers}),
                "impersonate": sorted(
                    f"{h}: {v}"
                    for h, v in request.headers.items()
                    if h.lower().startswith("impersonate-")
                ),
            }
        )
        del self.requests[:-2000]
        if not given or not secrets.compare_digest(given.encode(), self.token.encode()):
            return status(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    async def route(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        parts = [p for p in path.split("/") if p]
        if path == "/version":
            return web.json_response(VERSION)
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if parts[:1] == ["emu"]:
            return await self._emu(request, parts[1:])
        if parts[:1] == ["openapi"]:
            return status(404, "NotFound", "the server could not find the requested resource")
        if parts == ["api"]:
            return web.json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                    ],
                }
            )
        if parts == ["apis"]:
            return web.json_response(API_GROUPS)
        if parts[:1] == ["api"] and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return status(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            return resource_list(group, version)
        return await self._resource(request, group, version, rest)

    async def _resource(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> web.StreamResponse:
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3:
            ns, rest = rest[1], rest[2:]
        kind = BY_PATH.get((group, version, rest[0]))
        if kind is None or (ns and not kind.namespaced):
            return status(404, "NotFound", "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if len(rest) > 3 or (sub and sub not in SUBRESOURCES.get(kind.resource, ())):
            return status(404, "NotFound", "the server could not find the requested resource")
        q = parse_qs(request.query_string)
        m = request.method
        if sub == "log" and m == "GET":
            return await self._log(request, ns, name, q)
        if sub in ("exec", "attach", "portforward"):
            return await self._exec(request, kind, ns, name, q, sub)
        if sub in OBJECT_SUBRESOURCES:
            return await self._subresource(request, kind, ns, name, sub)
        if sub == "token" and m == "POST":
            return await self._token(request, kind, ns, name)
        if sub:
            return status(405, "MethodNotAllowed", f"{kind.resource}/{sub} is not emulated")
        if not name:
            if m == "GET" and _flag(q, "watch"):
                return await self._watch(request, kind, ns, q)
            if m == "GET":
                return self._list(request, kind, ns, q)
            if m == "POST":
                return await self._create(request, kind, ns)
            if m == "DELETE":
                for o in self._select(kind, ns, q):
                    self.store.delete(
                        kind, ns or o["metadata"].get("namespace", ""), o["metadata"]["name"]
                    )
                return web.json_response(
                    {"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}
                )
        elif m == "GET":
            obj = self.store.get(kind, ns, name)
            if obj is None:
                return _not_found(kind, name)
            return web.json_response(
                _as_table(kind, [obj], self.store.rv, _one(q, "includeObject"))
                if _table(request)
                else obj
            )
        elif m == "PUT":
            return await self._update(request, kind, ns, name)
        elif m == "PATCH":
            return await self._patch(request, kind, ns, name)
        elif m == "DELETE":
            obj = self.store.delete(kind, ns, name)
            return web.json_response(obj) if obj else _not_found(kind, name)
        return status(405, "MethodNotAllowed", "the server does not allow this method")

    # ---- collection reads ------------------------------------------------------------
    def _select(self, kind: Kind, ns: str, q: dict[str, list[str]]) -> list[dict[str, Any]]:
        objs = self.store.list(kind, ns)
        return [o for o in objs if _selected(o, q)]

    def _list(
        self, request: web.Request, kind: Kind, ns: str, q: dict[str, list[str]]
    ) -> web.Response:
        objs = self._select(kind, ns, q)
        token = _one(q, "continue")
        if token:  # resume after the key the token names (kube-apiserver's storage keys)
            after = continue_key(token)
            if after is None:
                return status(400, "BadRequest", "continue key is not valid")
            objs = [o for o in objs if storage_key(o, ns) + "\x00" > after]
        limit = int(_one(q, "limit") or 0)
        meta: dict[str, Any] = {"resourceVersion": str(self.store.rv)}
        if limit and limit < len(objs):
            meta["continue"] = continue_token(storage_key(objs[limit - 1], ns), self.store.rv)
            meta["remainingItemCount"] = len(objs) - limit
        objs = objs[:limit] if limit else objs
        if _table(request):
            table = _as_table(kind, objs, self.store.rv, _one(q, "includeObject"))
            table["metadata"].update(meta)
            return web.json_response(table)
        return web.json_response(
            {
                "kind": kind.kind + "List",
                "apiVersion": kind.api_version,
                "metadata": meta,
                # kube-apiserver omits each item's kind and apiVersion in a list
                # (kubernetes/kubernetes#3030); hoopy must not rely on them
                "items": [
                    {k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in objs
                ],
            }
        )

    async def _watch(
        self, request: web.Request, kind: Kind, ns: str, q: dict[str, list[str]]
    ) -> web.StreamResponse:
        rv = int(_one(q, "resourceVersion") or 0)
        timeout = float(_one(q, "timeoutSeconds") or 1800)
        table = _table(request)
        resp = web.StreamResponse(headers={"Content-Type": JSON})
        await resp.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if not rv:
            for o in self._select(kind, ns, q):
                await self._send_event(resp, kind, "ADDED", o, table)
            rv = self.store.rv
        while loop.time() < deadline:
            try:
                events = self.store.since(rv, kind.resource)
            except Gone:
                await _write_line(
                    resp,
                    {
                        "type": "ERROR",
                        "object": {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "code": 410,
                            "reason": "Expired",
                            "message": "too old resource version",
                        },
                    },
                )
                break
            for r, type_, obj in events:
                rv = r
                if (not ns or obj["metadata"].get("namespace") == ns) and _selected(obj, q):
                    await self._send_event(resp, kind, type_, obj, table)
            async with self.store.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self.store.changed.wait(), max(0.01, deadline - loop.time())
                    )
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp

    async def _send_event(
        self, resp: web.StreamResponse, kind: Kind, type_: str, obj: dict[str, Any], table: bool
    ) -> None:
        body = _as_table(kind, [obj], self.store.rv) if table else obj
        await _write_line(resp, {"type": type_, "object": body})

    # ---- writes --------------------------------------------------------------------
    async def _body(self, request: web.Request) -> dict[str, Any] | web.Response:
        raw = await request.read()
        try:
            if "protobuf" in request.content_type:
                obj = protobuf.decode(raw)
            elif "yaml" in request.content_type:
                obj = yaml.load(raw, Loader=GoYAML)
            else:
                obj = json.loads(raw)
        except ValueError as e:
            return status(400, "BadRequest", f"cannot decode body: {e}")
        if not isinstance(obj, dict | list):
            return status(400, "BadRequest", "body must be an object")
        return obj

    def _check_ns(self, kind: Kind, ns: str, obj: dict[str, Any]) -> web.Response | None:
        body_ns = obj.get("metadata", {}).get("namespace")
        if kind.namespaced and body_ns and body_ns != ns:
            return status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the "
                "request",
            )
        if kind.namespaced and self.store.get(KINDS[4], "", ns) is None:
            return status(404, "NotFound", f'namespaces "{ns}" not found')
        return None

    async def _create(self, request: web.Request, kind: Kind, ns: str) -> web.Response:
        obj = await self._body(request)
        if isinstance(obj, web.Response):
            return obj
        bad = self._check_ns(kind, ns, obj)
        if bad:
            return bad
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            # as kube-apiserver: cut to 58, plus 5 of utilrand's characters
            tail = "".join(secrets.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
            meta["name"] = meta["generateName"][:58] + tail
        if not meta.get("name"):
            return status(422, "Invalid", "metadata.name: Required value")
        if self.store.get(kind, ns, meta["name"]) is not None:
            return status(409, "AlreadyExists", f'{kind.resource} "{meta["name"]}" already exists')
        if _one(parse_qs(request.query_string), "dryRun"):
            return web.json_response(obj, status=201)
        return web.json_response(self.store.put(kind, ns, obj), status=201)

    async def _update(
        self, request: web.Request, kind: Kind, ns: str, name: str, dry: bool = False
    ) -> web.Response:
        obj = await self._body(request)
        if isinstance(obj, web.Response):
            return obj
        bad = self._check_ns(kind, ns, obj)
        if bad:
            return bad
        old = self.store.get(kind, ns, name)
        if old is None:
            return _not_found(kind, name)
        rv = obj.get("metadata", {}).get("resourceVersion")
        if rv and rv != old["metadata"]["resourceVersion"]:
            return status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {kind.resource} "{name}": '
                "the object has been modified",
            )
        obj["metadata"]["name"] = name
        obj["metadata"].pop("resourceVersion", None)
        return web.json_response(obj if dry else self.store.put(kind, ns, obj))

    async def _patch(
        self, request: web.Request, kind: Kind, ns: str, name: str, dry: bool = False
    ) -> web.Response:
        patch = await self._body(request)
        if isinstance(patch, web.Response):
            return patch
        old = self.store.get(kind, ns, name)
        ctype = request.content_type
        if old is None:
            if ctype != "application/apply-patch+yaml" or not isinstance(patch, dict):
                return _not_found(kind, name)
            bad = self._check_ns(kind, ns, patch)
            return bad or web.json_response(self.store.put(kind, ns, patch), status=201)
        if ctype == "application/json-patch+json":
            try:
                new = json_patch(copy.deepcopy(old), patch)  # type: ignore[arg-type]
            except (KeyError, IndexError, ValueError, TypeError) as e:
                return status(422, "Invalid", f"json patch: {e}")
        elif isinstance(patch, dict):
            new = merge_patch(copy.deepcopy(old), patch)
        else:
            return status(400, "BadRequest", "patch must be an object")
        bad = self._check_ns(kind, ns, new)
        if bad:
            return bad
        new["metadata"]["name"] = name
        new["metadata"].pop("resourceVersion", None)
        return web.json_response(new if dry else self.store.put(kind, ns, new))

    async def _subresource(
        self, request: web.Request, kind: Kind, ns: str, name: str, sub: str
    ) -> web.Response:
        """`status` and `pods/ephemeralcontainers`: as kube-apiserver, they read and
        write the whole parent object, but a write changes only their own part."""
        old = self.store.get(kind, ns, name)
        if old is None:
            return _not_found(kind, name)
        if request.method == "GET":
            return web.json_response(old)
        if request.method == "PATCH":
            answer = await self._patch(request, kind, ns, name, dry=True)
        elif request.method == "PUT":
            answer = await self._update(request, kind, ns, name, dry=True)
        else:
            return status(405, "MethodNotAllowed", "the server does not allow this method")
        if answer.status >= 300:
            return answer
        assert isinstance(answer.body, bytes)
        new, obj = json.loads(answer.body), copy.deepcopy(old)
        if sub == "status":
            obj["status"] = new.get("status", {})
        else:
            spec = (new.get("spec") or {}).get("ephemeralContainers")
            obj.setdefault("spec", {})["ephemeralContainers"] = spec or []
        obj["metadata"].pop("resourceVersion", None)
        return web.json_response(self.store.put(kind, ns, obj))

    async def _token(self, request: web.Request, kind: Kind, ns: str, name: str) -> web.Response:
        """serviceaccounts/token (TokenRequest, `kubectl create token`): a token for the
        service account (random here: the emulator accepts none but its own)."""
        if self.store.get(kind, ns, name) is None:
            return _not_found(kind, name)
        asked = await self._body(request)
        if isinstance(asked, web.Response):
            return asked
        spec = asked.get("spec") if isinstance(asked, dict) else None
        spec = dict(spec) if isinstance(spec, dict) else {}
        spec.setdefault("audiences", ["https://kubernetes.default.svc"])
        spec.setdefault("expirationSeconds", 3600)
        claims = base64.urlsafe_b64encode(
            json.dumps({"sub": f"system:serviceaccount:{ns}:{name}"}).encode()
        ).decode()
        token = f"eyJhbGciOiJSUzI1NiJ9.{claims.rstrip('=')}.{secrets.token_urlsafe(32)}"
        answer = {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": None},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": "2030-01-01T00:00:00Z"},
        }
        return web.json_response(answer, status=201)

    # ---- pods/log and pods/exec ---------------------------------------------------
    async def _log(
        self, request: web.Request, ns: str, name: str, q: dict[str, list[str]]
    ) -> web.StreamResponse:
        if self.store.get(BY_PATH[("", "v1", "pods")], ns, name) is None:
            return _not_found(BY_PATH[("", "v1", "pods")], name)
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        sent = 0
        key = (ns, name)
        tail = _one(q, "tailLines")
        if tail is not None:
            sent = max(0, len(self.store.logs.get(key, [])) - int(tail))
        while True:
            lines = self.store.logs.get(key, [])
            for line in lines[sent:]:
                await resp.write(line.encode() + b"\n")
            sent = len(lines)
            if not _flag(q, "follow") or key in self.store.log_closed:
                break
            async with self.store.changed:
                await self.store.changed.wait()
        with contextlib.suppress(ConnectionError):
            await resp.write_eof()
        return resp

    async def _exec(
        self,
        request: web.Request,
        kind: Kind,
        ns: str,
        name: str,
        q: dict[str, list[str]],
        sub: str,
    ) -> web.StreamResponse:
        if self.store.get(kind, ns, name) is None:
            return _not_found(kind, name)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return status(
                400,
                "BadRequest",
                "kubeemu speaks only WebSocket exec/attach (v5/v4.channel.k8s.io) and "
                "port-forward (SPDY/3.1+portforward.k8s.io)",
            )
        if sub == "portforward":
            offered = request.headers.get("Sec-WebSocket-Protocol", "")
            if portforward.PROTOCOL not in [p.strip() for p in offered.split(",")]:
                return status(400, "BadRequest", f"port-forward needs {portforward.PROTOCOL}")
            return await portforward.serve(request, f"{ns}/{name}")
        if sub == "attach":
            return await attach.serve(request, q, (ns, name))
        return await execws.serve(request, q)

    # ---- test controls -------------------------------------------------------------
    async def _emu(self, request: web.Request, parts: list[str]) -> web.Response:
        if parts == ["requests"]:
            return web.json_response(self.requests)
        if parts == ["portforwards"]:
            return web.json_response(portforward.opened)
        if parts[:1] == ["attach"] and len(parts) == 3 and request.method == "POST":
            body = await request.json()
            await attach.start((parts[1], parts[2]), list(body["command"]), bool(body.get("tty")))
            return web.json_response({})
        if parts[:1] == ["log"] and len(parts) == 3 and request.method == "POST":
            body = await request.json()
            self.store.append_log(
                parts[1], parts[2], list(body.get("lines", [])), bool(body.get("close"))
            )
            return web.json_response({})
        return status(404, "NotFound", "no such emulator control")


# ---- helpers ---------------------------------------------------------------------------
VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-kubeemu",
    "gitCommit": "0" * 40,
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}
API_GROUPS = {
    "kind": "APIGroupList",
    "apiVersion": "v1",
    "groups": [
        {
            "name": g,
            "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"},
        }
        for g in ("apps", "batch")
    ],
}
# Subresources whose answer is the whole parent object (a write changes only its part)
OBJECT_SUBRESOURCES = ("status", "ephemeralcontainers")


def resource_list(group: str, version: str) -> web.Response:
    kinds = [k for k in KINDS if k.group == group and k.version == version]
    if not kinds:
        return status(404, "NotFound", "the server could not find the requested resource")
    resources: list[dict[str, Any]] = []
    for k in kinds:
        resources.append(
            {
                "name": k.resource,
                "singularName": k.kind.lower(),
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": list(k.verbs),
                "shortNames": list(k.short),
            }
        )
        for sub in SUBRESOURCES.get(k.resource, ()):
            verbs = ["create", "get"] if sub in ("exec", "attach", "portforward") else ["get"]
            verbs = ["create"] if sub == "token" else verbs
            resources.append(
                {
                    "name": f"{k.resource}/{sub}",
                    "singularName": "",
                    "namespaced": k.namespaced,
                    "kind": "PodExecOptions" if sub == "exec" else k.kind,
                    "verbs": verbs,
                }
            )
    gv = f"{group}/{version}" if group else version
    return web.json_response(
        {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}
    )


def _flag(q: dict[str, list[str]], name: str) -> bool:
    """As kube-apiserver reads a bool parameter (Convert_Slice_string_To_bool): absent
    is false, "0" and "false" (any case) are false, anything else ("yes", "") true."""
    v = _one(q, name)
    # (strings.EqualFold: U+017F, a long s, folds to "s")
    return v is not None and v != "0" and v.replace("\u017f", "s").lower() != "false"


def _one(q: dict[str, list[str]], name: str) -> str | None:
    v = q.get(name)
    return v[0] if v else None


def _selected(obj: dict[str, Any], q: dict[str, list[str]]) -> bool:
    meta = obj["metadata"]
    for sel in (_one(q, "fieldSelector") or "").split(","):
        if not sel:
            continue
        k, _, v = sel.partition("=")
        v = v.lstrip("=")
        have = {"metadata.name": meta["name"], "metadata.namespace": meta.get("namespace", "")}
        if k in have and have[k] != v:
            return False
    labels = meta.get("labels", {})
    for sel in (_one(q, "labelSelector") or "").split(","):
        if not sel:
            continue
        k, eq, v = sel.partition("=")
        if eq and labels.get(k.rstrip("!")) != v.lstrip("="):
            return False
        if not eq and k not in labels:
            return False
    return True


def _table(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    first = accept.split(",")[0]
    return "as=Table" in first


def _age(obj: dict[str, Any]) -> str:
    ts = obj["metadata"].get("creationTimestamp", "")
    try:
        t = dt.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return "<unknown>"
    s = int((dt.datetime.now(dt.UTC) - t).total_seconds())
    return f"{s}s" if s < 120 else f"{s // 60}m"


COLUMNS: dict[str, list[str]] = {
    "pods": ["Name", "Ready", "Status", "Restarts", "Age"],
    "secrets": ["Name", "Type", "Data", "Age"],
    "configmaps": ["Name", "Data", "Age"],
    "deployments": ["Name", "Ready", "Up-to-date", "Available", "Age"],
}


def _cells(kind: Kind, obj: dict[str, Any]) -> list[Any]:
    name, age = obj["metadata"]["name"], _age(obj)
    if kind.resource == "pods":
        n = len(obj.get("spec", {}).get("containers", []))
        return [name, f"{n}/{n}", obj.get("status", {}).get("phase", ""), 0, age]
    if kind.resource == "secrets":
        return [name, obj.get("type", ""), len(obj.get("data", {}) or {}), age]
    if kind.resource == "configmaps":
        return [name, len(obj.get("data", {}) or {}), age]
    if kind.resource == "deployments":
        r = obj.get("spec", {}).get("replicas", 1)
        return [name, f"{r}/{r}", r, r, age]
    return [name, age]


def _row_object(o: dict[str, Any], include: str | None) -> dict[str, Any] | None:
    """A row's `object` as `includeObject` asks (TableOptions: None, Metadata (the
    default, which `kubectl get` relies on), Object)."""
    if include == "None":
        return None
    if include in (None, "Metadata"):
        meta = {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata"}
        return {**meta, "metadata": o.get("metadata", {})}
    return o


def _row(kind: Kind, o: dict[str, Any], include: str | None) -> dict[str, Any]:
    obj = _row_object(o, include)
    return {"cells": _cells(kind, o), **({"object": obj} if obj is not None else {})}


def _as_table(
    kind: Kind, objs: list[dict[str, Any]], rv: int, include: str | None = None
) -> dict[str, Any]:
    cols = COLUMNS.get(kind.resource, ["Name", "Age"])
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": str(rv)},
        "columnDefinitions": [
            {
                "name": c,
                "type": "string",
                "format": "name" if c == "Name" else "",
                "description": "",
                "priority": 0,
            }
            for c in cols
        ],
        "rows": [_row(kind, o, include) for o in objs],
    }


async def _write_line(resp: web.StreamResponse, event: dict[str, Any]) -> None:
    await resp.write(json.dumps(event).encode() + b"\n")


def _not_found(kind: Kind, name: str) -> web.Response:
    group = kind.group
    return status(
        404,
        "NotFound",
        f'{kind.resource} "{name}" not found',
        name=name,
        group=group,
        kind=kind.resource,
    )


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()
