"""SPDY/3.1 framing, sans-I/O: bytes in, frames out; frames in, bytes out.

`kubectl port-forward` (1.31+) tunnels SPDY/3.1 through a WebSocket (subprotocol
`SPDY/3.1+portforward.k8s.io`, KEP-4006): the SPDY byte stream is cut into binary
WebSocket messages at arbitrary points.  Each forwarded TCP connection is two SPDY
streams (headers `streamtype: error|data`, `port`, `requestid`), opened by
SYN_STREAM frames whose header blocks are zlib-compressed with one compression
context per direction for the whole connection, primed with the SPDY/3 dictionary.
Because the context is shared, a relay that drops or adds a header-bearing frame
must re-compress what it forwards: hence an Encoder per direction.

Frame layout (big-endian): control frames `1 | version(15)=3 | type(16) |
flags(8) | length(24) | payload`, data frames `0 | stream-id(31) | flags(8) |
length(24) | data`.  As moby/spdystream (the client kubectl uses) does, bad input is
a connection error: SpdyError.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9
FLAG_FIN = 0x01
# RST_STREAM status codes
PROTOCOL_ERROR, INVALID_STREAM, REFUSED_STREAM, CANCEL = 1, 2, 3, 5

MAX_FRAME = 0xFFFFFF  # the 24-bit length field's limit
MAX_HEADER_BLOCK = 64 * 1024  # decompressed; kubectl's blocks are ~60 bytes
MAX_HEADERS = 256

_WORDS = (
    "options head post put delete trace accept accept-charset accept-encoding "
    "accept-language accept-ranges age allow authorization cache-control connection "
    "content-base content-encoding content-language content-length content-location "
    "content-md5 content-range content-type date etag expect expires from host if-match "
    "if-modified-since if-none-match if-range if-unmodified-since last-modified location "
    "max-forwards pragma proxy-authenticate proxy-authorization range referer retry-after "
    "server te trailer transfer-encoding upgrade user-agent vary via warning "
    "www-authenticate method get status 200_OK version HTTP/1.1 url public set-cookie "
    "keep-alive origin"
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
    "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
    "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
    "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
    "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
    "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
    "charset=iso-8859-1,utf-,*,enq=0."
)


def _dictionary() -> bytes:
    words = [w.replace("_", " ") for w in _WORDS.split()]  # "200_OK" is "200 OK"
    return b"".join(len(w).to_bytes(4, "big") + w.encode() for w in words) + _TAIL.encode()


DICTIONARY = _dictionary()  # SPDY/3 section 2.6.10.1; its sha256 is pinned in the tests


class SpdyError(Exception):
    pass


Headers = tuple[tuple[str, str], ...]  # (lower-case name, value); "\0" joins repeats


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers
    fin: bool = False
    flags: int = 0  # FIN and UNIDIRECTIONAL, as sent
    associated: int = 0
    priority: int = 0
    slot: int = 0


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers = ()
    fin: bool = False


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers = ()
    fin: bool = False


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Ping:
    id: int


@dataclass(frozen=True)
class GoAway:
    last_stream_id: int
    status: int = 0


@dataclass(frozen=True)
class Other:
    """SETTINGS and WINDOW_UPDATE: passed on unchanged (spdystream ignores both)."""

    kind: int
    flags: int
    payload: bytes


Frame = Data | SynStream | SynReply | HeadersFrame | RstStream | Ping | GoAway | Other


def header(headers: Headers, name: str) -> list[str]:
    """Every value of `name` (a repeated header's values are "\\0"-joined)."""
    out: list[str] = []
    for n, v in headers:
        if n == name:
            out.extend(v.split("\0"))
    return out


class Decoder:
    """Bytes of one direction in, frames out."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.inflate = zlib.decompressobj(zdict=DICTIONARY)

    def feed(self, data: bytes) -> list[Frame]:
        self.buf += data
        frames: list[Frame] = []
        while len(self.buf) >= 8:
            word, flags_len = struct.unpack_from(">II", self.buf)
            length = flags_len & 0xFFFFFF
            if len(self.buf) < 8 + length:
                break
            flags = flags_len >> 24
            payload = bytes(self.buf[8 : 8 + length])
            del self.buf[: 8 + length]
            if word & 0x80000000:
                frames.append(self._control((word >> 16) & 0x7FFF, word & 0xFFFF, flags, payload))
            else:
                frames.append(Data(word & 0x7FFFFFFF, payload, bool(flags & FLAG_FIN)))
        return frames

    def _control(self, version: int, kind: int, flags: int, p: bytes) -> Frame:
        if version != 3:
            raise SpdyError(f"SPDY version {version}, not 3")
        if kind == SYN_STREAM:
            if len(p) < 10:
                raise SpdyError("short SYN_STREAM")
            sid, assoc = struct.unpack_from(">II", p)
            sid &= 0x7FFFFFFF
            if sid == 0:
                raise SpdyError("SYN_STREAM for stream 0")
            return SynStream(
                sid,
                self._block(p[10:]),
                bool(flags & FLAG_FIN),
                flags,
                assoc & 0x7FFFFFFF,
                p[8] >> 5,
                p[9],
            )
        if kind in (SYN_REPLY, HEADERS):
            if len(p) < 4:
                raise SpdyError("short SYN_REPLY/HEADERS")
            sid = struct.unpack_from(">I", p)[0] & 0x7FFFFFFF
            if sid == 0:
                raise SpdyError("header frame for stream 0")
            cls = SynReply if kind == SYN_REPLY else HeadersFrame
            return cls(sid, self._block(p[4:]), bool(flags & FLAG_FIN))
        if kind in (RST_STREAM, GOAWAY, WINDOW_UPDATE):
            if len(p) != 8 or flags:
                raise SpdyError(f"bad control frame {kind}")
            a, b = struct.unpack(">II", p)
            if kind == RST_STREAM:
                return RstStream(a & 0x7FFFFFFF, b)
            if kind == GOAWAY:
                return GoAway(a & 0x7FFFFFFF, b)
            return Other(kind, flags, p)
        if kind == PING:
            if len(p) != 4:
                raise SpdyError("bad PING")
            return Ping(struct.unpack(">I", p)[0])
        if kind == SETTINGS:
            if len(p) < 4 or len(p) != 4 + 8 * struct.unpack_from(">I", p)[0]:
                raise SpdyError("bad SETTINGS")
            return Other(kind, flags, p)
        raise SpdyError(f"unknown control frame type {kind}")

    def _block(self, compressed: bytes) -> Headers:
        try:
            raw = self.inflate.decompress(compressed, MAX_HEADER_BLOCK + 1)
        except zlib.error:
            raise SpdyError("header block does not decompress") from None
        if len(raw) > MAX_HEADER_BLOCK or self.inflate.unconsumed_tail:
            raise SpdyError("header block too large")
        return parse_block(raw)


def parse_block(raw: bytes) -> Headers:
    """A decompressed header block: count, then (name, value) length-prefixed pairs.
    Names must be lower-case and unique (spdystream refuses the frame otherwise)."""
    if len(raw) < 4:
        raise SpdyError("short header block")
    (count,) = struct.unpack_from(">I", raw)
    if count > MAX_HEADERS:
        raise SpdyError("too many headers")
    at, out, seen = 4, [], set()
    for _ in range(count):
        pair = []
        for _ in (0, 1):
            if at + 4 > len(raw):
                raise SpdyError("truncated header block")
            (n,) = struct.unpack_from(">I", raw, at)
            if at + 4 + n > len(raw):
                raise SpdyError("truncated header block")
            pair.append(raw[at + 4 : at + 4 + n].decode("utf-8", "replace"))
            at += 4 + n
        name, value = pair
        if not name or name != name.lower() or name in seen:
            raise SpdyError(f"bad header name {name[:40]!r}")
        seen.add(name)
        out.append((name, value))
    if at != len(raw):
        raise SpdyError("bytes after the header block")
    return tuple(out)


def build_block(headers: Headers) -> bytes:
    out = [struct.pack(">I", len(headers))]
    for name, value in headers:
        for s in (name.encode(), value.encode()):
            out.append(struct.pack(">I", len(s)) + s)
    return b"".join(out)


class Encoder:
    """Frames of one direction in, bytes out (one compression context)."""

    def __init__(self) -> None:
        self.deflate = zlib.compressobj(
            9, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY, DICTIONARY
        )

    def _block(self, headers: Headers) -> bytes:
        raw = build_block(headers)
        return self.deflate.compress(raw) + self.deflate.flush(zlib.Z_SYNC_FLUSH)

    def encode(self, f: Frame) -> bytes:
        if isinstance(f, Data):
            if len(f.data) > MAX_FRAME:
                raise SpdyError("data frame too large")
            return (
                struct.pack(">II", f.stream_id, (FLAG_FIN if f.fin else 0) << 24 | len(f.data))
                + f.data
            )
        if isinstance(f, SynStream):
            flags = f.flags | (FLAG_FIN if f.fin else 0)
            body = struct.pack(">IIBB", f.stream_id, f.associated, f.priority << 5, f.slot)
            return _control(SYN_STREAM, flags, body + self._block(f.headers))
        if isinstance(f, SynReply | HeadersFrame):
            kind = SYN_REPLY if isinstance(f, SynReply) else HEADERS
            body = struct.pack(">I", f.stream_id) + self._block(f.headers)
            return _control(kind, FLAG_FIN if f.fin else 0, body)
        if isinstance(f, RstStream):
            return _control(RST_STREAM, 0, struct.pack(">II", f.stream_id, f.status))
        if isinstance(f, Ping):
            return _control(PING, 0, struct.pack(">I", f.id))
        if isinstance(f, GoAway):
            return _control(GOAWAY, 0, struct.pack(">II", f.last_stream_id, f.status))
        return _control(f.kind, f.flags, f.payload)


def _control(kind: int, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_FRAME:
        raise SpdyError("control frame too large")
    return struct.pack(">HHI", 0x8003, kind, flags << 24 | len(payload)) + payload
