"""Value masking shared by every protocol: detectors, styles and column rules — pure.

Theory of operation
-------------------
A `Detector` finds candidate spans with one or more `Scanner`s and confirms each
with `validate` (Luhn for cards, mod-97 for IBANs, octet ranges and `ipaddress`
for IPs, a JSON header for JWTs, entropy for generic API keys).  A `ValueMasker` is built once per
(detector names, style, key) and reused for every value of a session.

Speed comes from never letting Python's `re` try a pattern at every position.
Patterns start with a literal (`eyJ`, `-----BEGIN`, `+`), which `re` finds with
its fast substring search, or run on a *class view* of the text: one
`bytes.translate` maps digits to "0", letters to "A"/"a" and keeps punctuation,
so "4111 1111 1111 1111" becomes "0000 0000 0000 0000" and the card pattern
starts with the literal "0000".  Positions in a view equal positions in the
text, so a view match is validated on the real characters.  Shapes with no
literal start (NANP phones, emails, IPs) are found through a *needle* — a
literal-led necessary part such as "@" or "000-0000" — and the full pattern is
tried only at the few places just before it where a match may begin.  The word
view (letters, digits, "_", "-" → "w") turns "≥ 20 token characters" into a
search for the literal "w" * 20.

mask_text: (1) texts shorter than any match, or failing every detector's cheap
prefilter ("@" in text, …), are returned as they are; (2) candidates that
validate become spans; (3) overlapping spans are merged, so every character any
detector claimed is masked, labelled with the highest-priority detector; (4)
spans are replaced and the text between them is copied unchanged; when something
was replaced the result is scanned again (at most a few times), because removing
a value can expose a neighbour that was glued to it.

Counts per detector are returned, never the values.  Nothing here logs.

Styles: `redact` → "****"; `partial` keeps what identifies the kind but not the
person (card last 4, email domain, SSN last 4); `hash` → "h:" + 16 hex digits of
HMAC-SHA256(key, value) of the exact matched text, stable for one key so masked
values still join; the key is the caller's (a ValueMasker refuses hash without one).

Deliberate choices (tests pin them):
- credit_card: 13-19 digits, plain or grouped 4-4-4-4(-3) / 4-6-5 with one kind of
  separator, first digit 2-6 (the card networks; keeps millisecond timestamps and
  snowflake ids, which start with 1, out), not glued to letters, Luhn-valid.
- ipv4: a valid dotted quad is masked even when it is a version number (1.2.3.4 is
  indistinguishable), but not when glued to letters (v1.2.3.4) or part of a longer
  dotted run (1.2.3.4.5).  ipv6: compressed forms need a group of 3+ hex digits,
  so "::", "::1" and slices like a[1::2] are left alone.
- ssn: dashed ddd-dd-dddd only.  phone: E.164 with "+" (8-15 digits) or NANP with
  separators; bare integers are never phones.  iban: upper case, spaced or not.
- api_key: known prefixes (sk_live_, ghp_, xoxb-, AIza…) always; otherwise a run of
  ≥ 20 [A-Za-z0-9_-] (or a 40-char base64 AWS-secret shape) with upper, lower and
  digit, entropy ≥ 0.8·log2(len) bits/char and few dictionary-like runs.  Lower-case
  hex/base36 tokens are not flagged: they look exactly like hashes and ids.
- private_key: BEGIN … PRIVATE KEY through the END line, or to the end of the text
  when the END line is missing (a truncated key is still a key).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import functools
import hashlib
import hmac
import ipaddress
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

REDACTED = "****"
STYLES = ("redact", "partial", "hash")
_MAX_PASSES = 3  # re-scans after replacement; see step (4)

View = Literal["text", "class", "word"]
Span = tuple[int, int, str]  # start, end, detector name

_CLASS_TABLE = bytes.maketrans(
    b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    b"0" * 10 + b"A" * 26 + b"a" * 26,
)
_WORD_TABLE = bytes(
    ord("w")
    if chr(i).isascii() and (chr(i).isalnum() or chr(i) in "_-")
    else ord("p")
    if chr(i) in "/+"
    else ord("=")
    if chr(i) == "="
    else ord(" ")
    for i in range(256)
)


class _Views:
    """The text and its lazily built byte views (one byte per character)."""

    def __init__(self, text: str):
        self.text = text
        self._ascii: bytes | None = None
        self._class: bytes | None = None
        self._word: bytes | None = None

    def get(self, view: View) -> Any:
        if view == "text":
            return self.text
        if self._ascii is None:
            self._ascii = self.text.encode("ascii", "replace")  # non-ASCII → one "?"
        if view == "class":
            if self._class is None:
                self._class = self._ascii.translate(_CLASS_TABLE)
            return self._class
        if self._word is None:
            self._word = self._ascii.translate(_WORD_TABLE)
        return self._word


Validator = Callable[[str], bool]


@dataclass(frozen=True)
class Scanner:
    """One pattern of a detector.

    Without a needle the pattern runs over the whole view (it must start with a
    literal to be fast).  With one, the pattern is tried only at `starts` — the
    places a match can begin (its lookbehind plus first character) — at most
    `back` characters before a needle hit; each start is tried once, so the work
    stays linear however dense the hits.  A candidate that fails validation moves
    the search on by one character, not past its end, so it cannot hide a valid
    value that overlaps it."""

    regex: re.Pattern[Any]  # bounded length when there is a needle
    view: View
    needle: re.Pattern[bytes] | None = None
    starts: re.Pattern[bytes] | None = None  # both on needle_view
    needle_view: View = "class"
    back: int = 0

    def collect(
        self, views: _Views, ok: Validator, out: list[tuple[int, int, int]], tag: int, all_: bool
    ) -> None:
        """Append (start, end, tag) of each valid match; `all_` ignores the needle."""
        target, text = views.get(self.view), views.text
        if self.needle is None or self.starts is None or all_:
            pos, search = 0, self.regex.search
            while (m := search(target, pos)) is not None:
                s, e = m.span()
                if ok(text[s:e]):
                    out.append((s, e, tag))
                    pos = max(e, s + 1)
                else:
                    pos = s + 1
            return
        nview = views.get(self.needle_view)
        match, starts = self.regex.match, self.starts.finditer
        resume = 0  # every start before this has been tried
        for hit in self.needle.finditer(nview):
            h = hit.start()
            if h < resume:
                continue
            lo = max(resume, h - self.back)
            nul = nview.rfind(b"\0", lo, h)  # no match holds a NUL (batch separators)
            for st in starts(nview, nul + 1 if nul >= 0 else lo, h + 1):
                s = st.start()
                m = match(target, s)
                if m is not None and m.end() > h and ok(text[s : m.end()]):
                    out.append((s, m.end(), tag))
                    resume = m.end()
                    break
            else:
                resume = h + 1


def _redact_partial(_: str) -> str:
    return REDACTED


@dataclass(frozen=True)
class Detector:
    """One kind of sensitive value."""

    name: str
    scanners: tuple[Scanner, ...]
    validate: Validator
    prefilter: Callable[[str], bool]  # False → the text cannot contain a match
    min_len: int  # shortest possible match
    partial: Callable[[str], str] = _redact_partial

    def find(
        self, text: str, views: _Views | None = None, exhaustive: bool = False
    ) -> list[tuple[int, int]]:
        """Validated spans (unmerged); `views` lets detectors share one translation;
        `exhaustive` skips needles and prefilters (the slow reference, for tests)."""
        if len(text) < self.min_len or not (exhaustive or self.prefilter(text)):
            return []
        views = views or _Views(text)
        found: list[tuple[int, int, int]] = []
        for sc in self.scanners:
            sc.collect(views, self.validate, found, 0, exhaustive)
        return [(s, e) for s, e, _ in found]


# ---------------------------------------------------------------- validators


_NON_DIGITS = re.compile(r"[^0-9]+")


def _digits(s: str) -> str:
    return _NON_DIGITS.sub("", s)


_DOUBLED = {str(d): (2 * d - 9 if d > 4 else 2 * d) for d in range(10)}


def luhn_ok(digits: str) -> bool:
    """Luhn checksum over a string of ASCII digits."""
    total = sum(map(int, digits[-1::-2])) + sum(map(_DOUBLED.__getitem__, digits[-2::-2]))
    return total % 10 == 0


def _card_ok(d: str) -> bool:
    return 13 <= len(d) <= 19 and d[0] in "23456" and len(set(d)) > 1 and luhn_ok(d)


_SEP = re.compile(r"[ -]")


def _valid_card(s: str) -> bool:
    if _card_ok(_digits(s)):
        return True
    groups = _SEP.split(s)  # "4111 1111 1111 1111 123": a card, then its CVV
    return len(groups) > 4 and _card_ok("".join(groups[:-1]))


def iban_ok(s: str) -> bool:
    """ISO 13616 mod-97 check; spaces are ignored."""
    compact = s.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34 or not (compact.isascii() and compact.isalnum()):
        return False
    rearranged = compact[4:] + compact[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _valid_iban(s: str) -> bool:
    # A spaced IBAN may be followed by another group of four ("… 7654 32 2024").
    return iban_ok(s) or (" " in s and iban_ok(s.rsplit(" ", 1)[0]))


def _valid_ssn(s: str) -> bool:
    area, group, serial = s.split("-")
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _valid_ipv4(s: str) -> bool:
    # What ipaddress.IPv4Address accepts (no leading zeros), without its cost.
    a, b, c, d = s.split(".")
    return _octet(a) and _octet(b) and _octet(c) and _octet(d)


def _octet(p: str) -> bool:
    return (p[0] != "0" or len(p) == 1) and int(p) <= 255


_HEX3 = re.compile(r"[0-9A-Fa-f]{3}")


def _valid_ipv6(s: str) -> bool:
    if "::" in s and not _HEX3.search(s.split("%", 1)[0]):
        return False  # "::", "::1", a[1::2]: too short to tell from code
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return False
    return True


def _valid_jwt(s: str) -> bool:
    head = s.split(".", 1)[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return False
    return isinstance(header, dict) and isinstance(header.get("alg"), str)


def _valid_phone(s: str) -> bool:
    d = _digits(s)
    if s.startswith("+"):
        return d[0] != "0" and 8 <= len(d) <= 15
    if len(d) == 11:
        d = d[1:] if d[0] == "1" else ""  # NANP country code
    return len(d) == 10 and d[0] >= "2" and d[3] >= "2"


def _always(_: str) -> bool:
    return True


_KNOWN_KEY = re.compile(
    r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|gh[pousr]_[A-Za-z0-9]{30,}"
    r"|github_pat_\w{30,}|xox[abposr]-[A-Za-z0-9-]{10,}|AIza[\w-]{35}|glpat-[\w-]{20,}"
    r"|sk-(?:proj-|ant-)?[\w-]{20,}|npm_[A-Za-z0-9]{36}|hf_[A-Za-z0-9]{30,}",
    re.ASCII,
)
_WORDISH = re.compile(r"[A-Z]?[a-z]{3,}|[A-Z]{4,}")


def shannon_entropy(s: str) -> float:
    """Bits per character of the string's own character distribution."""
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _looks_random(s: str, wordy_limit: float = 0.6) -> bool:
    """Generic secret heuristic, calibrated on random base62/base64url tokens
    (≈95% of 20-char and ≈99% of 40-char tokens pass) against identifiers."""
    if not (any(c.isupper() for c in s) and any(c.islower() for c in s)):
        return False
    if not any(c.isdigit() for c in s):
        return False
    if sum(len(w) for w in _WORDISH.findall(s)) > wordy_limit * len(s):
        return False  # CamelCaseWords, snake_case_words, SCREAMING_CASE
    return shannon_entropy(s) >= min(0.8 * math.log2(len(s)), 4.8)


def _valid_api_key(s: str) -> bool:
    if "/" in s or "+" in s:
        # The 40-char AWS secret access key shape.  Its exact length already rules
        # out most paths, so word-like runs (AWS's own EXAMPLEKEY) are tolerated.
        return (
            not any(c in s for c in "_-")
            and s[0] not in "/+"
            and "//" not in s
            and _looks_random(s, 1.0)
        )
    return _KNOWN_KEY.fullmatch(s) is not None or _looks_random(s)


# ---------------------------------------------------------------- partial styles


def _partial_card(s: str) -> str:
    return "**** **** **** " + _digits(s)[-4:]


def _partial_email(s: str) -> str:
    return "****@" + s.rsplit("@", 1)[1] if "@" in s else REDACTED


def _partial_ssn(s: str) -> str:
    return "***-**-" + _digits(s)[-4:]


# ---------------------------------------------------------------- the detectors
# Class view: 0 digit · A upper-case letter · a lower-case letter · punctuation unchanged.
# (IPv6 hex digits are checked by the validator.)

_C_IPV4 = rb"0{1,3}(?:\.0{1,3}){3}"
_C_H = rb"[0Aa]{1,4}"
_C_IPV6 = (
    rb"(?:(?:%(h)s:){7}%(h)s|(?:%(h)s:){6}%(v4)s"
    rb"|(?:%(h)s(?::%(h)s){0,6})?::(?:(?:%(h)s:){0,6}(?:%(v4)s|%(h)s))?)"
    rb"(?:%%[0Aa._~-]{1,15})?"
) % {b"h": _C_H, b"v4": _C_IPV4}
_C_CARD = (
    rb"0000(?<![0Aa]0000)(?:0{9,15}"
    rb"|(?P<s>[ -])0000(?P=s)0000(?:(?P=s)0000)?(?:(?P=s)0{1,3})?"
    rb"|(?P<t>[ -])000000(?P=t)00000?)(?![0Aa]|-0)"
)
_PEM = r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
_PEM_END = r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"
_EMAIL = (
    r"(?<![\w.%+-])[\w.%+-]{1,64}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}"
    r"[A-Za-z]{2,24}(?![\w-])"
)
_DIGIT = re.compile(r"[0-9]")


def _has_digit(text: str) -> bool:
    return _DIGIT.search(text) is not None


def _on(view: View, pattern: str | bytes, flags: int = 0, **needle: Any) -> Scanner:
    rx = re.compile(pattern, flags | (re.ASCII if isinstance(pattern, str) else 0))
    for key in ("needle", "starts"):
        if key in needle:
            needle[key] = re.compile(needle[key])
    return Scanner(rx, view, **needle)


def _contains(a: str, b: str | None = None) -> Callable[[str], bool]:
    return (lambda text: a in text) if b is None else (lambda text: a in text or b in text)


_PRIVATE_KEY = _on("text", rf"{_PEM}(?:.*?{_PEM_END}|.*)", re.DOTALL)
_JWT = _on("text", r"eyJ(?<![\w-]eyJ)[\w-]{6,}\.[\w-]{2,}\.[\w-]*")
_AWS = _on("text", r"A(?:KIA|SIA)(?<![A-Za-z0-9]A[KS]IA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_EMAIL_AT = _on("text", _EMAIL, needle=rb"@", starts=rb"(?<![0Aa_.%+-])[0Aa_.%+-]", back=64)
_IBAN = _on("class", rb"AA00(?<![0Aa]AA00)(?: ?[0A]{4}){2,7}(?: ?[0A]{1,3})?(?![0Aa])")
_SSN = _on("class", rb"000(?<!0000)(?<!0-000)-00-0000(?!0)(?!-0)")
_IPV6 = _on(
    "class",
    rb"(?<![0Aa_:])" + _C_IPV6 + rb"(?![0Aa_]|:[0Aa_:]|\.0)",
    needle=rb"::|:[0Aa]{1,4}:[0Aa]{1,4}:[0Aa]{1,4}:",
    starts=rb"(?<![0Aa_:])[0Aa:]",
    back=45,
)
_IPV4 = _on(
    "class",
    rb"(?<![0Aa_.])" + _C_IPV4 + rb"(?![0Aa_]|\.0)",
    needle=rb"\.0{1,3}\.0{1,3}\.",
    starts=rb"(?<![0Aa_.])0",
    back=3,
)
_E164 = _on("class", rb"\+(?<![0Aa+]\+)0(?:[ .-]?(?:\(0{1,4}\)|0)){6,14}(?!0)")
_NANP = _on(  # "2 415-555-0134" fails as a whole, then "415-555-0134" is tried
    "class",
    rb"(?<![0Aa+.-])(?:0[ .-]?)?(?:\(000\) ?|000[ .-])000[ .-]0000(?!0|[.-]0)",
    needle=rb"000[ .-]0000(?!0)",
    starts=rb"(?<![0Aa+.-])[0(]",
    back=8,
)
_TOKEN = _on("word", b"w" * 20 + b"(?<!" + b"w" * 21 + b")w*")
_AWS_SECRET = _on(
    "word",
    rb"(?<![wp=])[wp]{40}(?![wp=])",
    needle=rb"wp",
    starts=rb"(?<![wp=])[wp]",
    needle_view="word",
    back=38,
)

DETECTORS: dict[str, Detector] = {
    d.name: d
    for d in (  # in priority order: the first one labels a merged span
        Detector("private_key", (_PRIVATE_KEY,), _always, _contains("PRIVATE KEY"), 30),
        Detector("jwt", (_JWT,), _valid_jwt, _contains("eyJ"), 14),
        Detector("aws_access_key", (_AWS,), _always, _contains("AKIA", "ASIA"), 20),
        # Sloppy local parts ("a..b") are still someone's address: no validation.
        Detector("email", (_EMAIL_AT,), _always, _contains("@"), 6, _partial_email),
        Detector("iban", (_IBAN,), _valid_iban, _has_digit, 15),
        Detector(
            "credit_card", (_on("class", _C_CARD),), _valid_card, _has_digit, 13, _partial_card
        ),
        Detector("ssn", (_SSN,), _valid_ssn, _contains("-"), 11, _partial_ssn),
        Detector("ipv6", (_IPV6,), _valid_ipv6, _contains(":"), 5),
        Detector("ipv4", (_IPV4,), _valid_ipv4, _contains("."), 7),
        Detector("phone", (_E164, _NANP), _valid_phone, _has_digit, 9),
        Detector("api_key", (_TOKEN, _AWS_SECRET), _valid_api_key, _always, 20),
    )
}
PRIORITY: tuple[str, ...] = tuple(DETECTORS)


# ---------------------------------------------------------------- whole values


def keyed_hash(value: str, key: bytes) -> str:
    """Stable keyed pseudonym: "h:" + 16 hex digits of HMAC-SHA256(key, value)."""
    if not key:
        raise ValueError("hash style needs a non-empty key")
    data = value.encode("utf-8", "surrogatepass")
    return "h:" + hmac.new(key, data, hashlib.sha256).hexdigest()[:16]


_WHOLE_EMAIL = re.compile(_EMAIL, re.ASCII)
_WHOLE_CARD = re.compile(r"[0-9]{4}(?:[ -]?[0-9]){9,15}", re.ASCII)
_WHOLE_SSN = re.compile(r"[0-9]{3}-?[0-9]{2}-?[0-9]{4}", re.ASCII)


def _partial_whole(value: str) -> str:
    v = value.strip()
    if _WHOLE_EMAIL.fullmatch(v):
        return _partial_email(v)
    if _WHOLE_CARD.fullmatch(v):
        return _partial_card(v)
    if _WHOLE_SSN.fullmatch(v):
        return _partial_ssn(v)
    return REDACTED


def mask_whole(value: str, style: str = "redact", key: bytes = b"") -> str:
    """Mask an entire (column) value regardless of its content."""
    if style == "hash":
        return keyed_hash(value, key)
    if style == "partial":
        return _partial_whole(value)
    if style == "redact":
        return REDACTED
    raise ValueError(f"unknown mask style {style!r}")


def redact_value(type_hint: str = "text", numeric: str = "null") -> str | None:
    """Replacement for a redacted value of a typed column, as text (None = SQL NULL).

    "text" → "****"; "numeric" → None, or "0" with numeric="zero"; "json" → '"****"';
    anything else (bool, date, uuid, bytes, …) → None, which every client can decode.
    """
    if type_hint == "text":
        return REDACTED
    if type_hint == "numeric":
        return "0" if numeric == "zero" else None
    if type_hint == "json":
        return json.dumps(REDACTED)
    return None


# ---------------------------------------------------------------- the masker


def _new_counter() -> Counter[str]:
    return Counter.__new__(Counter)  # an empty Counter without __init__'s cost


class ValueMasker:
    """Masks detected values in text and JSON; build once, reuse for every value."""

    def __init__(self, detectors: Sequence[str], style: str = "redact", key: bytes = b""):
        unknown = sorted(set(detectors) - set(DETECTORS))
        if unknown:
            raise ValueError(f"unknown detectors: {', '.join(unknown)}")
        if style not in STYLES:
            raise ValueError(f"unknown mask style {style!r}")
        if style == "hash" and not key:
            raise ValueError("hash style needs a non-empty key")
        wanted = set(detectors)
        self.detectors = tuple(DETECTORS[n] for n in PRIORITY if n in wanted)
        self.style = style
        self._key = key
        self._min_len = min((d.min_len for d in self.detectors), default=1 << 62)
        self._plan = tuple(
            (rank, d.min_len, d.prefilter, d.scanners, d.validate)
            for rank, d in enumerate(self.detectors)
        )

    def spans(self, text: str, exhaustive: bool = False) -> list[Span]:
        """Merged, sorted spans of detected values (positions and names only)."""
        n = len(text)
        if n < self._min_len:
            return []
        views: _Views | None = None
        found: list[tuple[int, int, int]] = []
        for rank, min_len, prefilter, scanners, ok in self._plan:
            if n < min_len or not (exhaustive or prefilter(text)):
                continue
            views = views or _Views(text)
            for sc in scanners:
                sc.collect(views, ok, found, rank, exhaustive)
        return self._merge(found) if found else []

    def _merge(self, found: list[tuple[int, int, int]]) -> list[Span]:
        if len(found) == 1:
            s, e, r = found[0]
            return [(s, e, self.detectors[r].name)]
        found.sort()
        merged: list[list[int]] = []
        for start, end, rank in found:
            if merged and start < merged[-1][1]:
                last = merged[-1]
                last[1] = max(last[1], end)
                last[2] = min(last[2], rank)
            else:
                merged.append([start, end, rank])
        return [(s, e, self.detectors[r].name) for s, e, r in merged]

    def replacement(self, value: str, detector: str) -> str:
        """What one detected value becomes under this masker's style."""
        if self.style == "hash":
            return keyed_hash(value, self._key)
        if self.style == "partial":
            return DETECTORS[detector].partial(value)
        return REDACTED

    def _apply(self, text: str, spans: list[Span], counts: Counter[str]) -> str:
        out: list[str] = []
        pos = 0
        for start, end, name in spans:
            out.append(text[pos:start])
            out.append(self.replacement(text[start:end], name))
            counts[name] += 1
            pos = end
        out.append(text[pos:])
        return "".join(out)

    def mask_text(self, text: str) -> tuple[str, Counter[str]]:
        """Replace every detected value; counts per detector, never the values."""
        return self.mask_spans(text, self.spans(text))

    def mask_spans(self, text: str, spans: list[Span]) -> tuple[str, Counter[str]]:
        """mask_text, given the spans `self.spans(text)` found (e.g. in a batch scan)."""
        counts: Counter[str] = _new_counter()
        for _ in range(_MAX_PASSES):
            if not spans:
                return text, counts
            text = self._apply(text, spans, counts)
            # Removing a value changes its neighbours' context (a phone number that ran
            # into digits may now stand alone): scan again unless nothing can match.
            rescan = self._could_match(text)
            spans = self.spans(text) if rescan else []
        # still finding after several passes: fail closed
        return (REDACTED if spans else text), counts

    def mask_json(self, value: Any) -> tuple[Any, Counter[str]]:
        """Mask string leaves (and integers long enough to be card numbers) of a
        decoded JSON value; keys are kept.  Iterative, so nesting depth cannot
        exhaust the stack; builds new containers and never mutates `value`."""
        counts: Counter[str] = _new_counter()
        root: list[Any] = [value]
        stack: list[tuple[Any, Any]] = [(root, 0)]
        while stack:
            container, k = stack.pop()
            v = container[k]
            if isinstance(v, str):
                container[k] = self._leaf(v, counts)
            elif isinstance(v, int) and not isinstance(v, bool) and abs(v) >= 10**12:
                masked = self._leaf(str(v), counts)
                container[k] = v if masked == str(v) else masked
            elif isinstance(v, dict):
                container[k] = new = dict(v)
                stack.extend((new, key) for key in new)
            elif isinstance(v, list):
                container[k] = new_list = list(v)
                stack.extend((new_list, i) for i in range(len(new_list)))
        return root[0], counts

    def _leaf(self, s: str, counts: Counter[str]) -> str:
        if len(s) < self._min_len:
            return s
        masked, c = self.mask_text(s)
        counts.update(c)
        return masked

    def mask_json_text(self, text: str) -> tuple[str, Counter[str]]:
        """Mask JSON/JSONB text leaf by leaf and dump it compactly.  Text with nothing
        to mask comes back unchanged; text that is not JSON is masked as plain text."""
        if len(text) < self._min_len:
            return text, _new_counter()
        if "\\u" not in text and not self._could_match(text):
            return text, _new_counter()  # (a \\u escape could hide "@" from the prefilters)
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            return self.mask_text(text)
        masked, counts = self.mask_json(value)
        if not counts:
            return text, counts
        try:
            return json.dumps(masked, separators=(",", ":"), ensure_ascii=False), counts
        except (ValueError, RecursionError):
            return json.dumps(REDACTED), counts  # cannot re-encode: fail closed

    def _could_match(self, text: str) -> bool:
        n = len(text)
        return any(n >= d.min_len and d.prefilter(text) for d in self.detectors)


# ---------------------------------------------------------------- column rules


@functools.lru_cache(maxsize=1024)
def _column_rule(pattern: str) -> tuple[re.Pattern[str] | None, ...]:
    parts = [p.strip().strip('"') for p in pattern.rsplit(".", 2)]
    globs: list[re.Pattern[str] | None] = [None] * (3 - len(parts))
    globs += [re.compile(fnmatch.translate(p), re.IGNORECASE | re.DOTALL) for p in parts]
    return tuple(globs)  # schema, table, column


def _split_table(table: str | None) -> tuple[str | None, str | None]:
    if not table:
        return None, None
    if "." in table:
        schema, name = table.rsplit(".", 1)
        return schema.strip('"'), name.strip('"')
    return None, table.strip('"')


def column_matches(patterns: Sequence[str], table: str | None, column: str) -> bool:
    """Does any `[[schema.]table.]column` glob cover this result column?

    Case-insensitive.  `table` may be schema-qualified ("public.customers"); an
    unqualified table matches any schema glob, and `table=None` (lineage unknown)
    matches any table glob: when unsure, mask.
    """
    schema, name = _split_table(table)
    for pattern in patterns:
        s_glob, t_glob, c_glob = _column_rule(pattern)
        if c_glob is None or not c_glob.match(column):
            continue
        if t_glob is not None and name is not None and not t_glob.match(name):
            continue
        if s_glob is not None and schema is not None and not s_glob.match(schema):
            continue
        return True
    return False
