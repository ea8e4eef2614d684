"""Text an approver or auditor reads must read as what runs.

Agent-written text (statements, bound values, subjects) shown to a human can carry
characters that change how the rest reads without being seen: bidi overrides and
isolates reorder it (Trojan Source, CVE-2021-42574), zero-width and other format
characters hide inside names and strings, tag characters smuggle invisible text.  Those
are shown as visible escapes (`\\u202e`) by `reveal`.  Look-alike letters (Cyrillic `\\u043e`
in `orders`) are printable and legitimate elsewhere, so they are not rewritten but
*flagged*: `notes` names every non-ASCII character with its Unicode name, so the
approver is told the statement is not the ASCII it looks like.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

# Every character that is invisible or changes how others display (beyond C0, which each
# caller handles as its format needs): DEL and C1 controls, format characters (Cf: bidi
# marks, embeddings, overrides and isolates, zero-width space/joiners, word joiner, BOM,
# soft hyphen, tags), line/paragraph separators, lone surrogates, and letters or marks
# that render as nothing (Hangul fillers, combining grapheme joiner, variation selectors).
# Generated from Unicode 14 categories Cc/Cf/Zl/Zp/Cs plus those default-ignorables.
HIDDEN = (
    "\x7f-\x9f\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890-\u0891\u08e2\u115f-\u1160"
    "\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u206f\u3164\ud800-\udfff"
    "\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U00013438"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f"
    "\U000e0100-\U000e01ef"
)
_HIDDEN = re.compile(f"[\x00-\x08\x0b-\x1f{HIDDEN}]")  # keeps \t and \n
_NON_ASCII = re.compile(r"[^\x00-\x7f]")
MAX_NAMED = 8
SCANNED = 256 * 1024  # characters of each text `notes` looks at


def escape_char(c: str) -> str:
    n = ord(c)
    return f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def reveal(text: str) -> str:
    """`text` with every hidden character (C0 but tab and newline included) shown as an
    escape."""
    return _HIDDEN.sub(lambda m: escape_char(m.group()), text)


def notes(texts: Iterable[str]) -> list[str]:
    """Warnings for an approver about `texts`: hidden characters (shown escaped) and
    non-ASCII characters that may pass for others, named.  Empty when plain ASCII."""
    hidden = 0
    seen: dict[str, None] = {}
    for text in texts:
        text = text[:SCANNED]  # bounded work; views cut long texts, `show` escapes them
        hidden += len(_HIDDEN.findall(text))
        for m in _NON_ASCII.finditer(text):
            c = m.group()
            if not _HIDDEN.match(c):
                seen.setdefault(c, None)
    out: list[str] = []
    if hidden:
        out.append(
            f"{hidden} invisible or direction-changing character(s), shown as \\uXXXX escapes"
        )
    if seen:
        chars = list(seen)
        named = ", ".join(_name(c) for c in chars[:MAX_NAMED])
        more = f" and {len(chars) - MAX_NAMED} more" if len(chars) > MAX_NAMED else ""
        out.append(f"non-ASCII characters that may look like others: {named}{more}")
    return out


def _name(c: str) -> str:
    return f"U+{ord(c):04X} {unicodedata.name(c, 'UNNAMED')}"
