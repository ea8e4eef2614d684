"""generateName creates against `names:` globs (hoopy.kubenames): a restrictive rule
matches when some completion of the prefix matches, an allow only when all do; the
class reduction is checked against brute force over every completion (length 2)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy import kubenames
from hoopy.kubenames import ALPHABET, generated_name_matches
from hoopy.policy import Command, Identity, KubeMatch, Match, PolicySet, Rule, decide


@pytest.mark.parametrize(
    ("patterns", "prefix", "some", "every"),
    [
        (["web-*"], "web-", True, True),
        (["web-*"], "we", False, False),  # the random characters hold no '-'
        (["prod-*"], "p", False, False),  # no vowel among the random characters
        (["web-*x"], "web-", True, False),
        (["web-?????"], "web-", True, True),
        (["web-????"], "web-", False, False),
        (["web-[b-z]*"], "web-", True, False),
        (["web-[!b]*"], "web-", True, False),
        (["*"], "", True, True),
        (["tmp-*", "t*"], "t", True, True),
        (["WEB-*"], "web-", True, True),  # names match ignoring case, as elsewhere
        (["a" * 58 + "*"], "a" * 70, True, True),  # a long generateName is cut to 58
        (["a" * 60 + "*"], "a" * 70, False, False),
    ],
)
def test_some_and_every_completion(
    patterns: list[str], prefix: str, some: bool, every: bool
) -> None:
    assert generated_name_matches(patterns, prefix, every=False) is some
    assert generated_name_matches(patterns, prefix, every=True) is every


def test_too_many_classes_fall_on_the_safe_side() -> None:
    pattern = "x-" + "".join(f"[{c}]" for c in ALPHABET[:8])  # 9 classes: 9^5 > MAX_CASES
    assert kubenames._judge((pattern,), "x-") is None
    assert generated_name_matches([pattern], "x-", every=False) is True
    assert generated_name_matches([pattern], "x-", every=True) is False


GLOB = st.text(alphabet="bcx27-*?[]!", max_size=6)


@settings(max_examples=300, deadline=None)
@given(patterns=st.lists(GLOB, min_size=1, max_size=3), prefix=st.text("bx-", max_size=3))
def test_class_reduction_equals_brute_force(patterns: list[str], prefix: str) -> None:
    compiled = [kubenames._compile(p) for p in patterns]
    hits = [
        any(c.match(prefix + "".join(t)) for c in compiled)
        for t in itertools.product(ALPHABET, repeat=2)
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(kubenames, "RANDOM_LENGTH", 2)
        kubenames._judge.cache_clear()
        try:
            assert kubenames._judge(tuple(patterns), prefix) == (any(hits), all(hits))
        finally:
            kubenames._judge.cache_clear()


def _decide(rules: list[Rule], name: str, generated: bool) -> str:
    cmd = Command(
        "kubernetes",
        "cluster",
        text="create pods",
        kinds=frozenset({"create"}),
        verb="create",
        resource="pods",
        namespace="default",
        name=name,
        generated_name=generated,
    )
    who = Identity("agent", frozenset({"agents"}), issuer="https://idp")
    return decide([PolicySet("p", tuple(rules))], who, cmd).outcome


def test_policy_judges_generate_name_by_its_completions() -> None:
    allow = Rule("all", "allow", Match(groups=("agents",)))
    deny = Rule("no-x", "deny", Match(kubernetes=KubeMatch(names=("web-*x",))))
    # judged on the bare prefix the deny would be missed
    assert _decide([allow, deny], "web-", generated=False) == "allow"
    assert _decide([allow, deny], "web-", generated=True) == "deny"
    only_tmp = Rule("tmp", "allow", Match(kubernetes=KubeMatch(names=("tmp-*",))))
    assert _decide([only_tmp], "tmp-", generated=True) == "allow"
    assert _decide([only_tmp], "tm", generated=True) == "deny"
    assert _decide([only_tmp], "", generated=True) == "deny"
