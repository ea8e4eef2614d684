"""`names:` globs against a Kubernetes create that names its object by `generateName`.

Such a create has no name yet: kube-apiserver makes it `generateName` (cut to 58
characters) + 5 random characters from k8s.io/apimachinery/pkg/util/rand's alphabet.
A rule cannot be judged on the prefix alone (a deny on `web-*x` would miss `web-`,
an allow on `tmp-*` would pass `tm`), so it is judged on every possible name:
a restrictive rule (deny, approval, mask) matches when some completion matches, an
allow only when every completion does.  Pure, no I/O.

27^5 completions are too many to try, but a glob only tells characters apart that its
tokens (literals, `?`, `[sets]`) treat differently: the alphabet falls into a few
classes, and one representative per class per position decides exactly.  When the
globs split it into too many classes, the answer is the safe one (restrictive rules
match, allows do not).
"""

from __future__ import annotations

import fnmatch
import itertools
import re
from collections.abc import Sequence
from functools import lru_cache

ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # utilrand.String's letters: no vowels, no 0/1/3
RANDOM_LENGTH = 5
MAX_PREFIX = 63 - RANDOM_LENGTH  # longer generateNames are cut (names.SimpleNameGenerator)
MAX_CASES = 4096


def _compile(pattern: str) -> re.Pattern[str]:
    # the same translation and flags as policy.glob_any (names are matched ignoring case)
    return re.compile(fnmatch.translate(pattern), re.IGNORECASE | re.DOTALL)


def _tokens(pattern: str) -> list[str]:
    """The one-character tokens of a glob, split as fnmatch.translate splits it."""
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            continue
        if c == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j < n:
                out.append(pattern[i - 1 : j + 1])
                i = j + 1
                continue
        out.append(c)
    return out


def _representatives(patterns: Sequence[str]) -> str:
    """One character of the alphabet per class the globs' tokens cannot tell apart."""
    tokens = [_compile(t) for p in patterns for t in set(_tokens(p))]
    seen: dict[tuple[bool, ...], str] = {}
    for ch in ALPHABET:
        seen.setdefault(tuple(bool(t.match(ch)) for t in tokens), ch)
    return "".join(seen.values())


@lru_cache(maxsize=1024)
def _judge(patterns: tuple[str, ...], prefix: str) -> tuple[bool, bool] | None:
    """(some completion matches, every completion matches), or None if too costly."""
    reps = _representatives(patterns)
    if len(reps) ** RANDOM_LENGTH > MAX_CASES:
        return None
    compiled = [_compile(p) for p in patterns]
    prefix = prefix[:MAX_PREFIX]
    some, every = False, True
    for tail in itertools.product(reps, repeat=RANDOM_LENGTH):
        name = prefix + "".join(tail)
        hit = any(c.match(name) for c in compiled)
        some, every = some or hit, every and hit
        if some and not every:
            break
    return some, every


def generated_name_matches(patterns: Sequence[str], prefix: str, every: bool) -> bool:
    """Does a `names:` rule apply to a create named `prefix` + 5 random characters?
    `every`: an allow (must hold for every completion); else a restrictive rule."""
    judged = _judge(tuple(patterns), prefix)
    if judged is None:
        return not every  # undecided: the safe side
    return judged[1] if every else judged[0]
