"""Credentials an agent writes into a shell command line, hidden from what hoopy keeps.

`PGPASSWORD=x psql …`, `mysql --password=x`, `curl -u bob:x …`, `curl -H
'Authorization: Bearer x'`, `git clone https://bob:x@host/r` carry a credential in the
line itself.  The host needs it; recordings, approval requests and hoopy's log do not.
`hidden()` replaces each such value by `****` and leaves the rest as written, so an
approver still reads what runs, and returns the values it hid, so that other fields
quoting the line (the simple commands it runs) are scrubbed of them too.

Patterns over the raw line, not the parse: a line hoopy cannot parse hides its
credentials as well, and a value quoted in any style is hidden with its quotes.
What runs on a terminal (an interactive shell's screen) is the session's stream, and
is recorded as the agent saw it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

MASK = "****"

# A shell word's value: single- or double-quoted (to the closing quote) or bare.
_VALUE = r"""('[^']*'?|"(?:[^"\\]|\\.)*"?|[^\s'";|&<>()]+)"""
_SECRETISH = r"(?:PASS|PASSWD|PASSWORD|PWD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|CREDENTIALS?)"
_PATTERNS = (
    # NAME=value where NAME says it holds a secret (env assignments, env, export)
    re.compile(rf"(?i)(\b(?!(?:OLD)?PWD=)\w*{_SECRETISH}\w*=){_VALUE}"),
    # --password=value, --password value, --token value …
    re.compile(
        r"(?i)((?:^|\s)--?(?:[\w-]*-)?(?:password|passwd|pass|secret|token|api-?key)"
        rf"(?:=|\s+)){_VALUE}"
    ),
    # curl -u user:password, --user user:password
    re.compile(rf"((?:^|\s)(?:-u\s*|--user(?:=|\s+))['\"]?[^\s:'\"]*:){_VALUE}"),
    # Authorization headers
    re.compile(r"(?i)(\bauthorization:\s*(?:bearer|basic|token|digest)?\s*)([^\s'\"]+)"),
    # URI userinfo scheme://user:password@
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^\s/@:'\"]*:)([^\s/@'\"]+)(?=@)"),
)
_HINTS = ("pass", "pwd", "secret", "token", "key", "credential", "-u", "--user", "auth", "://")


def hidden(line: str) -> tuple[str, tuple[str, ...]]:
    """(`line` with credentials shown as `****`, the values hidden)."""
    low = line.lower()
    if not any(h in low for h in _HINTS):
        return line, ()
    secrets: list[str] = []

    def sub(m: re.Match[str]) -> str:
        value = m.group(2)
        quote = value[:1] if value[:1] in ("'", '"') else ""
        inner = value[len(quote) :]
        if quote and inner.endswith(quote):
            inner = inner[:-1]
        if inner and inner != MASK:
            secrets.append(inner)
        return m.group(1) + (quote + MASK + quote if quote else MASK)

    for pattern in _PATTERNS:
        line = pattern.sub(sub, line)
    return again(line, secrets), tuple(secrets)


def again(text: str, secrets: list[str]) -> str:
    """`text` with the values already found hidden wherever else they stand (a line
    that sets a token and then compares or prints it); values under 4 characters
    are left, as they would hide too much that is not them."""
    return scrub(text, secrets, shortest=4)


def scrub(text: str, secrets: Sequence[str], shortest: int = 1) -> str:
    """`text` with each of `secrets` (longest first) replaced by `****`."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= shortest and secret in text:
            text = text.replace(secret, MASK)
    return text
