"""SPDY/3.1 codec (hoopy/protocols/kube/spdy.py) at byte level: real kubectl 1.32
bytes, split anywhere; hostile frames refused as connection errors."""

from __future__ import annotations

import hashlib
import struct
import zlib

import pytest

from hoopy.protocols.kube import spdy

# What kubectl 1.32 sent for one forwarded connection to port 5999 (captured from the
# emulator, one WebSocket message per item: Go's framer writes field by field).
KUBECTL_MESSAGES = [
    "8003", "0001", "0000003e", "00000001", "00000000", "00", "00",
    "78f9e3c6a7c202253a703a2b294a4dcc851625aca9a0808614cb45e01c606a6969c9c0c0c0590489c6"
    "4c50f2663400000000ffff",
    "00000001", "01000000", "",
    "8003", "0001", "0000001c", "00000003", "00000000", "00", "00",
    "826ac61445350e543225a29b06000000ffff",
    "00000003", "00000005", "70696e6721", "00000003", "01000000", "",
]  # fmt: skip
KUBECTL_FRAMES = [
    spdy.SynStream(1, (("streamtype", "error"), ("port", "5999"), ("requestid", "0"))),
    spdy.Data(1, b"", True),
    spdy.SynStream(3, (("requestid", "0"), ("streamtype", "data"), ("port", "5999"))),
    spdy.Data(3, b"ping!"),
    spdy.Data(3, b"", True),
]


def test_dictionary_is_spdy3s() -> None:
    # sha256 of moby/spdystream spdy/dictionary.go's headerDictionary (1423 bytes)
    assert len(spdy.DICTIONARY) == 1423
    assert (
        hashlib.sha256(spdy.DICTIONARY).hexdigest()
        == "51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02"
    )


def test_kubectl_bytes_as_sent_and_byte_by_byte() -> None:
    d = spdy.Decoder()
    got = [f for m in KUBECTL_MESSAGES for f in d.feed(bytes.fromhex(m))]
    assert got == KUBECTL_FRAMES
    raw = bytes.fromhex("".join(KUBECTL_MESSAGES))
    d = spdy.Decoder()
    got = [f for i in range(len(raw)) for f in d.feed(raw[i : i + 1])]
    assert got == KUBECTL_FRAMES
    # the second SYN_STREAM only decompresses in the first one's zlib context
    with pytest.raises(spdy.SpdyError):
        spdy.Decoder().feed(raw[raw.index(bytes.fromhex("80030001")[:4], 10) :])


def test_encoder_round_trip_and_layout() -> None:
    e, d = spdy.Encoder(), spdy.Decoder()
    frames: list[spdy.Frame] = [
        *KUBECTL_FRAMES,
        spdy.SynReply(1),
        spdy.SynReply(3, fin=True),
        spdy.HeadersFrame(3, (("x", "a\0b"),)),
        spdy.RstStream(3, spdy.CANCEL),
        spdy.Ping(7),
        spdy.GoAway(3, 0),
        spdy.Other(spdy.SETTINGS, 0, struct.pack(">IIi", 1, 7, 65536)),
        spdy.Data(5, b"\x80\x03" * 40000),
    ]
    raw = b"".join(e.encode(f) for f in frames)
    assert d.feed(raw) == frames
    assert e.encode(spdy.Ping(7)) == bytes.fromhex("80030006 00000004 00000007")
    assert e.encode(spdy.RstStream(3, 5)) == bytes.fromhex("80030003 00000008 00000003 00000005")
    assert e.encode(spdy.Data(3, b"ab", True)) == bytes.fromhex("00000003 01000002 6162")
    assert spdy.header((("x", "a\0b"), ("y", "c")), "x") == ["a", "b"]


def _syn(block: bytes, sid: int = 1, compress: bool = True) -> bytes:
    if compress:
        c = zlib.compressobj(9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
        block = c.compress(block) + c.flush(zlib.Z_SYNC_FLUSH)
    body = struct.pack(">IIBB", sid, 0, 0, 0) + block
    return struct.pack(">HHI", 0x8003, 1, len(body)) + body


def _pairs(*pairs: tuple[bytes, bytes], count: int | None = None) -> bytes:
    out = struct.pack(">I", len(pairs) if count is None else count)
    for n, v in pairs:
        out += struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v
    return out


@pytest.mark.parametrize(
    "raw",
    [
        bytes.fromhex("80020006 00000004 00000001"),  # SPDY/2
        bytes.fromhex("80030005 00000000"),  # type 5 (NOOP, gone in SPDY/3)
        bytes.fromhex("8003000a 00000000"),  # unknown type
        bytes.fromhex("80030003 00000004 00000001"),  # RST_STREAM too short
        bytes.fromhex("80030003 01000008 00000001 00000001"),  # RST_STREAM with flags
        bytes.fromhex("80030006 00000005 0000000100"),  # PING of 5 bytes
        bytes.fromhex("80030004 00000004 00000002"),  # SETTINGS announcing 2, holding 0
        bytes.fromhex("80030001 00000004 00000001"),  # SYN_STREAM too short
        _syn(_pairs((b"port", b"80")), sid=0),  # stream 0
        _syn(_pairs((b"Port", b"80"))),  # upper case name (spdystream refuses it)
        _syn(_pairs((b"port", b"80"), (b"port", b"81"))),  # repeated name
        _syn(_pairs((b"", b"80"))),  # empty name
        _syn(_pairs((b"port", b"80"), count=2)),  # count beyond the block
        _syn(_pairs((b"port", b"80")) + b"\0"),  # bytes after the block
        _syn(_pairs(count=100_000)),  # absurd count
        _syn(b"\x00\x00\x00\x01\x00\x00\x00\x04po"),  # truncated name
        _syn(_pairs((b"port", b"80")), compress=False),  # not zlib at all
        _syn(_pairs((b"x", b"a" * 200_000))),  # a zlib bomb: 200 KB from ~250 bytes
    ],
)
def test_hostile_frames_are_connection_errors(raw: bytes) -> None:
    with pytest.raises(spdy.SpdyError):
        spdy.Decoder().feed(raw)


def test_a_partial_frame_waits_and_a_data_frame_may_be_empty() -> None:
    d = spdy.Decoder()
    assert d.feed(bytes.fromhex("00000003 00000004 6162")) == []
    assert d.feed(b"cd") == [spdy.Data(3, b"abcd")]
    assert d.feed(bytes.fromhex("00000003 00000000")) == [spdy.Data(3, b"")]
