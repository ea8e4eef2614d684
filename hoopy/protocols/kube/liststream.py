"""A list answer rewritten item by item as it arrives (sans-I/O: text in, text out).

Why: an answer hoopy must inspect (Secrets masked, detectors applied, governed
namespaces removed) used to be read whole before the first byte went to the agent, so
a large `kubectl get secrets -A` held the whole list in hoopy's memory.  kube-apiserver
writes a list as one JSON object whose `kind`, `apiVersion` and `metadata` come before
its `items` (a Table's `rows`), so each item can be decoded, rewritten by the
Inspector and sent on its own; only one item is ever held.

The output is exactly what reading the whole answer would give
(`json.dumps(inspector.value(json.loads(raw)), separators=(",", ":"))`): members are
decoded and written again one by one, in order.  Anything else (an answer that is not
a list, `items` before `kind`) falls back to reading the whole answer, as before, within
the same size cap.  Malformed JSON raises ListError; the caller must then cut the
answer off (bytes already sent were whole, rewritten items).
"""

from __future__ import annotations

import codecs
import json
from typing import Any

from hoopy.protocols.kube.bodies import Inspector

_DECODER = json.JSONDecoder()
_WS = " \t\n\r"


def _cut_number(text: str, end: int) -> bool:
    """Is the number that ends at `end` perhaps cut: only number characters follow it
    up to the text's end?  (raw_decode reads "1." or "2e" as 1 and 2.)"""
    while end < len(text) and text[end] in _NUMBER:
        end += 1
    return end == len(text)


_NUMBER = frozenset("0123456789.eE+-")


class ListError(Exception):
    """The answer is not JSON hoopy can read, or is over the size cap."""


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _list_kind(kind: Any) -> str | None:
    """The item kind of a list kind (`SecretList` -> `Secret`, `List` -> ""); None when
    `kind` is not a list's.  `Table` is a list of rows."""
    if kind == "Table":
        return "Table"
    if isinstance(kind, str) and kind.endswith("List"):
        return kind[:-4] if kind != "List" else ""
    return None


class ListStream:
    """Feed the answer's bytes; take the text to send as it becomes ready."""

    def __init__(self, inspector: Inspector, limit: int) -> None:
        self.inspector = inspector
        self.limit = limit  # bytes held at once (one item, or the whole answer)
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")
        self._text = ""  # decoded, not yet consumed
        self._pos = 0
        self._state = "start"  # start | key | colon | value | after | items | item_after | end
        self._key = ""
        self._of: str | None = None  # the list's item kind, once `kind` was read
        self._members: list[tuple[str, Any]] = []  # read before anything was sent
        self._streaming = False  # committed: the members above were sent
        self._whole = False  # fell back to reading the whole answer
        self._raw = bytearray()  # the whole answer, while it may still be needed whole
        self._first = True  # no member written yet (comma bookkeeping)
        self._first_item = True
        self._out: list[str] = []
        self._retry_at = 0  # undecodable value: try again once the text is this long

    # ---- input -----------------------------------------------------------------------
    def feed(self, data: bytes) -> str:
        """Text to send now ('' while nothing is ready)."""
        if not self._streaming:
            self._raw += data
            if len(self._raw) > self.limit:
                raise ListError("the cluster's answer is too large for hoopy to inspect")
        if self._whole:
            return ""
        try:
            self._text += self._utf8.decode(data)
        except UnicodeDecodeError:
            raise ListError("the cluster answered text that is not UTF-8") from None
        self._run(final=False)
        return self._take()

    def end(self) -> str:
        """The rest of the answer, once the cluster finished it."""
        if self._whole:
            return self._rewrite_whole()
        try:
            self._text += self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            raise ListError("the cluster answered text that is not UTF-8") from None
        self._run(final=True)
        if self._whole:
            return self._rewrite_whole()
        if self._state != "end":
            raise ListError("the cluster's list answer ended early")
        return self._take()

    # ---- the scanner -------------------------------------------------------------------
    def _take(self) -> str:
        out, self._out = "".join(self._out), []
        if self._pos > 65536:  # drop what was consumed
            done = self._pos
            self._text, self._pos = self._text[done:], 0
            self._retry_at = max(0, self._retry_at - done)
        return out

    def _skip(self) -> bool:
        """Skip blanks; False when the text ran out."""
        text, pos = self._text, self._pos
        n = len(text)
        while pos < n and text[pos] in _WS:
            pos += 1
        self._pos = pos
        return pos < n

    def _value(self, final: bool) -> tuple[bool, Any]:
        """Decode one JSON value at the position: (done, value)."""
        if not final and len(self._text) < self._retry_at:
            return False, None
        try:
            value, end = _DECODER.raw_decode(self._text, self._pos)
        except (ValueError, RecursionError):
            if final:
                raise ListError("the cluster answered JSON hoopy cannot read") from None
            if len(self._text) - self._pos > self.limit:
                raise ListError("an item of the cluster's answer is too large") from None
            # incomplete (or bad): try again once twice as much is here, so a large item
            # costs linear time, not one decode per network read
            self._retry_at = self._pos + 2 * max(len(self._text) - self._pos, 4096)
            return False, None
        if not final and isinstance(value, (int, float)) and _cut_number(self._text, end):
            return False, None  # a number may go on in the next read ("1." + "5")
        self._retry_at = 0
        self._pos = end
        return True, value

    def _run(self, final: bool) -> None:
        while not self._whole:
            if not self._skip():
                return
            ch = self._text[self._pos]
            state = self._state
            if state == "start":
                if ch != "{":
                    self._fall_back()
                    return
                self._pos += 1
                self._state = "key"
            elif state == "key":
                if ch == "}" and self._first and not self._members:
                    self._pos += 1
                    self._close_object()
                    continue
                done, key = self._value(final)
                if not done:
                    return
                if not isinstance(key, str):
                    raise ListError("the cluster answered JSON hoopy cannot read")
                self._key, self._state = key, "colon"
            elif state == "colon":
                if ch != ":":
                    raise ListError("the cluster answered JSON hoopy cannot read")
                self._pos += 1
                self._state = "value"
            elif state == "value":
                key = self._key
                if key in ("items", "rows") and ch == "[":
                    if not self._commit(key):
                        return
                    self._pos += 1
                    self._first_item = True
                    self._state = "items"
                    continue
                done, value = self._value(final)
                if not done:
                    return
                self._member(key, value)
                self._state = "after"
            elif state == "after":
                self._pos += 1
                if ch == ",":
                    self._state = "key"
                elif ch == "}":
                    self._close_object()
                else:
                    raise ListError("the cluster answered JSON hoopy cannot read")
            elif state == "items":
                if ch == "]" and self._first_item:
                    self._pos += 1
                    self._out.append("]")
                    self._state = "after"
                    continue
                done, item = self._value(final)
                if not done:
                    return
                self._item(item)
                self._state = "item_after"
            elif state == "item_after":
                self._pos += 1
                if ch == ",":
                    self._state = "items_next"
                elif ch == "]":
                    self._out.append("]")
                    self._state = "after"
                else:
                    raise ListError("the cluster answered JSON hoopy cannot read")
            elif state == "items_next":
                done, item = self._value(final)
                if not done:
                    return
                self._item(item)
                self._state = "item_after"
            else:  # end: only blanks may follow
                raise ListError("the cluster answered JSON hoopy cannot read")

    # ---- what goes out -----------------------------------------------------------------
    def _member(self, key: str, value: Any) -> None:
        if key == "kind" and not self._streaming:
            self._of = _list_kind(value)
            if self._of is None:
                self._fall_back()  # not a list: read whole, as any other answer
                return
        if self._streaming:
            if key == "kind":  # the items sent were judged by the first kind; a reader
                # (Go's and Python's JSON alike) takes the last one
                raise ListError("the cluster's list answer names its kind twice")
            if key in ("items", "rows"):  # (not an array: as the whole reading does)
                value = self._rewrite_member(key, value)
            self._write(key, value)
        else:
            self._members.append((key, value))

    def _commit(self, key: str) -> bool:
        """`items`/`rows` begins: send what came before and stream the rest; False (after
        falling back) when the list's kind is not known yet."""
        if self._of is None or (key == "rows") != (self._of == "Table"):
            self._fall_back()
            return False
        if not self._streaming:
            self._streaming = True
            self._raw = bytearray()
            self._out.append("{")
            members, self._members = self._members, []
            for k, v in members:
                self._write(k, v)
        self._out.append(("" if self._first else ",") + _dump(key) + ":[")
        self._first = False
        return True

    def _write(self, key: str, value: Any) -> None:
        self._out.append(("" if self._first else ",") + _dump(key) + ":" + _dump(value))
        self._first = False

    def _item(self, item: Any) -> None:
        self.inspector.counts["streamed"] += 1  # (recorded: the answer went item by item)
        if self._of == "Table":
            out = self.inspector.table_row(item)
        else:
            out = self.inspector.list_item(item, self._of or "")
        if out is _HIDDEN:
            return
        self._out.append(("" if self._first_item else ",") + _dump(out))
        self._first_item = False

    def _rewrite_member(self, key: str, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        if self._of == "Table":
            rows = (self.inspector.table_row(r) for r in value)
            return [r for r in rows if r is not _HIDDEN]
        items = (self.inspector.list_item(i, self._of or "") for i in value)
        return [i for i in items if i is not _HIDDEN]

    def _close_object(self) -> None:
        self._state = "end"
        if not self._streaming:  # a list without items: small, rewrite it whole
            self._fall_back()
            return
        self._out.append("}")

    def _fall_back(self) -> None:
        if self._streaming:
            raise ListError("the cluster's list answer changed shape")
        self._whole = True

    def _rewrite_whole(self) -> str:
        try:
            value = json.loads(self._raw)
        except (ValueError, RecursionError):
            raise ListError("the cluster answered JSON hoopy cannot read") from None
        return _dump(self.inspector.value(value))


_HIDDEN = Inspector.HIDDEN
