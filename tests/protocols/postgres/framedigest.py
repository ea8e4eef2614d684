"""A transcript of everything the codec makes of the byte fixtures and of hostile
variations of them, to compare the compiled and the interpreted build byte for byte.

`python -m tests.protocols.postgres.framedigest OUT` writes the transcript to OUT and
prints `{"compiled": {module: bool}}` as JSON: run once with HOOPY_PURE=1 and once
without, the two files must be identical (test_framing.py).  The transcript holds the
repr of every event (each keeps its exact wire bytes), every relay_run result, and
the values decoded from every DataRow run, and each ProtocolViolation's message and
SQLSTATE, for several ways the bytes arrive.
"""

from __future__ import annotations

import json
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from hoopy import compiled
from hoopy.protocols.postgres import cmdlane, framing
from hoopy.protocols.postgres import codec as pg

FIXTURES = Path(__file__).parent / "fixtures"
CAPTURES = ("psql_simple", "psql_copy", "asyncpg_extended")
CHUNKS = (None, 1, 3, 7, 64)
MUTANTS = 150  # hostile variations per capture and direction


def chunks(data: bytes, size: int | None) -> Iterator[bytes]:
    if size is None:
        yield data
        return
    for i in range(0, len(data), size):
        yield data[i : i + size]


def _guard(out: list[str], step: Callable[[], None]) -> None:
    try:
        step()
    except pg.ProtocolViolation as e:
        out.append(f"violation {e.sqlstate} {e.message}")


def frontend(data: bytes, size: int | None, opaque: bool, out: list[str]) -> None:
    conn = pg.ServerConnection(max_message_size=1 << 16)
    seen = 0

    def step() -> None:
        nonlocal seen
        for piece in chunks(data, size):
            conn.receive_data(piece)
            while True:
                # the cached-statement lane's framing (cmdlane.py), on every other pass
                lone = conn.lone_query() if opaque else None
                if lone is not None:
                    out.append(f"lone {lone!r} text {cmdlane.one_text(lone[1])!r}")
                    continue
                if opaque and conn.phase is pg.Phase.NORMAL:  # all at once, as the relay
                    out.extend(repr(e) for e in conn.events())
                    break
                ev = conn.next_event()
                if ev is pg.NEED_DATA:
                    break
                out.append(repr(ev))
                if isinstance(ev, pg.PasswordMessage):
                    seen += 1
                    if seen == 2 or (seen == 1 and b"SCRAM" not in data[:400]):
                        conn.start_session()
                        if opaque:
                            conn.opaque = frozenset(b"BDEHdc")

    _guard(out, step)
    out.append(f"end {conn.phase.value} {conn.buffered()}")


def backend(data: bytes, size: int | None, relay: bool, out: list[str]) -> None:
    conn = pg.ClientConnection(max_message_size=1 << 16)
    if data[:1] in (b"S", b"N"):
        conn.expect_ssl_answer()

    def step() -> None:
        for piece in chunks(data, size):
            conn.receive_data(piece)
            while True:
                run = conn.relay_run() if relay else None
                if run is not None:
                    out.append(f"run {run[0]!r} {run[1]}")
                    for t, a, b in run[1]:
                        if t == 0x44:
                            rows(run[0], a, b, out)
                    continue
                ev = conn.next_event()
                if ev is pg.NEED_DATA:
                    break
                out.append(repr(ev))
                if isinstance(ev, pg.DataRows):
                    rows(ev.raw, 0, len(ev.raw), out)

    _guard(out, step)
    out.append(f"end {conn.phase.value} {conn.buffered()}")


def rows(raw: bytes, start: int, stop: int, out: list[str]) -> None:
    """The values of a DataRow run, whole and at most 2 rows (as the recording takes)."""
    try:
        out.append(f"rows {list(pg.iter_data_rows(raw, start, stop))}")
        out.append(f"first {pg.decode_data_rows(raw, start, stop, 2)}")
    except pg.ProtocolViolation as e:
        out.append(f"rows violation {e.sqlstate} {e.message}")


def mutants(data: bytes, rng: random.Random) -> Iterator[bytes]:
    """Flipped bytes, lengths made huge, tiny or off by one, cut and spliced streams."""
    for _ in range(MUTANTS):
        b = bytearray(data)
        kind = rng.randrange(5)
        pos = rng.randrange(len(b))
        if kind == 0:
            b[pos] = rng.randrange(256)
        elif kind == 1 and pos + 4 <= len(b):
            b[pos : pos + 4] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\0\0\0\x03"])
        elif kind == 2:
            b[pos] = (b[pos] + rng.choice((1, 255))) % 256
        elif kind == 3:
            del b[pos:]
        else:
            other = rng.randrange(len(b))
            b[pos:pos] = b[other : other + rng.randrange(1, 40)]
        yield bytes(b)


def transcript() -> list[str]:
    out: list[str] = []
    rng = random.Random(13)
    for name in CAPTURES:
        front = (FIXTURES / f"{name}.frontend.bin").read_bytes()
        back = (FIXTURES / f"{name}.backend.bin").read_bytes()
        for size in CHUNKS:
            for flag in (False, True):
                out.append(f"== {name} frontend size={size} opaque={flag}")
                frontend(front, size, flag, out)
                out.append(f"== {name} backend size={size} relay={flag}")
                backend(back, size, flag, out)
        for i, data in enumerate(mutants(front, rng)):
            out.append(f"== {name} frontend mutant {i}")
            frontend(data, rng.choice(CHUNKS), bool(i % 2), out)
        for i, data in enumerate(mutants(back, rng)):
            out.append(f"== {name} backend mutant {i}")
            backend(data, rng.choice(CHUNKS), bool(i % 2), out)
    return out


def main() -> None:
    Path(sys.argv[1]).write_text("\n".join(transcript()) + "\n")
    said = {"compiled": compiled.status(), "build": compiled.describe()}
    if not compiled.is_compiled(framing):
        said["shadow"] = framing.cython.__name__  # Cython's own, or hoopy's stand-in
    print(json.dumps(said))


if __name__ == "__main__":
    main()
