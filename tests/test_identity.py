"""IdentityVerifier against a real DevIssuer served over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from hoopy.config import IssuerConfig
from hoopy.devissuer import DevIssuer
from hoopy.identity import AuthError, IdentityVerifier
from tests.oidc_helpers import (
    Clock,
    b64json,
    b64url,
    closed_port,
    issuer_config,
    running_issuer,
)

JWKS = "/jwks.json"
DISCOVERY = "/.well-known/openid-configuration"


@pytest.fixture
async def dev(tmp_path: Path) -> AsyncIterator[DevIssuer]:
    async with running_issuer(tmp_path / "issuer") as d:
        yield d


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def verifier(dev: DevIssuer, clock: Clock) -> AsyncIterator[IdentityVerifier]:
    v = IdentityVerifier([issuer_config(dev)], clock=clock)
    yield v
    await v.close()


def claims(dev: DevIssuer, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {
        "iss": dev.issuer_url,
        "aud": dev.audience,
        "sub": "agent-1",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "groups": ["agents"],
    }
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def hs256(secret: bytes, header: dict[str, Any], payload: dict[str, Any]) -> str:
    signing_input = f"{b64json(header)}.{b64json(payload)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(sig)}"


def signing_key(dev: DevIssuer) -> ECKey:
    """The issuer's private key as a test (or `hoopy token mint`) reads it from its file."""
    return ECKey.import_key(json.loads(dev.key_path.read_text()))


async def rejected(v: IdentityVerifier, token: str, reason: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        await v.verify(token)
    err = info.value
    assert err.reason == reason, err
    pieces = [p[:20] for p in token.split(".") if len(p) >= 8]  # recognisable pieces
    for text in (err.message, str(err), repr(err)):
        assert all(piece not in text for piece in pieces)
    return err


# ------------------------------------------------------------------ accepted tokens


async def test_valid_token_gives_identity(dev: DevIssuer, verifier: IdentityVerifier) -> None:
    token = dev.mint("agent-7", ["agents", "readers"], ttl=600)
    ident = await verifier.verify(token)
    assert ident.subject == "agent-7"
    assert ident.groups == frozenset({"agents", "readers"})
    assert ident.issuer == dev.issuer_url
    assert ident.token_fingerprint == hashlib.sha256(token.encode()).hexdigest()[:16]
    assert abs(ident.expires_at - (time.time() + 600)) < 5


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["a", 1, None, "b", {"x": 1}], {"a", "b"}),
        ("admins", {"admins"}),
        (42, set()),
        ({"a": True}, set()),
    ],
)
async def test_groups_claim_shapes(
    dev: DevIssuer, verifier: IdentityVerifier, value: Any, expected: set[str]
) -> None:
    ident = await verifier.verify(dev.mint("s", extra={"groups": value}))
    assert ident.groups == frozenset(expected)


async def test_groups_from_configured_claim(tmp_path: Path, clock: Clock) -> None:
    async with running_issuer(tmp_path / "r", groups_claim="roles") as dev:
        v = IdentityVerifier([issuer_config(dev)], clock=clock)
        try:
            token = dev.mint("s", ["dba"], extra={"groups": ["not-these"]})
            assert (await v.verify(token)).groups == frozenset({"dba"})
        finally:
            await v.close()
        nested = IdentityVerifier([issuer_config(dev, groups_claim="realm_access.roles")])
        try:
            token = dev.mint("s", extra={"realm_access": {"roles": ["ops", 3]}})
            assert (await nested.verify(token)).groups == frozenset({"ops"})
        finally:
            await nested.close()


async def test_audience_list_and_token_without_kid(
    dev: DevIssuer, verifier: IdentityVerifier
) -> None:
    ident = await verifier.verify(dev.mint("s", extra={"aud": ["other", "hoopy"]}))
    assert ident.subject == "s"
    no_kid = jwt.encode({"alg": "ES256"}, claims(dev), signing_key(dev), algorithms=["ES256"])
    assert (await verifier.verify(no_kid)).subject == "agent-1"


async def test_leeway_on_expiry(dev: DevIssuer, verifier: IdentityVerifier, clock: Clock) -> None:
    token = dev.mint("s", ttl=60)
    clock.advance(60 + 25)  # within the 30 s leeway
    await verifier.verify(token)
    clock.advance(10)
    await rejected(verifier, token, "expired")


async def test_concurrent_cold_verifies_fetch_once(
    dev: DevIssuer, verifier: IdentityVerifier
) -> None:
    tokens = [dev.mint(f"agent-{i}") for i in range(20)]
    idents = await asyncio.gather(*(verifier.verify(t) for t in tokens))
    assert [i.subject for i in idents] == [f"agent-{i}" for i in range(20)]
    assert dev.hits[DISCOVERY] == 1 and dev.hits[JWKS] == 1


# ------------------------------------------------------------------ refused tokens


def _alg_none(dev: DevIssuer) -> str:
    return f"{b64json({'alg': 'none', 'typ': 'JWT'})}.{b64json(claims(dev))}."


def _alg_none_with_kid(dev: DevIssuer) -> str:
    return f"{b64json({'alg': 'none', 'kid': dev.kid})}.{b64json(claims(dev))}."


def _hs256_with_pem(dev: DevIssuer) -> str:
    pem = ECKey.import_key(dev.jwks()["keys"][0]).as_pem(private=False)
    return hs256(pem, {"alg": "HS256", "kid": dev.kid}, claims(dev))


def _hs256_with_jwk(dev: DevIssuer) -> str:
    jwk = json.dumps(dev.jwks()["keys"][0]).encode()
    return hs256(jwk, {"alg": "HS256", "kid": dev.kid}, claims(dev))


def _truncated_payload(dev: DevIssuer) -> str:
    token = dev.mint("s")
    return token[: token.index(".") + 10]


def _truncated_signature(dev: DevIssuer) -> str:
    return dev.mint("s")[:-7]


def _right_kid_other_key(dev: DevIssuer) -> str:
    other = ECKey.generate_key("P-256", private=True)
    return jwt.encode({"alg": "ES256", "kid": dev.kid}, claims(dev), other, algorithms=["ES256"])


def _other_key_no_kid(dev: DevIssuer) -> str:
    other = ECKey.generate_key("P-256", private=True)
    return jwt.encode({"alg": "ES256"}, claims(dev), other, algorithms=["ES256"])


def _rsa_key_our_kid(dev: DevIssuer) -> str:
    other = RSAKey.generate_key(2048, private=True)
    return jwt.encode({"alg": "RS256", "kid": dev.kid}, claims(dev), other, algorithms=["RS256"])


def _tampered_payload(dev: DevIssuer) -> str:
    h, _, s = dev.mint("agent-1", ["agents"]).split(".")
    return f"{h}.{b64json(claims(dev, groups=['admins']))}.{s}"


Attack = Callable[[DevIssuer], str]
ATTACKS: list[tuple[str, Attack, str]] = [
    ("garbage", lambda d: "this is not a token at all, just garbage", "malformed"),
    ("empty", lambda d: "", "malformed"),
    ("two parts", lambda d: "a.b", "malformed"),
    ("jwe-shaped", lambda d: "a.b.c.d.e", "malformed"),
    ("truncated payload", _truncated_payload, "malformed"),
    ("truncated signature", _truncated_signature, "bad_signature"),
    ("tampered payload", _tampered_payload, "bad_signature"),
    ("expired", lambda d: d.mint("s", ttl=-120), "expired"),
    ("nbf in future", lambda d: d.mint("s", extra={"nbf": time.time() + 3600}), "not_yet_valid"),
    ("iat in future", lambda d: d.mint("s", extra={"iat": time.time() + 3600}), "not_yet_valid"),
    ("wrong audience", lambda d: d.mint("s", extra={"aud": "not-hoopy"}), "audience"),
    ("audience list without ours", lambda d: d.mint("s", extra={"aud": ["a", "b"]}), "audience"),
    ("no audience", lambda d: d.sign(claims(d, aud=None)), "audience"),
    ("alg none", _alg_none, "algorithm"),
    ("alg none with kid", _alg_none_with_kid, "algorithm"),
    ("HS256 keyed with public PEM", _hs256_with_pem, "algorithm"),
    ("HS256 keyed with public JWK", _hs256_with_jwk, "algorithm"),
    ("right kid, other key", _right_kid_other_key, "bad_signature"),
    ("no kid, other key", _other_key_no_kid, "bad_signature"),
    ("RS256 with our kid", _rsa_key_our_kid, "unknown_key"),  # no RSA key has that kid
    ("missing sub", lambda d: d.sign(claims(d, sub=None)), "missing_claim"),
    ("empty sub", lambda d: d.mint(""), "missing_claim"),
    ("numeric sub", lambda d: d.sign(claims(d, sub=12345)), "missing_claim"),
    ("missing exp", lambda d: d.sign(claims(d, exp=None)), "missing_claim"),
    ("string exp", lambda d: d.mint("s", extra={"exp": "4102444800"}), "malformed"),
    ("boolean exp", lambda d: d.mint("s", extra={"exp": True}), "malformed"),
    ("NaN exp", lambda d: d.mint("s", extra={"exp": float("nan")}), "malformed"),
    ("Infinity exp", lambda d: d.mint("s", extra={"exp": float("inf")}), "malformed"),
    ("huge integer exp", lambda d: d.sign(claims(d, exp=10**309)), "malformed"),
    ("crit header", lambda d: d.sign(claims(d), {"crit": ["kid"]}), "malformed"),
    ("20 KiB token", lambda d: d.mint("s", extra={"pad": "x" * 20 * 1024}), "malformed"),
    (
        "unknown issuer claim",
        lambda d: d.mint("s", extra={"iss": "https://evil"}),
        "unknown_issuer",
    ),
    ("no issuer claim", lambda d: d.sign(claims(d, iss=None)), "unknown_issuer"),
    (
        "issuer with slash",
        lambda d: d.mint("s", extra={"iss": d.issuer_url + "/"}),
        "unknown_issuer",
    ),
]


@pytest.mark.parametrize(
    ("token_of", "reason"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS]
)
async def test_attack_refused(
    dev: DevIssuer, verifier: IdentityVerifier, token_of: Attack, reason: str
) -> None:
    await rejected(verifier, token_of(dev), reason)


async def test_huge_token_refused_before_any_fetch(
    dev: DevIssuer, verifier: IdentityVerifier
) -> None:
    await rejected(verifier, dev.mint("s", extra={"pad": "x" * 20 * 1024}), "malformed")
    assert dev.hits.total() == 0


async def test_non_string_token(verifier: IdentityVerifier) -> None:
    for value in (None, b"abc", 42):
        with pytest.raises(AuthError) as info:
            await verifier.verify(value)  # type: ignore[arg-type]
        assert info.value.reason == "malformed"


async def test_hs256_refused_even_if_configured(dev: DevIssuer, clock: Clock) -> None:
    v = IdentityVerifier([issuer_config(dev, algorithms=("HS256", "ES256"))], clock=clock)
    try:
        await rejected(v, _hs256_with_pem(dev), "algorithm")
        await rejected(v, _hs256_with_jwk(dev), "algorithm")
        await v.verify(dev.mint("s"))  # the verifier itself works
    finally:
        await v.close()


async def test_algorithm_outside_allow_list(dev: DevIssuer, clock: Clock) -> None:
    v = IdentityVerifier([issuer_config(dev, algorithms=("RS256",))], clock=clock)
    try:
        await rejected(v, dev.mint("s"), "algorithm")
    finally:
        await v.close()


async def test_token_of_another_issuer(tmp_path: Path, dev: DevIssuer, clock: Clock) -> None:
    async with running_issuer(tmp_path / "other") as other:
        only_dev = IdentityVerifier([issuer_config(dev)], clock=clock)
        both = IdentityVerifier([issuer_config(dev), issuer_config(other)], clock=clock)
        try:
            # validly signed by a different issuer: not trusted here
            await rejected(only_dev, other.mint("s"), "unknown_issuer")
            assert (await both.verify(other.mint("s"))).issuer == other.issuer_url
            # signed by a trusted issuer B but claiming to come from A
            forged = other.mint("s", extra={"iss": dev.issuer_url})
            await rejected(both, forged, "unknown_key")
        finally:
            await only_dev.close()
            await both.close()


async def test_messages_and_logs_never_contain_the_token(
    dev: DevIssuer, verifier: IdentityVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hoopy.identity")
    tokens = [attack(dev) for _, attack, _ in ATTACKS] + [dev.mint("ok")]
    for token in tokens:
        ctx = pytest.raises(AuthError) if token != tokens[-1] else contextlib.nullcontext()
        with ctx:
            await verifier.verify(token)
    assert "rejected" in caplog.text  # the log is there, only the token is not
    pieces = {p[:20] for token in tokens for p in token.split(".") if len(p) >= 8}
    assert all(piece not in caplog.text for piece in pieces)


# ------------------------------------------------------------------ key cache


async def test_unknown_kids_do_not_hammer_the_idp(
    dev: DevIssuer, verifier: IdentityVerifier, clock: Clock
) -> None:
    await verifier.verify(dev.mint("s"))
    assert dev.hits[JWKS] == 1
    clock.advance(30)  # min_refresh_gap has passed: one refetch is allowed
    for i in range(50):
        await rejected(verifier, dev.sign(claims(dev), {"kid": f"garbage-{i}"}), "unknown_key")
    assert dev.hits[JWKS] == 2
    clock.advance(29)
    for i in range(50):
        await rejected(verifier, dev.sign(claims(dev), {"kid": f"more-{i}"}), "unknown_key")
    assert dev.hits[JWKS] == 2
    clock.advance(1)
    await rejected(verifier, dev.sign(claims(dev), {"kid": "last"}), "unknown_key")
    assert dev.hits[JWKS] == 3
    assert dev.hits[DISCOVERY] == 1  # a kid miss refetches the JWKS only


async def test_key_rotation_accepted_after_refetch(
    dev: DevIssuer, verifier: IdentityVerifier, clock: Clock
) -> None:
    old_kid = dev.kid
    old = dev.mint("s")
    await verifier.verify(old)
    new_kid = dev.rotate_key()
    assert new_kid != old_kid
    new = dev.mint("s")
    await rejected(verifier, new, "unknown_key")  # fetched moments ago: no refetch yet
    assert dev.hits[JWKS] == 1
    clock.advance(30)
    assert (await verifier.verify(new)).subject == "s"
    assert dev.hits[JWKS] == 2
    assert (await verifier.verify(old)).subject == "s"  # old key still published


async def test_periodic_refresh_in_background(
    dev: DevIssuer, verifier: IdentityVerifier, clock: Clock
) -> None:
    await verifier.verify(dev.mint("s"))
    clock.advance(299)
    await verifier.verify(dev.mint("s"))
    await verifier.settle()
    assert dev.hits[JWKS] == 1
    clock.advance(2)
    await verifier.verify(dev.mint("s"))  # served from cache, refresh scheduled
    await verifier.settle()
    assert dev.hits[DISCOVERY] == 2 and dev.hits[JWKS] == 2


async def test_cached_keys_survive_idp_outage(
    dev: DevIssuer, verifier: IdentityVerifier, clock: Clock
) -> None:
    token = dev.mint("s", ttl=3600)
    await verifier.verify(token)
    await dev.stop()
    clock.advance(301)
    await verifier.verify(token)  # background refresh fails…
    await verifier.settle()
    assert (await verifier.verify(token)).subject == "s"  # …and the cached keys stay
    await rejected(verifier, dev.sign(claims(dev), {"kid": "rotated?"}), "unknown_key")


async def test_idp_unreachable_fails_closed(tmp_path: Path, clock: Clock) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    offline = DevIssuer(tmp_path / "offline", url)
    v = IdentityVerifier([IssuerConfig(url=url, audience="hoopy")], clock=clock, http_timeout=2)
    try:
        token = offline.mint("s")
        err = await rejected(v, token, "idp_unreachable")
        assert "unreachable" in err.message
        await rejected(v, token, "idp_unreachable")  # within the gap: not even retried
    finally:
        await v.close()


async def test_idp_recovers_after_gap(tmp_path: Path, clock: Clock) -> None:
    port = closed_port()
    folder = tmp_path / "late"
    late = DevIssuer(folder, f"http://127.0.0.1:{port}")
    v = IdentityVerifier([issuer_config(late)], clock=clock)
    try:
        token = late.mint("s")
        await rejected(v, token, "idp_unreachable")
        await late.start("127.0.0.1", port)
        await rejected(v, token, "idp_unreachable")  # failed attempt moments ago
        assert late.hits.total() == 0
        clock.advance(30)
        assert (await v.verify(token)).subject == "s"
    finally:
        await v.close()
        await late.stop()


async def test_discovery_must_name_the_configured_issuer(dev: DevIssuer, clock: Clock) -> None:
    # Same server, but reached under another name: discovery says it is someone else.
    alias = dev.issuer_url.replace("127.0.0.1", "localhost")
    v = IdentityVerifier([IssuerConfig(url=alias, audience="hoopy")], clock=clock)
    try:
        await rejected(v, dev.mint("s", extra={"iss": alias}), "idp_unreachable")
        assert dev.hits[DISCOVERY] == 1 and dev.hits[JWKS] == 0
    finally:
        await v.close()


class _PlainJwksIssuer(DevIssuer):
    """An issuer whose discovery sends the key fetch over plain http:// to another host."""

    def discovery(self) -> dict[str, Any]:
        return {**super().discovery(), "jwks_uri": "http://jwks.example.invalid/jwks.json"}


@pytest.mark.parametrize("allow", [False, True])
async def test_plain_http_jwks_uri_off_loopback_is_refused(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture, allow: bool
) -> None:
    """Issue 16: whoever sits on that path could serve their own keys.  Refused (and
    the log says why) unless the issuer's config says allow_insecure_http."""
    issuer = _PlainJwksIssuer(tmp_path / "plain", "http://127.0.0.1:0")
    await issuer.start("127.0.0.1", 0)
    v = IdentityVerifier([issuer_config(issuer, allow_insecure_http=allow)], clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="hoopy.identity"):
            await rejected(v, issuer.mint("s"), "idp_unreachable")
        refused = "is plain http:// to a host other than loopback" in caplog.text
        assert refused == (not allow), caplog.text
        assert "allow_insecure_http" in caplog.text or allow
    finally:
        await v.close()
        await issuer.stop()


async def test_plain_http_issuer_off_loopback_is_not_fetched(
    clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """Even built without hoopy.config (which refuses it), the verifier will not fetch
    discovery over plain http:// from another host."""
    url = "http://idp.example.invalid"
    v = IdentityVerifier([IssuerConfig(url=url, audience="hoopy")], clock=clock)
    try:
        with caplog.at_level(logging.WARNING, logger="hoopy.identity"):
            token = jwt.encode(
                {"alg": "ES256", "kid": "k"},
                {"iss": url, "aud": "hoopy", "sub": "s", "exp": int(time.time()) + 60},
                ECKey.generate_key("P-256", private=True),
            )
            await rejected(v, token, "idp_unreachable")
        assert "issuer URL is plain http://" in caplog.text
    finally:
        await v.close()
