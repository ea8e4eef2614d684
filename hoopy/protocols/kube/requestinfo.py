"""Kubernetes request attributes from method + path + query (sans-I/O).

Theory of operation: this is kube-apiserver's RequestInfoFactory
(k8s.io/apiserver/pkg/endpoints/request/requestinfo.go) in Python, so hoopy's
policy sees the same verb, group, version, namespace, resource, subresource and
name the cluster's own RBAC will.  Paths are split on "/"; anything not under
`/api/<v>` or `/apis/<g>/<v>` with enough parts is a non-resource URL.

Before any of that, paths an attacker could make the two sides read differently
are refused (`PathRejected`): percent-encoding, empty, `.` or `..` segments,
`;` parameters, `#` and other characters outside RFC 3986's, upper-case letters
where Kubernetes only has lower-case ones, and query strings with `;` (Go drops
such pairs, Python would not) or `#` (Go keeps it in the query, a proxy or yarl
would end the query there).  Query values are read as Go's apiserver reads
them: the first value of a repeated key wins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

API_PREFIXES = ("api", "apis")
GROUPLESS = ("api",)
SPECIAL_VERBS = ("proxy", "watch")  # /api/v1/watch/..., /api/v1/proxy/...
NO_SUBRESOURCE_VERBS = ("proxy",)
NAMESPACE_SUBRESOURCES = ("status", "finalize")
# Subresources whose request is a connection (CONNECT in admission); RBAC checks them
# as `create` whatever the HTTP method (WebSocket exec comes as a GET since 1.30).
CONNECT_SUBRESOURCES = ("exec", "attach", "portforward", "proxy")
_METHOD_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
_LOWER = re.compile(r"[a-z0-9][a-z0-9.-]*\Z")  # group, version, resource, namespace
_SEGMENT_BAD = ("/", "%", "\\", "\x00")
MAX_PATH = 4096
# Only RFC 3986 path characters, less '%' (encoding) and ';' (parameters): anything
# else ('#' above all: the forwarded URL would end there, so `DELETE .../configmaps/#`
# judged as a delete of '#' reached the cluster as a deletecollection) is refused.
_BAD_PATH_CHAR = re.compile(r"[^A-Za-z0-9\-._~!$&'()*+,=:@/]")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class PathRejected(ValueError):
    """A path or query hoopy will not interpret (and so never forwards)."""


@dataclass(frozen=True)
class RequestInfo:
    path: str
    verb: str
    is_resource: bool = False
    api_prefix: str = ""
    group: str = ""
    version: str = ""
    namespace: str = ""
    resource: str = ""
    subresource: str = ""
    name: str = ""
    connect: bool = False  # exec / attach / portforward / proxy subresource

    @property
    def full_resource(self) -> str:
        """`pods`, or `pods/exec` with the subresource (what policy rules name)."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource

    @property
    def watch(self) -> bool:
        return self.verb == "watch"


def check_path(path: str) -> list[str]:
    """The path's segments, or PathRejected for any form two parsers may read apart."""
    if not path.startswith("/") or len(path) > MAX_PATH:
        raise PathRejected("path must be absolute and short")
    if _BAD_PATH_CHAR.search(path):
        raise PathRejected("encoded, parameterised or non-ASCII characters in the path")
    if "//" in path:
        raise PathRejected("empty path segment")
    trimmed = path[1:]
    if trimmed.endswith("/"):
        trimmed = trimmed[:-1]  # kube trims one trailing slash
    parts = trimmed.split("/") if trimmed else []
    for p in parts:
        if p in ("", ".", ".."):
            raise PathRejected("empty, '.' or '..' path segment")
    return parts


def parse_query(query: str) -> dict[str, list[str]]:
    if ";" in query:
        raise PathRejected("';' in the query string")
    if "#" in query:  # Go's server keeps it in the query; yarl and many proxies end it there
        raise PathRejected("'#' in the query string")
    if _BAD_ESCAPE.search(query):  # Go drops such pairs, Python keeps them as text
        raise PathRejected("malformed percent-escape in the query string")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (ValueError, UnicodeDecodeError):
        raise PathRejected("undecodable query string") from None
    out: dict[str, list[str]] = {}
    for k, v in pairs:
        out.setdefault(k, []).append(v)
    return out


def go_bool(values: list[str] | None) -> bool:
    """metav1's Convert_Slice_string_To_bool: absent is false; "0"/"false" false; else true."""
    if not values:
        return False
    # Go compares with strings.EqualFold (simple Unicode folding): "fal\u017fe" (a
    # long s) is false to the cluster; Python's lower() keeps it apart
    return not (values[0] == "0" or values[0].replace("\u017f", "s").lower() == "false")


def _lower(value: str, what: str) -> str:
    if not _LOWER.match(value):
        raise PathRejected(f"{what} {value!r} is not a lower-case Kubernetes name")
    return value


def _name(value: str) -> str:
    if any(c in value for c in _SEGMENT_BAD) or value in (".", ".."):
        raise PathRejected("invalid object name in the path")
    return value


def request_info(method: str, path: str, query: dict[str, list[str]]) -> RequestInfo:
    """What kube-apiserver's RequestInfoFactory.NewRequestInfo computes."""
    method = method.upper()
    parts = check_path(path)
    non_resource = RequestInfo(path=path, verb=method.lower())
    if len(parts) < 3 or parts[0] not in API_PREFIXES:
        if parts and parts[0].lower() in API_PREFIXES and parts[0] not in API_PREFIXES:
            raise PathRejected("upper-case API prefix")
        return non_resource
    prefix, rest = parts[0], parts[1:]
    group = ""
    if prefix not in GROUPLESS:
        if len(rest) < 3:
            return non_resource
        group, rest = _lower(rest[0], "API group"), rest[1:]
    version, rest = _lower(rest[0], "API version"), rest[1:]
    if not rest:
        return non_resource
    verb = ""
    if rest[0] in SPECIAL_VERBS:
        if len(rest) < 2:
            raise PathRejected("unable to determine kind and namespace from url")
        verb, rest = rest[0], rest[1:]
    else:
        verb = _METHOD_VERBS.get(method, "")
        if not verb:
            raise PathRejected(f"method {method} is not a Kubernetes API verb")
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 1:
        namespace = _lower(rest[1], "namespace")
        if len(rest) > 2 and rest[2] not in NAMESPACE_SUBRESOURCES:
            rest = rest[2:]
    resource = _lower(rest[0], "resource")
    name = _name(rest[1]) if len(rest) >= 2 else ""
    sub = ""
    if len(rest) >= 3 and verb not in NO_SUBRESOURCE_VERBS:
        sub = _lower(rest[2], "subresource")
    if len(rest) > 3 and "proxy" not in (verb, sub):
        raise PathRejected("path has parts after the subresource")
    if not name and verb == "get":
        verb = "watch" if go_bool(query.get("watch")) else "list"
        selector = (query.get("fieldSelector") or [""])[0]
        exact = _exact_name(selector)
        if exact:
            name = exact
    if not name and verb == "delete":
        verb = "deletecollection"
    connect = sub in CONNECT_SUBRESOURCES and verb in ("get", "create")
    if connect:
        verb = "create"
    return RequestInfo(
        path=path,
        verb=verb,
        is_resource=True,
        api_prefix=prefix,
        group=group,
        version=version,
        namespace=namespace,
        resource=resource,
        subresource=sub,
        name=name,
        connect=connect,
    )


def _exact_name(selector: str) -> str:
    """metadata.name=X in a field selector (RequiresExactMatch), else ""."""
    for term in selector.split(","):
        key, op, value = term.partition("==") if "==" in term else term.partition("=")
        if op and key.strip() == "metadata.name" and not value.startswith("!"):
            value = value.strip()
            if value and not any(c in value for c in _SEGMENT_BAD):
                return value
    return ""
