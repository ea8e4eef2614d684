"""Just enough of Kubernetes' protobuf encoding to read what kubectl's typed
clients POST (`kubectl create secret|configmap|namespace|deployment`).

The envelope is `k8s\\x00` + runtime.Unknown{1: TypeMeta{1: apiVersion, 2: kind},
2: raw object bytes}.  Objects are decoded by small field-number schemas covering
the fields those commands set; anything else is skipped (a gap, see README.md).
"""

from __future__ import annotations

import base64
from typing import Any

MAGIC = b"k8s\x00"

Schema = dict[int, tuple[str, Any]]  # field number -> (name, type)
STR, BYTES, INT = "str", "bytes", "int"
META: Schema = {
    1: ("name", STR),
    2: ("generateName", STR),
    3: ("namespace", STR),
    11: ("labels", ("map", STR)),
    12: ("annotations", ("map", STR)),
}
CONTAINER: Schema = {
    1: ("name", STR),
    2: ("image", STR),
    3: ("command", ("list", STR)),
    4: ("args", ("list", STR)),
}
POD_SPEC: Schema = {2: ("containers", ("list", CONTAINER))}
TEMPLATE: Schema = {1: ("metadata", META), 2: ("spec", POD_SPEC)}
SELECTOR: Schema = {1: ("matchLabels", ("map", STR))}
SCHEMAS: dict[str, Schema] = {
    "Secret": {
        1: ("metadata", META),
        2: ("data", ("map", BYTES)),
        3: ("type", STR),
        4: ("stringData", ("map", STR)),
    },
    "ConfigMap": {
        1: ("metadata", META),
        2: ("data", ("map", STR)),
        3: ("binaryData", ("map", BYTES)),
    },
    "Namespace": {1: ("metadata", META)},
    "ServiceAccount": {1: ("metadata", META)},
    "TokenRequest": {
        1: ("metadata", META),
        2: ("spec", {1: ("audiences", ("list", STR)), 4: ("expirationSeconds", INT)}),
    },
    "Pod": {1: ("metadata", META), 2: ("spec", POD_SPEC)},
    "Job": {1: ("metadata", META), 2: ("spec", {6: ("template", TEMPLATE)})},
    "CronJob": {
        1: ("metadata", META),
        2: (
            "spec",
            {1: ("schedule", STR), 5: ("jobTemplate", {2: ("spec", {6: ("template", TEMPLATE)})})},
        ),
    },
    "Deployment": {
        1: ("metadata", META),
        2: ("spec", {1: ("replicas", INT), 2: ("selector", SELECTOR), 3: ("template", TEMPLATE)}),
    },
}


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        if c < 0x80:
            return value, i
        shift += 7


def fields(b: bytes) -> list[tuple[int, Any]]:
    """(field number, int or bytes) pairs of one message."""
    out: list[tuple[int, Any]] = []
    i = 0
    while i < len(b):
        v: Any
        key, i = _varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(b, i)
        elif wire == 2:
            n, i = _varint(b, i)
            v, i = b[i : i + n], i + n
        elif wire == 1:
            v, i = b[i : i + 8], i + 8
        elif wire == 5:
            v, i = b[i : i + 4], i + 4
        else:
            raise ValueError(f"wire type {wire}")
        out.append((num, v))
    return out


def _value(typ: Any, v: Any) -> Any:
    if typ == STR:
        return bytes(v).decode()
    if typ == BYTES:
        return base64.b64encode(bytes(v)).decode()
    if typ == INT:
        return int(v)
    return message(typ, v)


def message(schema: Schema, b: bytes) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for num, v in fields(b):
        if num not in schema:
            continue
        name, typ = schema[num]
        if isinstance(typ, tuple) and typ[0] == "map":
            entry = dict(fields(v))
            out.setdefault(name, {})[bytes(entry.get(1, b"")).decode()] = _value(
                typ[1], entry.get(2, b"")
            )
        elif isinstance(typ, tuple) and typ[0] == "list":
            out.setdefault(name, []).append(_value(typ[1], v))
        else:
            out[name] = _value(typ, v)
    return out


def decode(body: bytes) -> dict[str, Any]:
    if not body.startswith(MAGIC):
        raise ValueError("not a Kubernetes protobuf envelope")
    unknown = dict(fields(body[4:]))
    tm = dict(fields(unknown.get(1, b"")))
    api_version, kind = bytes(tm.get(1, b"")).decode(), bytes(tm.get(2, b"")).decode()
    schema = SCHEMAS.get(kind)
    if schema is None:
        raise ValueError(f"kubeemu cannot decode {kind} from protobuf")
    obj = message(schema, unknown.get(2, b""))
    obj.update(apiVersion=api_version, kind=kind)
    return obj
