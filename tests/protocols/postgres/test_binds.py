"""Bind messages: their values parsed out of a Passthrough run, and what a recording
keeps of them."""

from __future__ import annotations

import base64

import pytest

from hoopy.protocols.postgres import codec as pg
from hoopy.protocols.postgres.resultlog import bind_fields


def _run(*messages: bytes) -> pg.Passthrough:
    """The Passthrough a session without masking gets for these messages."""
    conn = pg.ServerConnection()
    conn.receive_data(pg.startup_message({"user": "a", "database": "d"}))
    conn.events()
    conn.start_session()
    conn.opaque = frozenset(b"BDEHdc")
    conn.receive_data(b"".join(messages))
    (ev,) = conn.events()
    assert isinstance(ev, pg.Passthrough)
    return ev


def test_binds_of_a_run_are_found_between_other_messages() -> None:
    run = _run(
        pg.describe("S", "s1"),
        pg.bind("p1", "s1", [b"42", None, b"\x00\x01"], [0, 0, 1], []),
        pg.execute("p1", 0),
        pg.bind("", "", [], [], [1]),
        pg.execute("", 0),
    )
    first, second = pg.decode_binds(run.raw, run.types)
    assert (first.portal, first.statement) == ("p1", "s1")
    assert first.param_formats == (0, 0, 1) and first.params == (b"42", None, b"\x00\x01")
    assert (second.portal, second.statement, second.params) == ("", "", ())
    assert second.result_formats == (1,)


def test_a_run_without_binds_gives_none() -> None:
    run = _run(pg.describe("P", ""), pg.execute("", 0), pg.flush())
    assert pg.decode_binds(run.raw, run.types) == []


@pytest.mark.parametrize(
    "body",
    [
        b"p\0s\0\0\0\0\x01\xff\xff\xff\xfe\0\0",  # a value length below -1
        b"p\0s\0\0\0\0\x01\0\0\0\x09ab\0\0",  # a value longer than the message
        b"p\0s\0\0\0\0\0\0\0junk",  # bytes after the result formats
        b"p\0s",  # cut inside the statement name
    ],
)
def test_malformed_bind_in_a_run_is_a_protocol_violation(body: bytes) -> None:
    raw = b"B" + (len(body) + 4).to_bytes(4, "big") + body
    run = _run(raw)
    with pytest.raises(pg.ProtocolViolation, match="malformed Bind"):
        pg.decode_binds(run.raw, run.types)


def test_parsed_bind_carries_its_values() -> None:
    conn = pg.ServerConnection()
    conn.receive_data(pg.startup_message({"user": "a", "database": "d"}))
    conn.events()
    conn.start_session()
    raw = pg.bind("", "q", [b"x", None], [1], [])
    for i in range(len(raw)):  # one byte at a time
        conn.receive_data(raw[i : i + 1])
        events = conn.events()
    assert events == [pg.Bind("", "q", raw, (), (1,), (b"x", None))]


def _bind(values: list[bytes | None], formats: list[int]) -> pg.Bind:
    return pg.Bind("p", "s", b"", (), tuple(formats), tuple(values))


def test_recorded_values_text_binary_null_and_invalid_utf8() -> None:
    got = bind_fields(_bind([b"42", None, b"\xff\xfe", "é".encode()], [0]), 1000, "select 1")
    assert got == {
        "statement": "s",
        "text": "select 1",
        "portal": "p",
        "params": ["42", None, {"b64": base64.b64encode(b"\xff\xfe").decode()}, "é"],
    }
    per_param = bind_fields(_bind([b"7", b"\x00\x00\x00\x07"], [0, 1]), 1000)
    assert per_param["params"] == ["7", {"b64": "AAAABw=="}] and "text" not in per_param
    all_binary = bind_fields(_bind([b"ab", None], [1]), 1000)
    assert all_binary["params"] == [{"b64": "YWI="}, None]


def test_recorded_values_are_capped() -> None:
    got = bind_fields(_bind([b"a" * 10, b"b" * 10, b"c" * 10], []), 15)
    assert got["params"] == ["a" * 10, "b" * 5]
    assert got["truncated"] is True and got["param_count"] == 3
    assert "truncated" not in bind_fields(_bind([b"a" * 15], []), 15)
