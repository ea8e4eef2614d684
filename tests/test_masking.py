"""Value detectors, masking styles, JSON walking and column rules (hoopy.masking)."""

from __future__ import annotations

import base64
import json
import os
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hoopy import configpolicy
from hoopy.masking import (
    DETECTORS,
    REDACTED,
    ValueMasker,
    column_matches,
    iban_ok,
    keyed_hash,
    luhn_ok,
    mask_whole,
    redact_value,
)

ALL = ValueMasker(list(DETECTORS))
SETTINGS = settings(
    max_examples=int(os.environ.get("MASKING_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def b64url(obj: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


JWT = (
    b64url({"alg": "RS256", "typ": "JWT", "kid": "k1"})
    + "."
    + b64url({"sub": "alice", "aud": "hoopy", "exp": 1_700_000_000})
    + ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5cZ8lP0oQ"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n"
    "aFDrBz9vFqU4yS4yS4ySAKIAIOSFODNN7EXAMPLEalice@example.com0123456789\n"
    "-----END RSA PRIVATE KEY-----"
)

# Every detector: values it must find, and look-alikes it must leave alone.
CASES: dict[str, tuple[list[str], list[str]]] = {
    "email": (
        ["alice@example.com", "a.b+tag@mail.example.co.uk", "x_y-z%1@sub.domain.io"],
        ["alice@localhost", "@example.com", "user@", "a@b.c", "a@example.c0m"],
    ),
    "credit_card": (
        [
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "340000000000009",
            "4111111111111111",
            "3782 822463 10005",
            "6011111111111117",
            "4222222222222",
        ],
        [
            "4111111111111112",  # a 16-digit order number that fails Luhn
            "1234567890123456",
            "1700000000000",  # a millisecond timestamp (starts with 1)
            "0000000000000000",  # Luhn-valid but no network starts with 0
            "4111 1111 1111",  # too short
            "a6647483944882f",  # digits inside a hex id
            "4111-1111 1111-1111",  # mixed separators
        ],
    ),
    "ssn": (
        ["123-45-6789", "001-01-0001", "899-99-9999"],
        [
            "000-12-3456",
            "666-12-3456",
            "900-12-3456",
            "987-65-4321",
            "123-00-4567",
            "123-45-0000",
            "123456789",
            "1123-45-6789",
            "123-45-67890",
        ],
    ),
    "phone": (
        [
            "(415) 555-0134",
            "415-555-0134",
            "415.555.0134",
            "1-415-555-0134",
            "+14155550134",
            "+44 20 7946 0958",
            "+49 (30) 1234 5678",
        ],
        [
            "4155550134",  # a plain integer
            "2024-01-15",
            "12/31/2024",
            "1.2.3",
            "10:30:00",
            "3.14159265",
            "555-0134",  # no area code
            "+0123456789",
            "+1234",
            "015-555-0134",  # area codes start with 2-9
        ],
    ),
    "iban": (
        ["GB82 WEST 1234 5698 7654 32", "GB82WEST12345698765432", "DE89370400440532013000"],
        ["GB82 WEST 1234 5698 7654 33", "GB83WEST12345698765432", "gb82west12345698765432"],
    ),
    "ipv4": (
        ["10.0.0.1", "192.168.100.254", "8.8.8.8", "1.2.3.4"],
        ["999.1.1.1", "10.0.0.256", "v1.2.3.4", "1.2.3.4.5", "1.2.3", "01.2.3.4", "3.14"],
    ),
    "ipv6": (
        ["2001:db8::8a2e:370:7334", "fe80::1%eth0", "2001:0db8:0000:0000:0000:ff00:0042:8329"],
        ["::1", "::", "std::vector", "a[1::2]", "12:34:56", "00:1a:2b:3c:4d:5e", "1:2:3"],
    ),
    "jwt": (
        [JWT, b64url({"alg": "none"}) + "." + b64url({"sub": "x"}) + "."],
        ["abc.def.ghi", "eyJub3QiOiJqc29uIn0.eyJzdWIiOiJ4In0.sig", "eyJhbGciOi.x"],
    ),
    "aws_access_key": (
        ["AKIAIOSFODNN7EXAMPLE", "ASIAY34FZKBOKMUTVV7A"],
        ["AKIAIOSFODNN7EXAMPL", "XAKIAIOSFODNN7EXAMPLE", "AKIAiosfodnn7example"],
    ),
    "private_key": (
        [PEM, "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"],
        ["-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqh\n-----END PUBLIC KEY-----"],
    ),
    "api_key": (
        [
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
            "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            "AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe",
            "Zx8Kq2Lm9Vb4Np7Rt3Wy6Hj1",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",  # AWS secret access key shape
        ],
        [
            "getUserById2FactorAuth",
            "AbstractSingletonProxyFactoryBean2",
            "user_profile_settings_v2_table",
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",  # sha256
            "550e8400-e29b-41d4-a716-446655440000",
            "nginx-deployment-66b6c48dd5-4jw2x",
            "ShortTok3n",
            "usr/lib/python3/dist-packages/Foo2",
        ],
    ),
}


def test_detector_names_are_the_ones_config_accepts() -> None:
    assert set(DETECTORS) == set(configpolicy.DETECTORS)
    assert set(CASES) == set(DETECTORS)


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, (pos, _) in CASES.items() for v in pos])
def test_detects(name: str, value: str) -> None:
    masker = ValueMasker([name])
    for text in (value, f"see {value} here", f'{{"v": "{value}"}}'):
        out, counts = masker.mask_text(text)
        assert counts == {name: 1}, text
        assert value not in out


@pytest.mark.parametrize(("name", "value"), [(n, v) for n, (_, neg) in CASES.items() for v in neg])
def test_leaves_look_alikes_alone(name: str, value: str) -> None:
    masker = ValueMasker([name])
    for text in (value, f"see {value} here"):
        assert masker.mask_text(text) == (text, {}), text


def test_version_strings_decision() -> None:
    # A dotted quad that is a valid address is masked even as a version number;
    # v-prefixed, three-part and five-part versions are not.
    out, _ = ValueMasker(["ipv4"]).mask_text("v1.2.3.4 1.2.3 1.2.3.4.5 and 1.2.3.4")
    assert out == "v1.2.3.4 1.2.3 1.2.3.4.5 and ****"


def test_checksums() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and not iban_ok("GB82 WEST 1234 5698 7654 23")


def test_card_followed_by_cvv_and_phone_after_a_digit() -> None:
    out, counts = ALL.mask_text("card 4111 1111 1111 1111 123 exp 12/25")
    assert "4111" not in out and counts["credit_card"] == 1
    out, counts = ALL.mask_text("room 2 415-555-0134")
    assert out == "room 2 ****" and counts == {"phone": 1}


def test_a_failed_candidate_does_not_hide_an_overlapping_value() -> None:
    # "1234 4111 1111 1111" fails Luhn; the card starting one group later is found.
    assert ALL.mask_text("ref 1234 4111 1111 1111 1111") == ("ref 1234 ****", {"credit_card": 1})


def test_private_key_block_masked_whole() -> None:
    text = f"key:\n{PEM}\ndone"
    out, counts = ALL.mask_text(text)
    assert out == "key:\n****\ndone"
    assert counts == {"private_key": 1}  # one block, though it contains an email and an AWS key
    truncated = "x " + PEM.split("-----END")[0][:80]  # no END line: masked to the end
    assert ALL.mask_text(truncated) == ("x ****", {"private_key": 1})


def test_surrounding_text_is_byte_identical() -> None:
    text = (
        "ünïcode ✓ user=alice@example.com, card=4111 1111 1111 1111;\n"
        "\tip 10.0.0.1 (ok) ssn 123-45-6789\r\n tail 🙂"
    )
    out, counts = ALL.mask_text(text)
    assert out == ("ünïcode ✓ user=****, card=****;\n\tip **** (ok) ssn ****\r\n tail 🙂")
    assert counts == {"email": 1, "credit_card": 1, "ipv4": 1, "ssn": 1}


def test_counts_per_detector() -> None:
    text = "a@example.com b@example.com 10.0.0.1 AKIAIOSFODNN7EXAMPLE " + JWT
    _, counts = ALL.mask_text(text)
    assert counts == {"email": 2, "ipv4": 1, "aws_access_key": 1, "jwt": 1}


def test_only_enabled_detectors_run() -> None:
    masker = ValueMasker(["email"])
    assert masker.mask_text("a@example.com 10.0.0.1") == ("**** 10.0.0.1", {"email": 1})
    assert ValueMasker([]).mask_text("a@example.com") == ("a@example.com", {})


def test_glued_values_are_all_masked() -> None:
    # Masking one value must not leave a neighbour it was glued to readable.
    for text in ("10.0.0.1+14155550134", "alice@example.com.4111111111111111"):
        out, _ = ALL.mask_text(text)
        assert ALL.spans(out) == [], out


def test_partial_style() -> None:
    masker = ValueMasker(list(DETECTORS), style="partial")
    out, _ = masker.mask_text("alice@example.com 4111-1111-1111-1111 123-45-6789 10.0.0.1")
    assert out == "****@example.com **** **** **** 1111 ***-**-6789 ****"


def test_hash_style_is_stable_and_keyed() -> None:
    k1 = ValueMasker(["email"], style="hash", key=b"key-one")
    k2 = ValueMasker(["email"], style="hash", key=b"key-two")
    out, _ = k1.mask_text("alice@example.com bob@example.com alice@example.com")
    a, b, a2 = out.split()
    assert a == a2 != b
    assert a == keyed_hash("alice@example.com", b"key-one")
    assert a.startswith("h:") and len(a) == 18 and all(c in string.hexdigits for c in a[2:])
    assert k2.mask_text("alice@example.com")[0] != a


def test_masker_refuses_bad_configuration() -> None:
    with pytest.raises(ValueError, match="unknown detectors: nope"):
        ValueMasker(["email", "nope"])
    with pytest.raises(ValueError, match="style"):
        ValueMasker(["email"], style="scramble")
    with pytest.raises(ValueError, match="key"):
        ValueMasker(["email"], style="hash")


def test_mask_json_nested() -> None:
    doc: dict[str, Any] = {
        "user": {"email": "alice@example.com", "tags": ["ok", "ip 10.0.0.1"]},
        "alice@example.com": True,  # keys are kept
        "card": 4111111111111111,
        "n": 42,
        "none": None,
    }
    masked, counts = ALL.mask_json(doc)
    assert masked == {
        "user": {"email": "****", "tags": ["ok", "ip ****"]},
        "alice@example.com": True,
        "card": "****",
        "n": 42,
        "none": None,
    }
    assert counts == {"email": 1, "ipv4": 1, "credit_card": 1}
    assert doc["user"]["email"] == "alice@example.com"  # input untouched


def test_mask_json_text() -> None:
    text = '{"a": {"email": "alice@example.com", "n": [1, 2.5, "ok"]}}'
    out, counts = ALL.mask_json_text(text)
    assert out == '{"a":{"email":"****","n":[1,2.5,"ok"]}}' and counts == {"email": 1}
    clean = '{"a": 1,  "b": "x"}'
    assert ALL.mask_json_text(clean) == (clean, {})  # unchanged text comes back as is
    escaped = '{"e": "alice\\u0040example.com"}'  # the escape hides "@" from a raw scan
    assert ALL.mask_json_text(escaped) == ('{"e":"****"}', {"email": 1})
    assert ALL.mask_json_text("not json: alice@example.com") == ("not json: ****", {"email": 1})
    deep = "[" * 100_000 + "]" * 100_000 + " alice@example.com"
    out, counts = ALL.mask_json_text(deep)
    assert "alice" not in out and counts == {"email": 1}


def test_mask_json_deep_nesting_does_not_recurse() -> None:
    doc: object = "alice@example.com"
    for _ in range(5000):
        doc = [doc]
    masked, counts = ALL.mask_json(doc)
    assert counts == {"email": 1}
    for _ in range(5000):
        assert isinstance(masked, list)
        masked = masked[0]
    assert masked == REDACTED


def test_mask_whole() -> None:
    assert mask_whole("anything at all") == REDACTED
    assert mask_whole("alice@example.com", "partial") == "****@example.com"
    assert mask_whole("4111-1111-1111-1111", "partial") == "**** **** **** 1111"
    assert mask_whole("123-45-6789", "partial") == "***-**-6789"
    assert mask_whole("Alice Smith", "partial") == REDACTED
    h = mask_whole("Alice Smith", "hash", b"k")
    assert h == mask_whole("Alice Smith", "hash", b"k") != mask_whole("Alice Smith", "hash", b"j")
    with pytest.raises(ValueError):
        mask_whole("x", "hash")
    with pytest.raises(ValueError):
        mask_whole("x", "rot13")


def test_redact_value_by_type() -> None:
    assert redact_value("text") == REDACTED
    assert redact_value("numeric") is None
    assert redact_value("numeric", numeric="zero") == "0"
    assert redact_value("json") == '"****"'
    assert redact_value("date") is None


@pytest.mark.parametrize(
    ("patterns", "table", "column", "expected"),
    [
        (["customers.email"], "customers", "email", True),
        (["customers.email"], "public.customers", "EMAIL", True),
        (["Customers.Email"], "CUSTOMERS", "email", True),
        (["customers.email"], "orders", "email", False),
        (["customers.email"], "customers", "email_verified", False),
        (["customers.email"], None, "email", True),  # lineage unknown: mask
        (["*.ssn"], "anything", "ssn", True),
        (["*.ssn"], None, "ssn", True),
        (["*.ssn"], "people", "ssn_hash", False),
        (["public.customers.email"], "public.customers", "email", True),
        (["public.customers.email"], "crm.customers", "email", False),
        (["public.customers.email"], "customers", "email", True),  # schema unknown
        (["email"], "t", "email", True),
        (["customers.*"], "customers", "whatever", True),
        (["cust*.e?ail"], "customers", "email", True),
        (["a.b", "customers.ssn"], "customers", "ssn", True),
        ([], "customers", "ssn", False),
    ],
)
def test_column_matches(
    patterns: list[str], table: str | None, column: str, expected: bool
) -> None:
    assert column_matches(patterns, table, column) is expected


def test_pathological_inputs_stay_linear() -> None:
    # Each would take seconds with per-position regex attempts (or a quadratic scan).
    for text in ("a@" * 20_000, "::" * 50_000, "0000 " * 10_000, "ab/" * 20_000, "1." * 50_000):
        out, _ = ALL.mask_text(text)
        assert len(out) <= len(text)


# ---------------------------------------------------------------- properties

_VALUES = [v for pos, _ in CASES.values() for v in pos if len(v) < 80]
_NEAR = [v for _, neg in CASES.values() for v in neg]
_BITS = [" ", "\n", "-", ".", ":", "@", "+", "(", ")", "/", "_", "=", ",", '"', "1", "a", "Z", "é"]
fragments = st.lists(
    st.one_of(st.sampled_from(_VALUES), st.sampled_from(_NEAR), st.sampled_from(_BITS), st.text()),
    max_size=12,
).map("".join)


@SETTINGS
@given(fragments)
def test_redacted_output_has_nothing_left_to_find(text: str) -> None:
    out, counts = ALL.mask_text(text)
    assert ALL.mask_text(out) == (out, {})
    assert sum(counts.values()) >= len(ALL.spans(text))


@SETTINGS
@given(fragments, st.sampled_from(["partial", "hash"]))
def test_other_styles_leave_nothing_to_find(text: str, style: str) -> None:
    masker = ValueMasker(list(DETECTORS), style=style, key=b"k")
    out, _ = masker.mask_text(text)
    assert masker.spans(out) == []


@SETTINGS
@given(fragments)
def test_needles_find_everything_the_exhaustive_scan_finds(text: str) -> None:
    fast = {i for s, e, _ in ALL.spans(text) for i in range(s, e)}
    slow = {i for s, e, _ in ALL.spans(text, exhaustive=True) for i in range(s, e)}
    assert slow <= fast


_UNBOUNDED = set(CASES["private_key"][0])  # masks to the end of the text without an END line


@SETTINGS
@given(
    st.text(),
    st.sampled_from(sorted(set(_VALUES) - _UNBOUNDED)),
    st.sampled_from(["\n", ", ", '"', ";", "\t", " | "]),
    st.text(),
)
def test_text_around_a_value_is_kept(prefix: str, value: str, sep: str, suffix: str) -> None:
    assume(ALL.spans(prefix) == [] and ALL.spans(suffix) == [])
    out, counts = ALL.mask_text(prefix + sep + value + sep + suffix)
    assert out == prefix + sep + REDACTED + sep + suffix
    assert sum(counts.values()) == 1


@SETTINGS
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text() | st.sampled_from(_VALUES),
        lambda kids: (
            st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=5), kids, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_json_round_trip_never_raises_and_masks_leaves(doc: object) -> None:
    text = json.dumps(doc)
    out, counts = ALL.mask_json_text(text)
    if not counts:
        assert out == text
    else:
        for leaf in _leaves(json.loads(out)):
            assert not isinstance(leaf, str) or ALL.spans(leaf) == []


def _leaves(doc: object) -> list[object]:
    if isinstance(doc, dict):
        return [x for v in doc.values() for x in _leaves(v)]
    if isinstance(doc, list):
        return [x for v in doc for x in _leaves(v)]
    return [doc]
