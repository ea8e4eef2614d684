"""Masking of a byte stream that arrives in arbitrary reads — sans-I/O, pure.

Theory of operation: a value may be split across reads ("4111 1111" | " 1111 1111").
So the last LOOKBEHIND characters are held back and scanned again together with the
next read; what is before them goes out masked, except that a detected value that
straddles the cut is held back whole.  A value longer than LOOKBEHIND can still be
split (a PEM private key block without its END line is masked to the cut, and its
tail only where another detector sees it): documented, and the holding is bounded by
MAX_HOLD so a stream can never make hoopy buffer without limit.

Output that pauses (a prompt, `echo x; sleep 60`) must not wait for the next read:
`flush(idle=True)` sends everything up to the last line break (values rarely span
lines), `flush(final=True)` everything.  Bytes that are not UTF-8 survive unchanged
(surrogateescape), so binary output is relayed faithfully when nothing matches.
"""

from __future__ import annotations

import codecs
from collections import Counter

from hoopy.masking import ValueMasker

LOOKBEHIND = 8192  # characters rescanned with the next read
MAX_HOLD = 65536  # characters a straddling value may hold back


class StreamMasker:
    def __init__(
        self, masker: ValueMasker, lookbehind: int = LOOKBEHIND, max_hold: int = MAX_HOLD
    ) -> None:
        self.masker = masker
        self.lookbehind = lookbehind
        self.max_hold = max(max_hold, lookbehind)
        self.counts: Counter[str] = Counter()
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._held = ""

    @property
    def held(self) -> int:
        """Characters waiting for more input."""
        return len(self._held)

    def feed(self, data: bytes) -> bytes:
        """Masked bytes safe to send now (possibly empty)."""
        text = self._held + self._decoder.decode(data)
        cut = len(text) - self.lookbehind
        if cut <= 0:
            self._held = text
            return b""
        for start, end, _ in self.masker.spans(text):
            if start < cut < end or (start < cut and end == len(text)):
                cut = start  # the value may go on: keep it whole for the next scan
                break
        if cut <= 0:
            if len(text) <= self.max_hold:
                self._held = text
                return b""
            cut = len(text) - self.lookbehind  # bounded: mask what is there, move on
        return self._emit(text, cut)

    def flush(self, final: bool = False) -> bytes:
        """Send what is held: up to the last line break, or all of it when `final`."""
        if final:
            text = self._held + self._decoder.decode(b"", True)
            return self._emit(text, len(text))
        text = self._held
        cut = text.rfind("\n") + 1
        return self._emit(text, cut) if cut else b""

    def _emit(self, text: str, cut: int) -> bytes:
        self._held = text[cut:]
        masked, counts = self.masker.mask_text(text[:cut])
        if counts:
            self.counts.update(counts)
        return masked.encode("utf-8", "surrogateescape")
