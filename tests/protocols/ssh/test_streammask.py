"""StreamMasker: values split across reads are masked all the same; nothing else changes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.masking import ValueMasker
from hoopy.protocols.ssh.streammask import StreamMasker

MASKER = ValueMasker(["email", "credit_card"])
TEXT = (
    "id,name,mail\n1,Ada,ada@example.com\n2,Alan,card 4111 1111 1111 1111 ok\n"
    + "filler line\n" * 50
    + "3,Grace,grace.hopper@navy.example.org\n"
)


def _run(chunks: list[bytes], lookbehind: int = 64) -> bytes:
    sm = StreamMasker(MASKER, lookbehind=lookbehind, max_hold=256)
    out = b"".join(sm.feed(c) for c in chunks)
    return out + sm.flush(final=True)


def test_whole_and_byte_by_byte_agree() -> None:
    data = TEXT.encode()
    whole = _run([data])
    assert whole == MASKER.mask_text(TEXT)[0].encode()
    assert _run([data[i : i + 1] for i in range(len(data))]) == whole
    for v in (b"ada@example.com", b"4111 1111 1111 1111", b"grace.hopper"):
        assert v not in whole


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=len(TEXT)), max_size=12))
def test_any_split_masks_the_same(cuts: list[int]) -> None:
    data = TEXT.encode()
    points = sorted(set(cuts))
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert _run(chunks) == _run([data])


def test_binary_and_split_utf8_survive_unchanged() -> None:
    data = bytes(range(256)) * 40 + "héllo wörld ✓\n".encode() * 30
    chunks = [data[i : i + 7] for i in range(0, len(data), 7)]
    assert _run(chunks) == data


def test_idle_flush_sends_whole_lines_and_holds_a_partial_value() -> None:
    sm = StreamMasker(MASKER, lookbehind=4096)
    assert sm.feed(b"line one\nmail: ada@exa") == b""
    assert sm.flush() == b"line one\n"  # the partial line waits for the rest
    assert sm.feed(b"mple.com\n") == b""
    assert sm.flush() == b"mail: ****\n"


def test_holding_is_bounded() -> None:
    sm = StreamMasker(MASKER, lookbehind=64, max_hold=256)
    out = b""
    for _ in range(100):
        out += sm.feed(b"x" * 100)
        assert sm.held <= 256 + 100
    out += sm.flush(final=True)
    assert out == b"x" * 10000
