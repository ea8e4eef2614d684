"""The `options` startup parameter (PGOPTIONS, JDBC `options`/`currentSchema`).

PostgreSQL reads it as command-line switches for the backend: words split on
whitespace, a backslash keeping the next character (pg_split_opts), then `-c name=value`,
`-cname=value` or `--name=value` (dashes in a name read as underscores).  hoopy must not
forward it whole — `-c role=…` or `-c session_authorization=…` would change who runs the
statements hoopy checks — nor drop it in silence, since a client that sets
`intervalstyle` or `search_path` there expects its results to follow.  So settings on a
safe list become ordinary startup parameters (which the server applies as session
defaults, and a pooled connection's DISCARD ALL restores), and anything else refuses the
login, naming the setting.
"""

from __future__ import annotations

# Settings that change how results are shown or how long statements may run, and
# search_path (which the session's policy view follows, as for SET search_path).
SAFE_OPTIONS = frozenset(
    {
        "datestyle",
        "intervalstyle",
        "timezone",
        "extra_float_digits",
        "statement_timeout",
        "lock_timeout",
        "idle_in_transaction_session_timeout",
        "application_name",
        "search_path",
    }
)


class OptionsError(ValueError):
    """The `options` value holds something hoopy will not pass on."""


def split_words(options: str) -> list[str]:
    """pg_split_opts: whitespace separates words; a backslash keeps the next character."""
    words: list[str] = []
    cur: list[str] = []
    started = False
    it = iter(options)
    for ch in it:
        if ch == "\\":
            nxt = next(it, None)
            if nxt is not None:
                cur.append(nxt)
            started = True
        elif ch.isspace():
            if started:
                words.append("".join(cur))
                cur, started = [], False
        else:
            cur.append(ch)
            started = True
    if started:
        words.append("".join(cur))
    return words


def parse_options(options: str) -> dict[str, str]:
    """The settings `options` makes, by lower-case name; raises OptionsError for a
    switch other than a setting, a malformed one, or a setting off the safe list."""
    settings: dict[str, str] = {}
    words = split_words(options)
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-c":
            if i + 1 >= len(words):
                raise OptionsError("'-c' without a setting in the options startup parameter")
            item, i = words[i + 1], i + 2
        elif word.startswith(("-c", "--")):  # -cname=value, --name=value
            item, i = word[2:], i + 1
        else:
            raise OptionsError(
                f"option {word!r} in the options startup parameter is not allowed through "
                "hoopy (only -c name=value settings are)"
            )
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise OptionsError(f"malformed setting {item!r} in the options startup parameter")
        key = name.replace("-", "_").lower()
        if key not in SAFE_OPTIONS:
            raise OptionsError(
                f"setting {name!r} in the options startup parameter is not allowed through "
                f"hoopy (allowed: {', '.join(sorted(SAFE_OPTIONS))})"
            )
        settings[key] = value
    return settings
