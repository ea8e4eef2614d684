"""DevIssuer: key file handling, minted tokens, discovery and JWKS over HTTP, parse_ttl."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import aiohttp
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from hoopy.devissuer import KEY_FILE, DevIssuer, _with_port, _write_key, parse_ttl
from tests.oidc_helpers import running_issuer


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_key_file_is_private_and_reused(tmp_path: Path) -> None:
    state = tmp_path / "does" / "not" / "exist"
    first = DevIssuer(state, "http://127.0.0.1:1")
    key_file = state / KEY_FILE
    assert mode(key_file) == 0o600
    assert "d" in json.loads(key_file.read_text())  # it is the private key
    second = DevIssuer(state, "http://127.0.0.1:2")
    assert second.kid == first.kid
    # a token minted by one instance verifies with the other's public keys
    token = first.mint("s")
    public = ECKey.import_key(second.jwks()["keys"][0])
    assert jwt.decode(token, public, algorithms=["ES256"]).claims["sub"] == "s"
    assert not [p for p in state.iterdir() if p.name != KEY_FILE]  # no temp files left


def test_loose_key_file_permissions_are_tightened(tmp_path: Path) -> None:
    kid = DevIssuer(tmp_path, "http://x:1").kid
    os.chmod(tmp_path / KEY_FILE, 0o644)
    assert DevIssuer(tmp_path, "http://x:1").kid == kid
    assert mode(tmp_path / KEY_FILE) == 0o600


def test_key_creation_never_overwrites(tmp_path: Path) -> None:
    kid = DevIssuer(tmp_path, "http://x:1").kid
    with pytest.raises(FileExistsError):
        _write_key(tmp_path / KEY_FILE, ECKey.generate_key("P-256", private=True), replace=False)
    assert DevIssuer(tmp_path, "http://x:1").kid == kid


def test_kid_is_the_thumbprint_and_jwks_is_public(tmp_path: Path) -> None:
    dev = DevIssuer(tmp_path, "http://x:1")
    keys = dev.jwks()["keys"]
    assert len(keys) == 1
    assert keys[0]["kid"] == dev.kid == ECKey.import_key(keys[0]).thumbprint()
    assert keys[0]["alg"] == "ES256" and keys[0]["use"] == "sig" and keys[0]["crv"] == "P-256"
    assert "d" not in keys[0]


def test_minted_claims(tmp_path: Path) -> None:
    dev = DevIssuer(tmp_path, "http://issuer.test:9/", audience="aud-x", groups_claim="roles")
    token = dev.mint("agent-1", ["a", "b"], ttl=120, extra={"email": "a@b.c"})
    public = ECKey.import_key(dev.jwks()["keys"][0])
    decoded = jwt.decode(token, public, algorithms=["ES256"])
    c = decoded.claims
    assert decoded.header["kid"] == dev.kid and decoded.header["alg"] == "ES256"
    assert c["iss"] == "http://issuer.test:9" == dev.issuer_url  # trailing slash dropped
    assert c["aud"] == "aud-x" and c["sub"] == "agent-1" and c["roles"] == ["a", "b"]
    assert c["exp"] - c["iat"] == 120 and c["nbf"] == c["iat"]
    assert abs(c["iat"] - time.time()) < 5
    assert c["email"] == "a@b.c"
    assert jwt.decode(dev.mint("agent-1"), public).claims["jti"] != c["jti"]


def test_rotation_publishes_old_and_new_and_persists(tmp_path: Path) -> None:
    dev = DevIssuer(tmp_path, "http://x:1")
    old = dev.kid
    new = dev.rotate_key()
    assert new == dev.kid != old
    assert [k["kid"] for k in dev.jwks()["keys"]] == [new, old]
    assert all("d" not in k for k in dev.jwks()["keys"])
    assert DevIssuer(tmp_path, "http://x:1").kid == new
    assert mode(tmp_path / KEY_FILE) == 0o600


async def test_serves_discovery_and_jwks(tmp_path: Path) -> None:
    async with running_issuer(tmp_path) as dev:
        port = int(dev.issuer_url.rsplit(":", 1)[1])
        assert port != 0 and dev.issuer_url == f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            url = dev.issuer_url + "/.well-known/openid-configuration"
            async with http.get(url) as resp:
                doc = await resp.json()
            assert doc["issuer"] == dev.issuer_url
            assert doc["jwks_uri"] == dev.issuer_url + "/jwks.json"
            assert doc["id_token_signing_alg_values_supported"] == ["ES256"]
            async with http.get(doc["jwks_uri"]) as resp:
                jwks = await resp.json()
            assert jwks == dev.jwks()
            assert all("d" not in k for k in jwks["keys"])
        assert dev.hits["/jwks.json"] == 1
    # stopped: nothing listens any more
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(dev.issuer_url + "/jwks.json")


async def test_explicit_port_keeps_the_url(tmp_path: Path) -> None:
    async with running_issuer(tmp_path) as probe:
        taken = int(probe.issuer_url.rsplit(":", 1)[1])
    dev = DevIssuer(tmp_path, f"http://127.0.0.1:{taken}")
    assert await dev.start("127.0.0.1", taken) == taken
    try:
        assert dev.issuer_url == f"http://127.0.0.1:{taken}"
    finally:
        await dev.stop()


def test_with_port() -> None:
    assert _with_port("http://127.0.0.1:0", 5) == "http://127.0.0.1:5"
    assert _with_port("http://[::1]:0/base", 5) == "http://[::1]:5/base"
    assert _with_port("http://127.0.0.1:8081", 5) == "http://127.0.0.1:8081"
    assert _with_port("https://idp.example", 5) == "https://idp.example"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("900", 900), ("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1.5h", 5400),
     (" 10M ", 600)],
)  # fmt: skip
def test_parse_ttl(text: str, seconds: float) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["", "m", "15x", "-5m", "0", "0s", "1h30m", "abc", "1e3"])
def test_parse_ttl_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)
