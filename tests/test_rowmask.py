"""Byte-level tests of result rewriting (rowmask) and result attribution (results)."""

from __future__ import annotations

import struct
from collections import Counter

import pytest

from hoopy.masking import ValueMasker
from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.messages import FieldDescription
from hoopy.protocols.postgres.results import NOTHING, ResultTracker, result_formats
from hoopy.protocols.postgres.rowmask import (
    INT8,
    JSON,
    JSONB,
    NUMBER,
    OPAQUE,
    STRING,
    ColumnType,
    CopyFormat,
    RowMasker,
    detector_action,
    whole_action,
)


def data_row(*values: bytes | None) -> bytes:
    body = struct.pack("!H", len(values))
    for v in values:
        body += b"\xff\xff\xff\xff" if v is None else struct.pack("!i", len(v)) + v
    return b"D" + struct.pack("!I", len(body) + 4) + body


def rows_of(raw: bytes) -> list[list[bytes | None]]:
    return list(pg.iter_data_rows(raw))


def counts() -> Counter[tuple[str, str]]:
    return Counter()


def run(action: object, values: list[bytes | None]) -> list[bytes | None]:
    """A column action's result as a full list (actions may return only the changes)."""
    out = action(values)  # type: ignore[operator]
    if isinstance(out, dict):
        return [out.get(i, v) for i, v in enumerate(values)]
    return list(out)


def test_whole_column_redact_keeps_lengths_valid_and_other_columns_identical() -> None:
    c = counts()
    act = whole_action(ColumnType(25, STRING), False, "redact", b"", "null", "r", c)
    m = RowMasker([None, act, None], c)
    raw = data_row(b"1", b"alice@example.com", b"x") + data_row(b"2", None, b"")
    out = m.rewrite(raw)
    assert rows_of(out) == [[b"1", b"****", b"x"], [b"2", None, b""]]
    assert c[("r", "column")] == 1  # NULL stays NULL and is not counted


def test_inactive_masker_returns_the_same_object() -> None:
    raw = data_row(b"1")
    assert RowMasker([None], counts()).rewrite(raw) is raw


@pytest.mark.parametrize(
    ("family", "oid", "binary", "expected"),
    [
        (JSON, 114, False, b'"****"'),
        (JSONB, 3802, True, b'\x01"****"'),
        (JSONB, 3802, False, b'"****"'),
        (NUMBER, 23, True, None),
        (OPAQUE, 2950, True, None),
    ],
)
def test_whole_masks_are_valid_per_type(
    family: str, oid: int, binary: bool, expected: bytes | None
) -> None:
    act = whole_action(ColumnType(oid, family), binary, "redact", b"", "null", "r", counts())
    assert act([b"anything", None]) == [expected, None]


def test_redact_numeric_zero_in_both_formats() -> None:
    text = whole_action(ColumnType(23, NUMBER), False, "redact", b"", "zero", "r", counts())
    binary = whole_action(ColumnType(20, INT8), True, "redact", b"", "zero", "r", counts())
    assert text([b"42"]) == [b"0"] and binary([b"\0" * 7 + b"\x2a"]) == [b"\0" * 8]


def test_hash_style_is_stable_and_keyed() -> None:
    a = whole_action(ColumnType(25, STRING), False, "hash", b"k1", "null", "r", counts())
    b = whole_action(ColumnType(25, STRING), False, "hash", b"k2", "null", "r", counts())
    assert a([b"x@y.com"]) == a([b"x@y.com"]) != b([b"x@y.com"])
    assert a([b"x@y.com"])[0].startswith(b"h:")  # type: ignore[union-attr]


def test_detectors_edit_text_and_null_what_they_cannot_edit() -> None:
    c = counts()
    masker = ValueMasker(["email", "credit_card"])
    rules = {"email": "pii", "credit_card": "pii"}
    text = detector_action(ColumnType(25, STRING), False, masker, rules, c)
    assert text is not None
    column = [b"mail bob@example.org now", None, b"order 1234567812345678", b"x"]
    assert run(text, column) == [b"mail **** now", None, b"order 1234567812345678", b"x"]
    js = detector_action(ColumnType(3802, JSONB), True, masker, rules, c)
    assert js is not None
    out = run(js, [b'\x01{"e": "bob@example.org", "n": 1}', b'\x01{"e": "b\\u006fb@example.org"}'])
    assert all(o is not None and o.startswith(b"\x01") and b"bob" not in o for o in out)
    assert b"example.org" not in out[1]  # type: ignore[operator]
    big = detector_action(ColumnType(20, INT8), True, masker, rules, c)
    assert big is not None
    assert run(big, [struct.pack("!q", 4111111111111111), struct.pack("!q", 42)]) == [
        None,
        struct.pack("!q", 42),
    ]
    assert c[("pii", "email")] == 3 and c[("pii", "credit_card")] == 1


def test_batch_scan_finds_exactly_what_value_by_value_scanning_finds() -> None:
    masker = ValueMasker(["email", "credit_card", "ssn", "phone", "ipv4", "private_key"])
    act = detector_action(ColumnType(25, STRING), False, masker, {}, counts())
    assert act is not None
    values: list[bytes | None] = [
        b"a@b.co", b"x", None, b"4111 1111 1111 1111", b"call +1 415 555 0134",
        b"-----BEGIN PRIVATE KEY-----\nabc", b"tail after key", b"10.1.2.3", b"caf\xc3\xa9 a@b.co",
        b"078-05-1120", b"", b"plain",
    ]  # fmt: skip
    expected = [None if v is None else masker.mask_text(v.decode())[0].encode() for v in values]
    assert run(act, values) == expected


def test_a_row_that_does_not_fit_the_plan_is_sent_as_nulls() -> None:
    act = whole_action(ColumnType(25, STRING), False, "redact", b"", "null", "r", counts())
    out = RowMasker([act, None], counts()).rewrite(data_row(b"a", b"b", b"c"))
    assert rows_of(out) == [[None, None, None]]


def test_copy_text_rows_are_unescaped_masked_and_escaped() -> None:
    act = whole_action(ColumnType(25, STRING), False, "redact", b"", "null", "r", counts())
    masker = ValueMasker(["email"])
    det = detector_action(ColumnType(25, STRING), False, masker, {}, counts())
    m = RowMasker([None, act, det], counts())
    fmt = CopyFormat()
    row = b"1\tsecret\\tx\tC:\\\\dir a@b.com\n"
    assert m.rewrite_copy(row, fmt) == b"1\t****\tC:\\\\dir ****\n"
    assert m.rewrite_copy(b"2\t\\N\t\\N\n", fmt) == b"2\t\\N\t\\N\n"


def test_copy_csv_rows_with_quotes_and_header() -> None:
    act = whole_action(ColumnType(25, STRING), False, "redact", b"", "null", "r", counts())
    m = RowMasker([None, act], counts())
    fmt = CopyFormat(csv=True, delimiter=b",", null=b"", header=True)
    assert m.rewrite_copy(b"id,email\n", fmt) == b"id,email\n"
    assert m.rewrite_copy(b'1,"a,""b""@x.com"\n', fmt) == b"1,****\n"
    assert m.rewrite_copy(b"2,\n", fmt) == b"2,\n"  # NULL stays NULL


# ---- the tracker ------------------------------------------------------------------------

F = (FieldDescription("email", 1, 3, 25),)


def test_simple_query_statements_map_to_their_rows() -> None:
    t = ResultTracker()
    t.query(["first", "second"])
    r1 = t.row_description(F)
    assert r1 is not None and r1.statement.mask == "first"
    assert t.rows() is r1
    t.complete()
    r2 = t.row_description(F)
    assert r2 is not None and r2.statement.mask == "second"
    t.complete()
    t.ready()
    assert not t.queue


def test_extended_rows_belong_to_the_portal_described_earlier() -> None:
    t = ResultTracker()
    t.parse("s1", "mask-s1")
    t.describe("S", "s1")
    t.sync()
    t.simple_ack()
    assert t.row_description(tuple(f._replace(format_code=0) for f in F)) is None
    t.ready()
    # a later round trip: Bind (binary results) / Execute without Describe
    t.bind("", "s1", (1,))
    t.execute("")
    t.sync()
    t.parse("s1", "replaced-later")  # pipelined redefinition must not change the Execute
    t.simple_ack()
    r = t.rows()
    assert r is not None and r.statement.mask == "mask-s1" and r.formats == (1,)
    t.complete()
    t.ready()


def test_error_in_extended_mode_skips_to_sync() -> None:
    t = ResultTracker()
    t.parse("", "a")
    t.bind("", "", ())
    t.execute("")
    t.sync()
    t.error()  # Parse failed: Bind and Execute are skipped by the server
    assert [e.kind for e in t.queue] == ["sync"]
    t.ready()
    assert not t.queue


def test_rows_of_an_undescribed_statement_have_no_fields() -> None:
    t = ResultTracker()
    t.parse("s", "m")
    t.bind("p", "s", ())
    t.execute("p")
    t.simple_ack()
    t.simple_ack()
    r = t.rows()
    assert r is not None and r.fields is None and r.statement.mask == "m"


def test_result_formats_expand() -> None:
    assert result_formats((), 3) == (0, 0, 0)
    assert result_formats((1,), 2) == (1, 1)
    assert result_formats((0, 1), 2) == (0, 1)
    assert NOTHING.mask is None


def test_copy_text_rows_with_escaped_delimiters_keep_their_columns() -> None:
    act = whole_action(ColumnType(25, STRING), False, "redact", b"", "null", "r", counts())
    m = RowMasker([None, act, None], counts())
    fmt = CopyFormat(delimiter=b",")
    row = b"a\\,b,secret\\,x,c\\\\\n"
    assert m.rewrite_copy(row, fmt) == b"a\\,b,****,c\\\\\n"
