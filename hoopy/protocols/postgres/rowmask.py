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

import bisect
import functools
import itertools
import json
import re
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hoopy.masking import REDACTED, Span, ValueMasker, mask_whole
from hoopy.protocols.postgres.copyopts import CopyFormat

Value = bytes | None
# An action maps a column's values to their replacements: the whole list, or only the
# changed ones by row (a detector changes few values of a column)
Result = list[Value] | dict[int, Value]
Action = Callable[[list[Value]], Result]
Counts = Counter[tuple[str, str]]

_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")
_U32U16 = struct.Struct("!IH")
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
# An Action masks one column of a batch of rows at once: detectors then scan a whole
# column in one pass of C code instead of one Python call per value.


def whole_action(
    ctype: ColumnType, binary: bool, style: str, key: bytes, numeric: str, rule: str, counts: Counts
) -> Action:
    """Mask every value of a column (a column rule matched)."""
    tag = (rule, "column")
    fam = ctype.family
    if fam == STRING:
        if style == "redact":
            return _constant(REDACTED.encode(), tag, counts)
        return _per_value(
            lambda v: mask_whole(v.decode("utf-8", "replace"), style, key).encode(), tag, counts
        )
    if fam in (JSON, JSONB):
        prefix = b"\x01" if (fam == JSONB and binary) else b""
        if style == "redact":
            return _constant(prefix + json.dumps(REDACTED).encode(), tag, counts)
        n = len(prefix)
        return _per_value(
            lambda v: (
                prefix
                + json.dumps(mask_whole(v[n:].decode("utf-8", "replace"), style, key)).encode()
            ),
            tag,
            counts,
        )
    if numeric == "zero" and fam in (NUMBER, INT8, NUMERIC):
        zero = _ZERO_BINARY.get(ctype.oid) if binary else b"0"
        if zero is not None:
            return _constant(zero, tag, counts)
    return _constant(None, tag, counts)


def _constant(replacement: Value, tag: tuple[str, str], counts: Counts) -> Action:
    def constant(values: list[Value]) -> list[Value]:
        out = [None if v is None else replacement for v in values]
        counts[tag] += len(values) - values.count(None)
        return out

    # RowMasker writes this wire form itself, without a call per value
    constant.wire = _NULL if replacement is None else _I32.pack(len(replacement)) + replacement  # type: ignore[attr-defined]
    constant.tag = tag  # type: ignore[attr-defined]
    return constant


def _per_value(fn: Callable[[bytes], bytes], tag: tuple[str, str], counts: Counts) -> Action:
    def each(values: list[Value]) -> list[Value]:
        counts[tag] += len(values) - values.count(None)
        return [None if v is None else fn(v) for v in values]

    return each


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

        def edit_text(v: bytes, spans: list[Span] | None = None) -> Value:
            text = v.decode("utf-8", "surrogateescape")
            if spans is None:
                masked, found = masker.mask_text(text)
            else:
                masked, found = masker.mask_spans(text, spans)
            if not found:
                return v
            tally(found)
            return masked.encode("utf-8", "surrogateescape")

        return _scanned(masker, 0, edit_text, escapes=False)
    if fam in (JSON, JSONB):
        skip = 1 if (fam == JSONB and binary) else 0

        def edit_json(v: bytes, _spans: list[Span] | None = None) -> Value:
            masked, found = masker.mask_json_text(v[skip:].decode("utf-8", "surrogateescape"))
            if not found:
                return v
            tally(found)
            return v[:skip] + masked.encode("utf-8", "surrogateescape")

        return _scanned(masker, skip, edit_json, escapes=True)
    if fam in (INT8, NUMERIC, INET, TEXTUAL, OPAQUE) or fam not in _KNOWN:
        as_text = _text_view(ctype, binary)
        if as_text is None:
            return None

        def null_if_found(v: bytes) -> Value:
            s = as_text(v)
            if s is None:
                return v
            _, found = masker.mask_text(s)
            if not found:
                return v
            tally(found)
            return None

        def each(values: list[Value]) -> list[Value]:
            return [None if v is None else null_if_found(v) for v in values]

        return each
    return None


_SEP = b"\x00"  # PostgreSQL text never holds NUL, and no detector pattern matches one


def _scanned(
    masker: ValueMasker, skip: int, edit: Callable[[bytes, list[Span] | None], Value], escapes: bool
) -> Action:
    """Scan a column's values joined by NUL in one pass; edit only values a match touches.

    Sound as a filter: NUL is outside every detector's character classes and acts like
    a text boundary for their lookarounds, so a value's own matches are found in the
    joined text too (a match running across values only adds candidates).  A match
    inside one value is that value's own: it is masked without scanning again."""

    def scan(values: list[Value]) -> Result:
        if None in values:
            idx = [i for i, v in enumerate(values) if v is not None]
            present: list[bytes] = [values[i] for i in idx]  # type: ignore[misc]
        else:
            idx = None
            present = values  # type: ignore[assignment]
        if not present:
            return {}
        parts = [v[skip:] for v in present] if skip else present
        joined = _SEP.join(parts)
        if joined.count(_SEP) != len(parts) - 1:  # a NUL inside a value: scan one by one
            return [None if v is None else edit(v, None) for v in values]
        text = joined.decode("utf-8", "surrogateescape")
        hits = masker.spans(text)
        if escapes and "\\u" in text:  # JSON escapes can hide a match from the raw text
            hits = hits + [(m.start(), m.end(), "") for m in _ESCAPE.finditer(text)]
        if not hits:
            return {}
        # start offsets of the values in `text`, computed in C: accumulate(len + 1)
        lengths = map((1).__add__, map(len, text.split("\x00")))
        bounds = list(itertools.accumulate(lengths, initial=0))
        own: dict[int, list[Span] | None] = {}
        for start, end, name in hits:
            first = bisect.bisect_right(bounds, start) - 1
            last = bisect.bisect_right(bounds, max(start, end - 1)) - 1
            if first == last and name and own.get(first, []) is not None:
                base = bounds[first]
                own.setdefault(first, []).append((start - base, end - base, name))  # type: ignore[union-attr]
            else:
                for k in range(first, last + 1):
                    own[k] = None  # spans across values: scan this one again
        changes: dict[int, Value] = {}
        for k, spans in own.items():
            if k < len(present):
                i = idx[k] if idx is not None else k
                v = present[k]
                exact = spans if (spans is not None and skip == 0 and not escapes) else None
                new = edit(v, exact)
                if new is not v:
                    changes[i] = new
        return changes

    return scan


_ESCAPE = re.compile(r"\\u[0-9a-fA-F]{4}")
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
    """Rewrites coalesced DataRow messages (and COPY rows) column by column."""

    def __init__(self, actions: list[Action | None], counts: Counts) -> None:
        self.actions = actions
        self.counts = counts
        self.masked = [i for i, a in enumerate(actions) if a is not None]
        self.active = bool(self.masked)
        self.null_everything = False
        self._tag: tuple[str, str] = ("", "unknown")
        self._compiled: tuple[Any, Any] | None = None
        self._copy_started = False  # a COPY row went through (one masker per COPY)

    @classmethod
    def nulls(cls, counts: Counts, tag: tuple[str, str] = ("", "unknown")) -> RowMasker:
        """Fail closed: every value of every row becomes NULL, whatever the shape."""
        m = cls([], counts)
        m.active = m.null_everything = True
        m._tag = tag
        return m

    def _all_nulls(self, raw: bytes) -> bytes:
        out: list[bytes] = []
        pos, end = 0, len(raw)
        while pos < end:
            length, count = _U32U16.unpack_from(raw, pos + 1)
            body = _U16.pack(count) + _NULL * count
            out.append(b"D" + _U32.pack(len(body) + 4) + body)
            self.counts[self._tag] += count
            pos += 1 + length
        return b"".join(out)

    def rewrite(self, raw: bytes) -> bytes:
        """`raw` holds whole DataRow messages; masked columns are replaced in place."""
        if not self.active:
            return raw
        if self.null_everything:
            return self._all_nulls(raw)
        actions, masked = self.actions, self.masked
        ncols = len(actions)
        if self._compiled is None:
            self._compiled = _compile([_kind(a) for a in actions])
        locate, assemble = self._compiled
        rows: list[tuple[int, int, tuple[int, ...] | None]] = []
        columns: list[list[Value]] = [[] for _ in range(ncols)]
        locate(raw, len(raw), rows, columns)  # pass 1: positions; values of action columns
        wires: list[bytes] = [_NULL] * ncols
        constants = [i for i in masked if _kind(actions[i]) == 1]
        changes: dict[int, list[int]] = {}  # row → action columns whose value changed
        for i in masked:
            a = actions[i]
            if i in constants:
                wires[i] = a.wire  # type: ignore[union-attr]
                continue
            old = columns[i]
            new = a(old)  # type: ignore[misc]
            if isinstance(new, dict):
                for r, v in new.items():
                    changes.setdefault(r, []).append(i)
                    old[r] = v
            elif new is not old:
                for r in [r for r, (x, y) in enumerate(zip(old, new, strict=True)) if x is not y]:
                    changes.setdefault(r, []).append(i)
                columns[i] = new
        out: list[bytes] = []
        masked_const = assemble(raw, rows, wires, out, changes, self._slow_row(columns, wires))
        for i, n in zip(constants, masked_const, strict=True):
            self.counts[actions[i].tag] += n  # type: ignore[union-attr]
        if not rows or rows[-1][1] != len(raw):
            raise ValueError("DataRow lengths do not match the message")
        return b"".join(out)

    def _slow_row(
        self, columns: list[list[Value]], wires: list[bytes]
    ) -> Callable[[bytes, int, int, tuple[int, ...] | None, int, list[int]], bytes]:
        """A row in which a detector changed something, or that does not fit the plan."""
        masked = self.masked
        slot = {i: 2 * j for j, i in enumerate(masked)}
        constants = [i for i in masked if _kind(self.actions[i]) == 1]

        def row(
            raw: bytes, pos: int, stop: int, at: tuple[int, ...] | None, r: int, changed: list[int]
        ) -> bytes:
            if at is None:
                # the plan does not fit the row: hoopy lost track; send NULLs, never data
                count = _U16.unpack_from(raw, pos + 5)[0]
                body = _U16.pack(count) + _NULL * count
                return b"D" + _U32.pack(len(body) + 4) + body
            cols = sorted(constants + changed)
            parts = [raw[pos + 5 : at[slot[cols[0]]]]]
            for n, i in enumerate(cols):
                j = slot[i]
                if i in constants:
                    parts.append(wires[i] if raw[at[j]] != 0xFF else _NULL)
                else:
                    v = columns[i][r]
                    parts.append(_NULL if v is None else _I32.pack(len(v)) + v)
                parts.append(raw[at[j + 1] : at[slot[cols[n + 1]]] if n + 1 < len(cols) else stop])
            body = b"".join(parts)
            return b"D" + _U32.pack(len(body) + 4) + body

        return row

    def apply_row(self, values: list[Value]) -> list[Value]:
        """Mask one row given as values (COPY)."""
        out = list(values)
        for i in self.masked:
            out[i] = apply_one(self.actions[i], values[i])  # type: ignore[arg-type]
        return out

    def rewrite_copy(self, data: bytes, fmt: CopyFormat) -> bytes:
        """One COPY TO row (the server sends one row per CopyData message)."""
        if not self.active:
            return data
        if self.null_everything:
            raise ValueError("COPY rows of an unknown statement cannot be masked")
        if fmt.header and not self._copy_started:
            self._copy_started = True  # the first line is column names, not data
            return data
        self._copy_started = True
        if fmt.csv:
            return self._copy_csv(data, fmt)
        return self._copy_text(data, fmt)

    def _copy_text(self, data: bytes, fmt: CopyFormat) -> bytes:
        nl = data.endswith(b"\n")
        fields = _text_split(data[:-1] if nl else data, fmt.delimiter)
        if len(fields) != len(self.actions):
            return fmt.delimiter.join([fmt.null] * len(fields)) + (b"\n" if nl else b"")
        for i in self.masked:
            old = None if fields[i] == fmt.null else _copy_unescape(fields[i])
            new = apply_one(self.actions[i], old)  # type: ignore[arg-type]
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
            new = apply_one(action, None if is_null else value)
            out.append(fmt.null if new is None else _csv_quote(new, fmt))
        return fmt.delimiter.join(out) + (b"\n" if nl else b"")


def apply_one(action: Action, value: Value) -> Value:
    """One value through a column action."""
    out = action([value])
    if isinstance(out, dict):
        return out.get(0, value)
    return out[0]


def _kind(action: Action | None) -> int:
    """0 pass through, 1 constant replacement, 2 an action over the column's values."""
    return 0 if action is None else (1 if hasattr(action, "wire") else 2)


@functools.lru_cache(maxsize=256)
def _compile_cached(kinds: tuple[int, ...]) -> tuple[Any, Any]:
    """Row loops unrolled for one column layout.

    Rewriting is a Python loop over every row; unrolling it per layout (generated from
    the column kinds only — integers, never data) removes the per-column loop and
    lookups, which is most of its cost.  `locate` records where each masked value
    starts and ends and cuts the values detectors scan; `assemble` rebuilds each row
    from slices of the original and the replacements."""
    ncols = len(kinds)
    masked = [i for i, k in enumerate(kinds) if k]
    last = max(masked)
    consts = [i for i in masked if kinds[i] == 1]
    lo = [
        "def locate(raw, end, rows, columns):",
        "    pos = 0",
        "    add_row = rows.append",
        *(f"    add{i} = columns[{i}].append" for i in masked if kinds[i] == 2),
        "    while pos < end:",
        "        length, count = U32U16(raw, pos + 1)",
        "        stop = pos + 1 + length",
        f"        if count != {ncols}:",
        "            add_row((pos, stop, None))",
        "            pos = stop",
        "            continue",
        "        p = pos + 7",
    ]
    for i in range(last + 1):
        lo.append("        n = I32(raw, p)[0]")
        if kinds[i] == 0:
            lo.append("        p += 4 + (n if n > 0 else 0)")
            continue
        lo.append(f"        s{i} = p")
        lo.append("        p += 4 + (n if n > 0 else 0)")
        lo.append(f"        e{i} = p")
        if kinds[i] == 2:
            lo.append(f"        add{i}(raw[s{i} + 4 : p] if n >= 0 else None)")
    marks = ", ".join(f"s{i}, e{i}" for i in masked)
    lo += [
        "        if p > stop:",
        "            raise ValueError('DataRow length does not match its values')",
        f"        add_row((pos, stop, ({marks},)))",
        "        pos = stop",
    ]
    slot = {i: 2 * j for j, i in enumerate(masked)}
    asm = [
        "def assemble(raw, rows, wires, out, changes, slow):",
        *(f"    w{i} = wires[{i}]" for i in consts),
        *(f"    n{i} = 0" for i in consts),
        "    add = out.append",
        "    r = 0",
        "    for pos, stop, at in rows:",
        "        if at is None or r in changes:",
        "            add(slow(raw, pos, stop, at, r, changes.get(r, [])))",
        "            if at is not None:",
        *(f"                n{i} += raw[at[{slot[i]}]] != 255" for i in consts),
        "                r += 1",
        "            continue",
        "        r += 1",
    ]
    if not consts:
        asm.append("        add(raw[pos:stop])")
    else:
        pieces = [f"raw[pos + 5 : at[{slot[consts[0]]}]]"]
        for k, i in enumerate(consts):
            asm.append(f"        m{i} = raw[at[{slot[i]}]] != 255")
            asm.append(f"        n{i} += m{i}")
            pieces.append(f"(w{i} if m{i} else NULL)")
            nxt = f"at[{slot[consts[k + 1]]}]" if k + 1 < len(consts) else "stop"
            pieces.append(f"raw[at[{slot[i] + 1}] : {nxt}]")
        asm.append(f"        body = b''.join(({', '.join(pieces)}))")
        asm.append("        add(b'D' + P32(len(body) + 4) + body)")
    asm.append(f"    return ({', '.join(f'n{i}' for i in consts)}{',' if consts else ''})")
    env: dict[str, Any] = {
        "U32U16": struct.Struct("!IH").unpack_from, "I32": _I32.unpack_from,
        "P32": _U32.pack, "NULL": _NULL,
    }  # fmt: skip
    exec(compile("\n".join(lo) + "\n\n" + "\n".join(asm) + "\n", "<rowmask>", "exec"), env)
    return env["locate"], env["assemble"]


def _compile(kinds: list[int]) -> tuple[Any, Any]:
    return _compile_cached(tuple(kinds))


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


def _text_split(line: bytes, delimiter: bytes) -> list[bytes]:
    """Text COPY fields: the server writes a delimiter inside a value as `\\` + it."""
    if b"\\" not in line:
        return line.split(delimiter)
    fields: list[bytes] = []
    start = i = 0
    d, n = delimiter[0], len(line)
    while i < n:
        c = line[i]
        if c == 0x5C:
            i += 2  # an escape and the byte it escapes
        elif c == d:
            fields.append(line[start:i])
            start = i = i + 1
        else:
            i += 1
    fields.append(line[start:])
    return fields


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
