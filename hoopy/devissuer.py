"""Built-in development OIDC issuer, for `hoopy demo`, `hoopy token mint` and tests.

Never for production: whoever can read the key file can mint any identity.

Theory of operation
-------------------
One EC P-256 key signs ES256 tokens.  It lives as private JWK JSON in
`state_dir/dev-issuer-key.json` (mode 0600) so that `hoopy token mint` in one process and
the issuer served by `hoopy serve` in another agree on it; the first to need the file
creates it atomically (write a temp file, then hard-link it into place) so two processes
starting together cannot end up with different keys.  `kid` is the key's RFC 7638
thumbprint.

The HTTP side serves what a relying party needs: `/.well-known/openid-configuration` and
`/jwks.json` (public keys only).  The issuer url is fixed at construction; a url with port 0
(`http://127.0.0.1:0`) is completed by `start()` with the port the OS chose, and
`issuer_url` then reads the real url — build IssuerConfigs and mint tokens after start().

`rotate_key()` replaces the signing key (file included) and keeps publishing the previous
public keys, as a real IdP does during rotation.  `hits` counts requests per path.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey

from hoopy.httpguard import GuardedAppRunner

if TYPE_CHECKING:
    from hoopy.config import Config

KEY_FILE = "dev-issuer-key.json"
ALGORITHM = "ES256"

_TTL = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_ttl(text: str) -> float:
    """'900' / '30s' / '15m' / '2h' / '1d' → seconds.  ValueError on anything else."""
    m = _TTL.fullmatch(text)
    if m is None:
        raise ValueError(f"invalid duration {text!r}: use e.g. 900, 30s, 15m, 2h, 1d")
    seconds = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be positive")
    return seconds


def _load_or_create_key(path: Path) -> ECKey:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not path.exists():
        key = ECKey.generate_key("P-256", private=True)
        with contextlib.suppress(FileExistsError):  # another process won the race: use its key
            _write_key(path, key, replace=False)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return _with_kid(ECKey.import_key(json.loads(path.read_text())))


def _with_kid(key: ECKey) -> ECKey:
    data = key.as_dict(private=True)
    data.update(kid=key.thumbprint(), alg=ALGORITHM, use="sig")
    return ECKey.import_key(data)


def _write_key(path: Path, key: ECKey, *, replace: bool) -> None:
    """Write the private JWK with mode 0600; atomic, so readers never see half a key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            json.dump(key.as_dict(private=True), f)
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file appeared meanwhile
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class DevIssuer:
    """A minimal OIDC issuer: signs tokens and serves discovery + JWKS."""

    def __init__(
        self,
        state_dir: Path,
        issuer_url: str,
        audience: str = "hoopy",
        groups_claim: str = "groups",
    ) -> None:
        self.key_path = Path(state_dir) / KEY_FILE
        self._url = issuer_url.rstrip("/")
        self.audience = audience
        self.groups_claim = groups_claim
        self._key = _load_or_create_key(self.key_path)
        self._retired: list[ECKey] = []  # previous keys, still published after rotation
        self._runner: web.AppRunner | None = None
        self.hits: collections.Counter[str] = collections.Counter()

    @classmethod
    def from_config(cls, config: Config) -> DevIssuer:
        """The issuer `config.dev_issuer` describes (its key in the state folder)."""
        d = config.dev_issuer
        if d is None:
            raise ValueError("the config has no dev_issuer")
        return cls(
            config.state_dir,
            f"http://{d.listen.host}:{d.listen.port}",
            audience=d.audience,
            groups_claim=d.groups_claim,
        )

    @property
    def issuer_url(self) -> str:
        return self._url

    @property
    def kid(self) -> str:
        return str(self._key.kid)

    # ----------------------------------------------------------------- tokens

    def mint(
        self,
        sub: str,
        groups: Sequence[str] = (),
        ttl: float = 900.0,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """A signed token; `extra` claims are added last and may override the standard ones."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self._url,
            "aud": self.audience,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": int(now + ttl),
            "jti": secrets.token_urlsafe(16),
            self.groups_claim: list(groups),
        }
        claims.update(extra or {})
        return self.sign(claims)

    def sign(self, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
        """Sign arbitrary claims with the issuer key (tests craft hostile tokens with it)."""
        return jwt.encode(
            {"alg": ALGORITHM, "kid": self.kid, **(header or {})},
            claims,
            self._key,
            algorithms=[ALGORITHM],
        )

    def jwks(self) -> dict[str, Any]:
        """The public keys, current first.  Never any private part."""
        keys = [self._key, *self._retired]
        return {"keys": [dict(k.as_dict(private=False)) for k in keys]}

    def rotate_key(self) -> str:
        """Sign with a fresh key from now on; the old public key stays published.  → new kid."""
        new = _with_kid(ECKey.generate_key("P-256", private=True))
        _write_key(self.key_path, new, replace=True)
        self._retired.insert(0, self._key)
        self._key = new
        return self.kid

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self._url,
            "jwks_uri": self._url + "/jwks.json",
            "id_token_signing_alg_values_supported": [ALGORITHM],
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "claims_supported": ["iss", "aud", "sub", "exp", "iat", "nbf", self.groups_claim],
        }

    # ----------------------------------------------------------------- HTTP

    def app(self) -> web.Application:
        @web.middleware
        async def count(
            request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
        ) -> web.StreamResponse:
            self.hits[request.path] += 1
            return await handler(request)

        async def discovery(_: web.Request) -> web.Response:
            return web.json_response(self.discovery())

        async def jwks(_: web.Request) -> web.Response:
            return web.json_response(self.jwks())

        app = web.Application(middlewares=[count])
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks.json", jwks)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Serve on host:port (0 → any free port); returns the bound port.

        If the issuer url was given with port 0 it now names the bound port.
        """
        runner = GuardedAppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound = int(runner.addresses[0][1])
        self._url = _with_port(self._url, bound)
        return bound

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _with_port(url: str, port: int) -> str:
    """Replace an explicit port 0 in url with port; other urls are returned unchanged."""
    parts = urlsplit(url)
    if parts.port != 0:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))
