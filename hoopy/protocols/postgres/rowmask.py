"""Rewriting result values on the wire: DataRow messages and COPY rows — pure, no I/O.

A `RowMasker` holds one action per result column (None: pass the bytes through).  An
action takes the column's wire value (text or binary format, None for SQL NULL) and
returns the value to send instead.  Every replacement is a valid value of the column's
type in its format, so drivers decode masked rows without error:

* string types (text, varchar, char(n), name, citext, enums, domains over them): the
  masking style applied to the text ("****", partial, keyed hash) — the binary form of
  these types is their UTF-8 text;
* json / jsonb: a JSON string ("****"); jsonb's binary form has a version byte first;
* numbers: NULL, or zero when `masking.redact_numeric: zero`;
* anything else (dates, uuids, arrays, composites, binary values hoopy does not parse):
  NULL, which every client accepts for every type.

Detectors edit text in place where the type allows it (string types, JSON, and the text
form of arrays and composites); where it does not (numbers, inet, the binary form of
arrays and composites) a value in which a detector finds something becomes NULL.

Counts of masked values per (rule, detector-or-"column") are kept; values never are.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from hoopy.masking import REDACTED, ValueMasker, mask_whole

Value = bytes | None
Action = Callable[[Value], Value]
Counts = Counter[tuple[str, str]]

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_NULL = b"\xff\xff\xff\xff"

# ---- type families ---------------------------------------------------------------------
# How a type's values look on the wire decides how they can be masked.
STRING, JSON, JSONB, NUMBER, INT8, NUMERIC, INET, TEXTUAL, OPAQUE, INERT = (
    "string", "json", "jsonb", "number", "int8", "numeric", "inet", "textual", "opaque", "inert",
)  # fmt: skip

BUILTIN_FAMILIES: dict[int, str] = {
    25: STRING, 1043: STRING, 1042: STRING, 19: STRING, 705: STRING, 142: STRING,
    114: JSON, 3802: JSONB,
    20: INT8, 1700: NUMERIC, 21: NUMBER, 23: NUMBER, 26: NUMBER, 700: NUMBER, 701: NUMBER,
    869: INET, 650: INET,
    16: INERT, 17: OPAQUE, 18: OPAQUE, 1082: INERT, 1083: INERT, 1114: INERT, 1184: INERT,
    1186: INERT, 1266: INERT, 2950: INERT, 3904: INERT, 3906: INERT, 3908: INERT,
    # arrays of strings and JSON: editable in text format, scanned in binary
    1009: TEXTUAL, 1015: TEXTUAL, 1014: TEXTUAL, 1003: TEXTUAL, 199: TEXTUAL, 3807: TEXTUAL,
    2249: TEXTUAL, 2287: TEXTUAL,  # record, record[]
}  # fmt: skip
_ZERO_BINARY = {21: b"\0\0", 23: b"\0" * 4, 26: b"\0" * 4, 20: b"\0" * 8, 700: b"\0" * 4}
_ZERO_BINARY |= {701: b"\0" * 8, 1700: b"\0" * 8}


@dataclass(frozen=True)
class ColumnType:
    oid: int
    family: str


# ---- whole-value masks -----------------------------------------------------------------


def whole_action(
    ctype: ColumnType, binary: bool, style: str, key: bytes, numeric: str, rule: str, counts: Counts
) -> Action:
    """Mask every value of a column (a column rule matched)."""
    tag = (rule, "column")
    fam = ctype.family

    if fam == STRING:
        if style == "redact":
            return _constant(REDACTED.encode(), tag, counts)

        def styled(v: Value) -> Value:
            if v is None:
                return None
            counts[tag] += 1
            return mask_whole(v.decode("utf-8", "replace"), style, key).encode()

        return styled
    if fam in (JSON, JSONB):
        prefix = b"\x01" if (fam == JSONB and binary) else b""
        if style == "redact":
            return _constant(prefix + json.dumps(REDACTED).encode(), tag, counts)

        def styled_json(v: Value) -> Value:
            if v is None:
                return None
            counts[tag] += 1
            text = v[len(prefix) :].decode("utf-8", "replace")
            return prefix + json.dumps(mask_whole(text, style, key)).encode()

        return styled_json
    if numeric == "zero" and fam in (NUMBER, INT8, NUMERIC):
        zero = _ZERO_BINARY.get(ctype.oid) if binary else b"0"
        if zero is not None:
            return _constant(zero, tag, counts)
    return _constant(None, tag, counts)


def _constant(replacement: Value, tag: tuple[str, str], counts: Counts) -> Action:
    def constant(v: Value) -> Value:
        if v is None:
            return None
        counts[tag] += 1
        return replacement

    return constant


# ---- detector masks --------------------------------------------------------------------


def detector_action(
    ctype: ColumnType,
    binary: bool,
    masker: ValueMasker,
    rules_of: dict[str, str],
    counts: Counts,
) -> Action | None:
    """Mask detected values in a column no column rule covers; None: nothing to scan."""
    fam = ctype.family

    def tally(found: Counter[str]) -> None:
        for det, n in found.items():
            counts[(rules_of.get(det, ""), det)] += n

    if fam == STRING or (fam == TEXTUAL and not binary):

        def text(v: Value) -> Value:
            if v is None:
                return None
            s = v.decode("utf-8", "surrogateescape")
            masked, found = masker.mask_text(s)
            if not found:
                return v
            tally(found)
            return masked.encode("utf-8", "surrogateescape")

        return text
    if fam in (JSON, JSONB):
        skip = 1 if (fam == JSONB and binary) else 0

        def json_value(v: Value) -> Value:
            if v is None:
                return None
            s = v[skip:].decode("utf-8", "surrogateescape")
            masked, found = masker.mask_json_text(s)
            if not found:
                return v
            tally(found)
            return v[:skip] + masked.encode("utf-8", "surrogateescape")

        return json_value
    if fam in (INT8, NUMERIC, INET, TEXTUAL, OPAQUE) or fam not in _KNOWN:
        as_text = _text_view(ctype, binary)
        if as_text is None:
            return None

        def null_if_found(v: Value) -> Value:
            if v is None:
                return v
            s = as_text(v)
            if s is None:
                return v
            _, found = masker.mask_text(s)
            if not found:
                return v
            tally(found)
            return None

        return null_if_found
    return None


_KNOWN = frozenset({STRING, JSON, JSONB, NUMBER, INT8, NUMERIC, INET, TEXTUAL, OPAQUE, INERT})


def _text_view(ctype: ColumnType, binary: bool) -> Callable[[bytes], str | None] | None:
    """How a detector reads a value it may not edit."""
    fam = ctype.family
    if not binary:
        return lambda v: v.decode("utf-8", "replace")
    if fam == INT8:
        return lambda v: str(_I64.unpack(v)[0]) if len(v) == 8 else None
    if fam == NUMERIC:
        return _numeric_text
    if fam == INET:
        return _inet_text
    # binary arrays, composites and unknown types: strings inside are stored as their
    # UTF-8 bytes between length words, so a detector still sees them in a latin-1 view
    return lambda v: v.decode("latin-1")


_I64 = struct.Struct("!q")


def _numeric_text(v: bytes) -> str | None:
    if len(v) < 8:
        return None
    ndigits, weight, sign, _dscale = struct.unpack_from("!hhHH", v)
    if sign == 0xC000 or ndigits == 0:
        return None
    digits = struct.unpack_from(f"!{ndigits}H", v, 8)
    # integer part only: card numbers are integers
    out = "".join(f"{d:04d}" for d in digits[: max(weight + 1, 0)]).lstrip("0")
    return out or None


def _inet_text(v: bytes) -> str | None:
    import ipaddress

    if len(v) not in (8, 20):
        return None
    addr = v[4:]
    try:
        return str(ipaddress.ip_address(addr))
    except ValueError:
        return None


# ---- rewriting messages ----------------------------------------------------------------


class RowMasker:
    """Rewrites coalesced DataRow messages (and COPY text rows) column by column."""

    def __init__(self, actions: list[Action | None], counts: Counts) -> None:
        self.actions = actions
        self.counts = counts
        self.active = any(a is not None for a in actions)

    def rewrite(self, raw: bytes) -> bytes:
        """`raw` holds whole DataRow messages; every value goes through its action."""
        if not self.active:
            return raw
        actions = self.actions
        ncols = len(actions)
        out: list[bytes] = []
        pos, end = 0, len(raw)
        mv = memoryview(raw)
        while pos < end:
            (length,) = _U32.unpack_from(raw, pos + 1)
            stop = pos + 1 + length
            (count,) = _U16.unpack_from(raw, pos + 5)
            p = pos + 7
            parts: list[bytes] = []
            size = 2
            if count != ncols:
                # the plan does not fit the row: hoopy lost track; send NULLs, never data
                parts = [_NULL] * count
                size += 4 * count
            else:
                keep_from = p
                for action in actions:
                    (n,) = _I32.unpack_from(raw, p)
                    nxt = p + 4 + (n if n > 0 else 0)
                    if action is not None:
                        if keep_from < p:
                            parts.append(mv[keep_from:p].tobytes())
                            size += p - keep_from
                        new = action(raw[p + 4 : nxt] if n >= 0 else None)
                        if new is None:
                            parts.append(_NULL)
                            size += 4
                        else:
                            parts.append(_I32.pack(len(new)))
                            parts.append(new)
                            size += 4 + len(new)
                        keep_from = nxt
                    p = nxt
                if keep_from < p:
                    parts.append(mv[keep_from:p].tobytes())
                    size += p - keep_from
                if p != stop:
                    raise ValueError("DataRow length does not match its values")
            out.append(b"D" + _U32.pack(size + 4) + _U16.pack(count))
            out.extend(parts)
            pos = stop
        return b"".join(out)

    def rewrite_copy(self, data: bytes, fmt: CopyFormat) -> bytes:
        """One COPY TO row (the server sends one row per CopyData message)."""
        if not self.active:
            return data
        if fmt.header_pending:
            fmt.header_pending = False  # column names, not data
            return data
        if fmt.csv:
            return self._copy_csv(data, fmt)
        return self._copy_text(data, fmt)

    def _copy_text(self, data: bytes, fmt: CopyFormat) -> bytes:
        nl = data.endswith(b"\n")
        fields = (data[:-1] if nl else data).split(fmt.delimiter)
        if len(fields) != len(self.actions):
            return fmt.delimiter.join([fmt.null] * len(fields)) + (b"\n" if nl else b"")
        for i, action in enumerate(self.actions):
            if action is None:
                continue
            old = None if fields[i] == fmt.null else _copy_unescape(fields[i])
            new = action(old)
            if new is not old:
                fields[i] = fmt.null if new is None else _copy_escape(new, fmt.delimiter)
        return fmt.delimiter.join(fields) + (b"\n" if nl else b"")

    def _copy_csv(self, data: bytes, fmt: CopyFormat) -> bytes:
        nl = data.endswith(b"\n")
        fields = _csv_split(data[:-1] if nl else data, fmt)
        if fields is None or len(fields) != len(self.actions):
            n = len(self.actions)
            return fmt.delimiter.join([fmt.null] * n) + (b"\n" if nl else b"")
        out: list[bytes] = []
        for (value, quoted), action in zip(fields, self.actions, strict=True):
            is_null = value == fmt.null and not quoted
            if action is None:
                out.append(_csv_quote(value, fmt) if quoted else value)
                continue
            new = action(None if is_null else value)
            out.append(fmt.null if new is None else _csv_quote(new, fmt))
        return fmt.delimiter.join(out) + (b"\n" if nl else b"")


@dataclass
class CopyFormat:
    """COPY TO options that shape its rows (from the statement, defaults as PostgreSQL's)."""

    csv: bool = False
    delimiter: bytes = b"\t"
    null: bytes = b"\\N"
    quote: bytes = b'"'
    escape: bytes = b'"'
    header_pending: bool = False
    binary: bool = False

    @classmethod
    def of(cls, options: dict[str, str]) -> CopyFormat:
        csv = options.get("format", "text").lower() == "csv"
        delimiter = options.get("delimiter", "," if csv else "\t").encode()
        null = options.get("null", "" if csv else "\\N").encode()
        quote = options.get("quote", '"').encode()
        escape = options.get("escape", quote.decode()).encode()
        header = options.get("header", "false").lower() in ("true", "on", "1", "match", "")
        binary = options.get("format", "text").lower() == "binary"
        return cls(csv, delimiter, null, quote, escape, header, binary)


_UNESCAPES = {
    ord("b"): b"\b", ord("f"): b"\f", ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t",
    ord("v"): b"\v", ord("\\"): b"\\",
}  # fmt: skip


def _copy_unescape(v: bytes) -> bytes:
    if b"\\" not in v:
        return v
    out = bytearray()
    i, n = 0, len(v)
    while i < n:
        c = v[i]
        if c == 0x5C and i + 1 < n:
            out += _UNESCAPES.get(v[i + 1], v[i + 1 : i + 2])
            i += 2
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _copy_escape(v: bytes, delimiter: bytes = b"\t") -> bytes:
    for raw, esc in ((b"\\", b"\\\\"), (b"\t", b"\\t"), (b"\n", b"\\n"), (b"\r", b"\\r")):
        if raw in v:
            v = v.replace(raw, esc)
    if delimiter not in (b"\t",) and delimiter in v:
        v = v.replace(delimiter, b"\\" + delimiter)
    return v


def _csv_split(line: bytes, fmt: CopyFormat) -> list[tuple[bytes, bool]] | None:
    """PostgreSQL CSV output fields as (value, was_quoted); None when malformed."""
    fields: list[tuple[bytes, bool]] = []
    q, e, d = fmt.quote[0], fmt.escape[0], fmt.delimiter
    i, n = 0, len(line)
    while True:
        if i < n and line[i] == q:
            buf = bytearray()
            i += 1
            while True:
                if i >= n:
                    return None
                c = line[i]
                if c == e and i + 1 < n and line[i + 1] in (q, e) and (e != q or line[i + 1] == q):
                    buf.append(line[i + 1])
                    i += 2
                elif c == q:
                    i += 1
                    break
                else:
                    buf.append(c)
                    i += 1
            fields.append((bytes(buf), True))
        else:
            j = line.find(d, i)
            j = n if j < 0 else j
            fields.append((line[i:j], False))
            i = j
        if i >= n:
            return fields
        if line[i : i + len(d)] != d:
            return None
        i += len(d)
        if i == n:
            fields.append((b"", False))
            return fields


def _csv_quote(v: bytes, fmt: CopyFormat) -> bytes:
    q, e = fmt.quote, fmt.escape
    if v and v != fmt.null and not any(c in v for c in (q, e, fmt.delimiter, b"\n", b"\r")):
        return v
    if e != q:
        v = v.replace(e, e + e)
    return q + v.replace(q, e + q) + q
