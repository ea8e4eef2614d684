"""One recording event as the line the recording holds: JSON (`jsonable`, the encoder,
size caps) and the hash chain's line format (see `chain_line`).

The line of an event is `{"seq":n,"ts":…,"type":"…",…fields…,"prev":"<sha256 hex>"}`
(recorder.py's theory of operation): `prev` is the SHA-256 of the previous line's bytes.
Everything here is pure (bytes and dicts in, bytes out), so that it can be tested on its
own; the chain's state and the lines of every event are eventchain.py's (compiled), which
must make exactly the lines `chain_line` makes: tests/test_eventchain.py holds it to
`chain_line` as the reference, and eventchain calls `_encode_event` for capped events.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from datetime import date, datetime
from datetime import time as dtime
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from pathlib import PurePath
from typing import Any
from uuid import UUID

ZERO_HASH = "0" * 64
MAX_EVENT_BYTES = 1 << 20
RESERVED = frozenset({"seq", "ts", "type", "prev"})
_MAX_DEPTH = 32


def jsonable(value: Any, _depth: int = 0) -> Any:
    """A JSON-serialisable copy of `value`: bytes → {"b64": …}, sets → sorted lists,
    tuples → lists, non-finite floats → strings, dataclasses → dicts, other objects →
    str/repr (hoopy's secret references never reveal their value in repr)."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if _depth >= _MAX_DEPTH:
        return "…[nested too deep]"
    if isinstance(value, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, Mapping):
        return {_key(k): jsonable(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v, _depth + 1) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((jsonable(v, _depth + 1) for v in value), key=_sort_key)
    if isinstance(value, enum.Enum):
        return jsonable(value.value, _depth + 1)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields_ = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return jsonable(fields_, _depth + 1)
    if isinstance(value, datetime | date | dtime):
        return value.isoformat()
    if isinstance(value, Decimal | UUID | PurePath | IPv4Address | IPv6Address):
        return str(value)
    return repr(value)


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, bytes):
        return k.decode("utf-8", "backslashreplace")
    return str(k)


def _sort_key(v: Any) -> str:
    return json.dumps(v, sort_keys=True, ensure_ascii=False)


def _default(o: Any) -> Any:
    converted = jsonable(o)
    if converted is o:  # cannot happen for the types json rejects; guard against loops
        return repr(o)
    return converted


_ENCODER = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_default
)
_json_str = json.encoder.encode_basestring  # the C one where available, as _ENCODER's
# The C encoder _ENCODER.encode() builds anew on every call, made once: events are many.
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
_iterencode: Callable[[Any, int], Any] | None = (
    _c_encoder(
        None,  # no cycle markers: a cycle overflows the stack, caught below like the rest
        _default,
        _json_str,
        None,
        ":",
        ",",
        False,
        False,
        False,  # allow_nan
    )
    if _c_encoder is not None
    else None
)


def _dumps(obj: Any) -> bytes:
    try:
        if _iterencode is not None and type(obj) is dict:
            text = "".join(_iterencode(obj, 0))
        else:
            text = _ENCODER.encode(obj)
    except (TypeError, ValueError, RecursionError):  # odd keys, NaN, cycles
        text = json.dumps(jsonable(obj), ensure_ascii=False, separators=(",", ":"))
    # Lone surrogates become \udXXX escapes, which JSON decodes back to the same string.
    return text.encode("utf-8", "backslashreplace")


def _shrink(value: Any, limit: int) -> Any:
    """Cap strings at `limit` characters and lists/dicts at `limit` items, with markers."""
    if isinstance(value, str):
        if len(value) <= limit:
            return value
        return value[:limit] + f"…[truncated {len(value) - limit} chars]"
    if isinstance(value, list):
        out = [_shrink(v, limit) for v in value[:limit]]
        if len(value) > limit:
            out.append(f"…[{len(value) - limit} more items]")
        return out
    if isinstance(value, dict):
        items = list(value.items())
        d = {k: _shrink(v, limit) for k, v in items[:limit]}
        if len(items) > limit:
            d["…"] = f"[{len(items) - limit} more keys]"
        return d
    return value


def encode_members(fields: dict[str, Any]) -> bytes:
    """Fields as JSON object members (no braces), for SessionLog.event_static."""
    bad = RESERVED.intersection(fields)
    if bad:
        raise ValueError(f"reserved event field(s): {', '.join(sorted(bad))}")
    return _dumps(fields)[1:-1]


def _encode_event(head: dict[str, Any], fields: dict[str, Any], prev: str) -> bytes:
    """One event line (no newline), at most MAX_EVENT_BYTES."""
    record = {**head, **fields, "prev": prev}
    line = _dumps(record)
    if len(line) <= MAX_EVENT_BYTES:
        return line
    body = jsonable(fields)
    limit = MAX_EVENT_BYTES // 2
    while limit >= 16:
        line = _dumps({**head, **_shrink(body, limit), "truncated": len(line), "prev": prev})
        if len(line) <= MAX_EVENT_BYTES:
            return line
        limit //= 4
    return _dumps({**head, "truncated": len(line), "prev": prev})


# hoopy's own event kinds are plain names: their JSON is themselves (found once each).
_KINDS: dict[str, bytes] = {}


def chain_line(
    seq: int,
    ts: bytes,
    kind: str,
    fields: dict[str, Any],
    members: bytes | None,
    static: tuple[bytes, dict[str, Any]] | None,
    prev: str,
) -> tuple[bytes, str]:
    """(the event's line with its newline, the line's SHA-256 hex: the next `prev`).

    `ts`: the time as JSON; `members`: `fields` already encoded as `,"k":v…` (or None);
    `static`: more fields, encoded once by `encode_members`, and as a dict.  The same
    bytes `_encode_event` makes of the merged dict, put together without a dict per
    event; an event over MAX_EVENT_BYTES goes through `_encode_event` to be capped."""
    kind_bytes = _KINDS.get(kind)
    if kind_bytes is None:
        kind_bytes = kind.encode() if kind.isascii() and kind.isidentifier() else b""
        if kind_bytes and len(_KINDS) < 256:
            _KINDS[kind] = kind_bytes
    if members is None:
        members = b"," + _dumps(fields)[1:-1] if fields else b""
    line = b'{"seq":%d,"ts":%s,"type":"%s"%s%s,"prev":"%s"}\n' % (
        seq,
        ts,
        kind_bytes,
        members,
        b"," + static[0] if static is not None and static[0] else b"",
        prev.encode(),
    )
    if len(line) > MAX_EVENT_BYTES + 1 or not kind_bytes:
        head = {"seq": seq, "ts": json.loads(ts), "type": kind}
        merged = {**fields, **static[1]} if static is not None else fields
        line = _encode_event(head, merged, prev) + b"\n"
    return line, hashlib.sha256(line[:-1]).hexdigest()
