"""OIDC token validation: discovery, a JWKS cache per issuer, and JWT checks → Identity.

Theory of operation
-------------------
A token is a JWS compact serialization.  `verify()` parses it *without* trusting it, picks
the configured issuer whose url equals the unverified `iss` claim exactly, and only then
looks for a key: the issuer's JWKS, fetched through OIDC discovery
(`{url}/.well-known/openid-configuration` → `jwks_uri`) and cached.  The signature is
checked with joserfc against the JWK whose `kid` matches the header (or, without a `kid`,
each key of a compatible type).  Only after the signature holds are the claims checked
(iss, aud, exp, nbf, iat, sub), so claim-based answers are only given for authentic tokens.

Algorithms come from the issuer's allow-list and symmetric ones (`none`, `HS*`) are refused
whatever the config says: with a public JWKS, HMAC would mean "signed with the public key".

Key cache: the first use fetches the keys; a `kid` missing from the cache triggers a
refetch, and every fetch attempt (successful or not) is spaced by at least
`min_refresh_gap` per issuer, so garbage `kid`s or an IdP outage cannot make us hammer the
IdP.  After `refresh_interval` a use schedules a background refresh while the cached keys
keep serving.  A failed refresh keeps the cached keys; without any keys we fail closed
(`idp_unreachable`).

Errors are `AuthError(reason, message)`: the message is safe to show to the client and never
contains the token; any unexpected exception also becomes an AuthError (never fail open).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import aiohttp
from joserfc import jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import JWKRegistry, Key

from hoopy.config import IssuerConfig, insecure_http
from hoopy.policy import Identity

log = logging.getLogger("hoopy.identity")

MAX_TOKEN_LENGTH = 16 * 1024
MAX_DOCUMENT_BYTES = 1024 * 1024  # discovery documents and JWKS
# Never acceptable with keys published in a JWKS, whatever the config lists.
FORBIDDEN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512"})

_MESSAGES = {
    "malformed": "token is malformed",
    "algorithm": "token algorithm is not allowed",
    "unknown_issuer": "token issuer is not trusted",
    "unknown_key": "token is signed with an unknown key",
    "bad_signature": "token signature is invalid",
    "expired": "token has expired",
    "not_yet_valid": "token is not valid yet",
    "audience": "token audience does not match",
    "missing_claim": "token lacks a required claim",
    "idp_unreachable": "identity provider is unreachable; cannot verify the token",
    "internal": "token could not be verified",
}


class AuthError(Exception):
    """A rejected token.  `reason` is a short machine code, `message` is safe for clients."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        self.message = message or _MESSAGES.get(reason, "token rejected")
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"AuthError({self.reason!r}, {self.message!r})"


def token_fingerprint(token: str) -> str:
    """What may be logged or recorded about a token: a short hash, never the token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()[:16]


# --------------------------------------------------------------------------- key cache


class _IssuerKeys:
    """The cached JWKS of one issuer and the rules for when it may be fetched again."""

    def __init__(self, cfg: IssuerConfig, verifier: IdentityVerifier) -> None:
        self.cfg = cfg
        self.v = verifier
        self.base = cfg.url.rstrip("/")
        self.keys: list[Key] = []
        self.jwks_uri: str | None = None
        self.fetched_at: float | None = None  # last successful fetch
        self.attempted_at: float | None = None  # last attempt, successful or not
        self.lock = asyncio.Lock()
        self.background: asyncio.Task[None] | None = None

    async def candidates(self, kid: str | None, alg: str) -> list[Key]:
        """Keys that may have signed a token with this header; fetches as the rules allow."""
        if self.fetched_at is None:
            await self.refresh(discovery=True)
            if self.fetched_at is None:
                raise AuthError("idp_unreachable")
        else:
            self._maybe_schedule()
        found = self._match(kid, alg)
        if not found and kid is not None:
            await self.refresh(discovery=False)  # perhaps a rotated key
            found = self._match(kid, alg)
        if not found:
            raise AuthError("unknown_key" if kid is not None else "bad_signature")
        return found

    def _match(self, kid: str | None, alg: str) -> list[Key]:
        keys = self.keys if kid is None else [k for k in self.keys if k.kid == kid]
        return [k for k in keys if _compatible(k, alg)]

    def _may_attempt(self, now: float) -> bool:
        return self.attempted_at is None or now - self.attempted_at >= self.v.min_refresh_gap

    def _maybe_schedule(self) -> None:
        now = self.v.clock()
        assert self.fetched_at is not None
        if now - self.fetched_at < self.v.refresh_interval or not self._may_attempt(now):
            return
        if self.background is None or self.background.done():
            self.background = asyncio.create_task(self.refresh(discovery=True))
            self.v._track(self.background)

    async def refresh(self, discovery: bool) -> None:
        """Fetch the keys unless an attempt was made within `min_refresh_gap`.

        Never raises: a failure is logged and the cached keys stay in use.
        """
        async with self.lock:
            now = self.v.clock()
            if not self._may_attempt(now):
                return
            self.attempted_at = now
            try:
                if discovery or self.jwks_uri is None:
                    self.jwks_uri = await self._discover()
                self.keys = _import_jwks(await self.v._get_json(self.jwks_uri))
                self.fetched_at = now
            except asyncio.CancelledError:
                raise
            except Exception as e:  # network, HTTP status, JSON, key import …
                log.warning(
                    "cannot fetch signing keys of issuer %s: %s%s",
                    self.cfg.url,
                    type(e).__name__,
                    f" ({e})" if isinstance(e, ValueError) else "",
                )

    async def _discover(self) -> str:
        if insecure_http(self.base) and not self.cfg.allow_insecure_http:  # config refuses it
            raise ValueError("issuer URL is plain http:// to a host other than loopback")
        doc = await self.v._get_json(self.base + "/.well-known/openid-configuration")
        if doc.get("issuer") != self.cfg.url:
            raise ValueError(f"discovery names issuer {str(doc.get('issuer'))[:200]!r}")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise ValueError("discovery document has no usable jwks_uri")
        if insecure_http(uri) and not self.cfg.allow_insecure_http:
            raise ValueError(
                f"discovery's jwks_uri {uri[:200]!r} is plain http:// to a host other than "
                "loopback (anyone on the path could swap the keys); refused: serve it over "
                "https:// or set allow_insecure_http: true for this issuer"
            )
        return uri


def _import_jwks(doc: dict[str, Any]) -> list[Key]:
    """Public signing keys of a JWKS; keys we cannot use are skipped, not fatal."""
    raw = doc.get("keys")
    if not isinstance(raw, list):
        raise ValueError("JWKS has no 'keys' list")
    keys: list[Key] = []
    for item in raw:
        if (
            not isinstance(item, dict)
            or item.get("kty") == "oct"
            or item.get("use", "sig") != "sig"
        ):
            continue
        try:
            keys.append(JWKRegistry.import_key(item))
        except (JoseError, ValueError, TypeError, KeyError):
            continue
    if not keys:
        raise ValueError("JWKS has no usable signing keys")
    return keys


def _compatible(key: Key, alg: str) -> bool:
    if key.alg is not None and key.alg != alg:
        return False
    try:
        jws.JWSRegistry.algorithms[alg].check_key(key)
    except (JoseError, KeyError):
        return False
    return True


# --------------------------------------------------------------------------- verifier


class IdentityVerifier:
    """Verifies bearer tokens from the configured OIDC issuers."""

    def __init__(
        self,
        issuers: Sequence[IssuerConfig],
        *,
        refresh_interval: float = 300.0,
        min_refresh_gap: float = 30.0,
        http_timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.refresh_interval = refresh_interval
        self.min_refresh_gap = min_refresh_gap
        self.http_timeout = http_timeout
        self.clock = clock
        self._issuers = {cfg.url: _IssuerKeys(cfg, self) for cfg in issuers}
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def verify(self, token: str) -> Identity:
        """The identity a token proves, or AuthError.  Never fails open."""
        try:
            return await self._verify(token)
        except AuthError as e:
            if isinstance(token, str):
                log.debug("token %s rejected: %s", token_fingerprint(token), e.reason)
            raise
        except Exception as e:
            # Only the type: exception text from parsers might quote token bytes.
            log.error("unexpected %s while verifying a token", type(e).__name__)
            raise AuthError("internal") from None

    async def _verify(self, token: str) -> Identity:
        if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
            raise AuthError("malformed")
        token = token.strip()
        obj, header, claims = _parse(token)
        alg = header["alg"]
        if not isinstance(alg, str) or alg in FORBIDDEN_ALGORITHMS:
            raise AuthError("algorithm")
        iss = claims.get("iss")
        issuer = self._issuers.get(iss) if isinstance(iss, str) else None
        if issuer is None:
            raise AuthError("unknown_issuer")
        if alg not in issuer.cfg.algorithms:
            raise AuthError("algorithm")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise AuthError("malformed")
        keys = await issuer.candidates(kid, alg)
        _check_signature(obj, keys, alg)
        now = self.clock()
        _check_claims(claims, issuer.cfg, now)
        return Identity(
            subject=claims["sub"],
            groups=_groups(claims, issuer.cfg.groups_claim),
            issuer=issuer.cfg.url,
            token_fingerprint=token_fingerprint(token),
            expires_at=float(claims["exp"]),
        )

    async def refresh(self) -> None:
        """Refetch every issuer's keys now (subject to `min_refresh_gap`)."""
        await asyncio.gather(*(i.refresh(discovery=True) for i in self._issuers.values()))

    async def settle(self) -> None:
        """Wait for background key refreshes in flight (tests, orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _get_json(self, url: str) -> dict[str, Any]:
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.http_timeout)
            )
        async with self._http.get(url, headers={"Accept": "application/json"}) as resp:
            if resp.status != 200:
                raise ValueError(f"GET {url}: HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"GET {url}: document too large")
        doc = json.loads(bytes(body))
        if not isinstance(doc, dict):
            raise ValueError(f"GET {url}: not a JSON object")
        return doc


# --------------------------------------------------------------------------- pure checks


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")  # NaN / Infinity would dodge exp checks


def _parse(token: str) -> tuple[jws.CompactSignature, dict[str, Any], dict[str, Any]]:
    """Split and decode without trusting anything; every failure is `malformed`."""
    try:
        obj = jws.extract_compact(token.encode("ascii"))
        header = obj.headers()
        claims = json.loads(obj.payload, parse_constant=_reject_constant)
    except (JoseError, ValueError, TypeError, UnicodeError, RecursionError):
        raise AuthError("malformed") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise AuthError("malformed")
    # We understand no critical extensions; b64=false (RFC 7797) is not a JWT.
    if "crit" in header or "b64" in header:
        raise AuthError("malformed")
    return obj, header, claims


def _check_signature(obj: jws.CompactSignature, keys: Iterable[Key], alg: str) -> None:
    registry = jws.JWSRegistry(algorithms=[alg], strict_check_header=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SecurityWarning)  # "EdDSA is deprecated" on each call
        for key in keys:
            try:
                if jws.validate_compact(obj, key, registry=registry):
                    return
            except JoseError:
                continue
    raise AuthError("bad_signature")


def _numeric(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, bool) and isinstance(value, int | float):
        with contextlib.suppress(OverflowError):  # a 400-digit integer is no date
            if math.isfinite(value):
                return float(value)
    raise AuthError("malformed", f"token claim '{name}' is not a NumericDate")


def _check_claims(claims: dict[str, Any], cfg: IssuerConfig, now: float) -> None:
    if claims.get("iss") != cfg.url:
        raise AuthError("unknown_issuer")
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if cfg.audience not in audiences:
        raise AuthError("audience", f"token audience does not include '{cfg.audience}'")
    exp = _numeric(claims, "exp")
    if exp is None:
        raise AuthError("missing_claim", "token has no 'exp' claim")
    if exp <= now - cfg.leeway:
        raise AuthError("expired")
    for name in ("nbf", "iat"):
        at = _numeric(claims, name)
        if at is not None and at > now + cfg.leeway:
            raise AuthError("not_yet_valid", f"token '{name}' is in the future")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub:
        raise AuthError("missing_claim", "token has no 'sub' claim")


def _groups(claims: dict[str, Any], claim: str) -> frozenset[str]:
    """Groups from the configured claim: a list of strings or one string.

    A dotted name (`realm_access.roles`) walks nested objects when no claim has that
    literal name.
    """
    value: Any = claims.get(claim)
    if value is None and "." in claim:
        value = claims
        for part in claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, str):
        return frozenset([value])
    if isinstance(value, list):
        return frozenset(v for v in value if isinstance(v, str))
    return frozenset()
