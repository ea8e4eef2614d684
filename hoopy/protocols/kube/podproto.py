"""The containers of a Kubernetes protobuf body, as JSON (sans-I/O), for podcmds.py.

kubectl's typed clients (`kubectl create job|cronjob|deployment`, `kubectl run`) send
protobuf: `k8s\\x00` + runtime.Unknown{1: TypeMeta, 2: raw object}.  Only what can
run a command is decoded (field numbers of k8s.io/api's generated.proto): each
container's name, command, args, env, envFrom, probes and lifecycle hooks, in every
kind that holds a pod spec.  As Go's decoder does, a repeated field gives one element
per occurrence, a message given twice is merged, and of a string given twice the last
wins.
"""

from __future__ import annotations

from typing import Any

from hoopy.protocols.kube.bodies import PROTOBUF_MAGIC, BodyError, _fields, all_fields

Schema = dict[int, tuple[str, Any]]
STR, STRS = "str", "strs"

EXEC: Schema = {1: ("command", STRS)}
HANDLER: Schema = {1: ("exec", EXEC)}  # ProbeHandler / LifecycleHandler: exec is 1
PROBE: Schema = {1: ("", HANDLER)}  # the handler is embedded (inlined in JSON)
ENV: Schema = {1: ("name", STR), 2: ("value", STR), 3: ("valueFrom", {})}
CONTAINER: Schema = {
    1: ("name", STR),
    3: ("command", STRS),
    4: ("args", STRS),
    7: ("env", [ENV]),
    19: ("envFrom", [{}]),
    10: ("livenessProbe", PROBE),
    11: ("readinessProbe", PROBE),
    22: ("startupProbe", PROBE),
    12: ("lifecycle", {1: ("postStart", HANDLER), 2: ("preStop", HANDLER)}),
}
EPHEMERAL: Schema = {1: ("", CONTAINER)}  # EphemeralContainerCommon, inlined
POD_SPEC: Schema = {
    2: ("containers", [CONTAINER]),
    20: ("initContainers", [CONTAINER]),
    34: ("ephemeralContainers", [EPHEMERAL]),
}
TEMPLATE: Schema = {2: ("spec", POD_SPEC)}
_JOB_SPEC: Schema = {6: ("template", TEMPLATE)}
KINDS: dict[str, Schema] = {
    "pods": {2: ("spec", POD_SPEC)},
    "podtemplates": {2: ("template", TEMPLATE)},
    "deployments": {2: ("spec", {3: ("template", TEMPLATE)})},
    "statefulsets": {2: ("spec", {3: ("template", TEMPLATE)})},
    "replicasets": {2: ("spec", {3: ("template", TEMPLATE)})},
    "replicationcontrollers": {2: ("spec", {3: ("template", TEMPLATE)})},
    "daemonsets": {2: ("spec", {2: ("template", TEMPLATE)})},
    "jobs": {2: ("spec", _JOB_SPEC)},
    "cronjobs": {2: ("spec", {5: ("jobTemplate", {2: ("spec", _JOB_SPEC)})})},
}


def decode(resource: str, body: bytes) -> dict[str, Any]:
    """The body's object, as far as KINDS reads it (BodyError when it cannot be read)."""
    if not body.startswith(PROTOBUF_MAGIC):
        raise BodyError("not a Kubernetes protobuf envelope")
    schema = KINDS[resource]
    raw = b"".join(_fields(body[4:], 2))  # runtime.Unknown.raw
    try:
        return _message(schema, raw, 0)
    except (UnicodeDecodeError, RecursionError):
        raise BodyError("undecodable protobuf body") from None


def _message(schema: Schema, b: bytes, depth: int) -> dict[str, Any]:
    if depth > 16:
        raise BodyError("protobuf nested too deeply")
    out: dict[str, Any] = {}
    merged: dict[int, bytearray] = {}  # singular messages: every occurrence, merged
    for num, wire, v in all_fields(b):
        if num not in schema:
            continue
        if wire != 2:
            raise BodyError(f"unexpected protobuf wire type for field {num}")
        name, typ = schema[num]
        if typ == STR:
            out[name] = bytes(v).decode()
        elif typ == STRS:
            out.setdefault(name, []).append(bytes(v).decode())
        elif isinstance(typ, list):
            out.setdefault(name, []).append(_message(typ[0], v, depth + 1))
        else:
            merged.setdefault(num, bytearray()).extend(v)
    for num, data in merged.items():
        name, typ = schema[num]
        value = _message(typ, bytes(data), depth + 1)
        if name:
            out[name] = value
        else:
            out.update(value)  # an embedded struct inlined in JSON
    return out
