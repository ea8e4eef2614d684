"""Unit tables for the session-10 Kubernetes review fixes (the integration tests with
real kubectl are in tests/integration/test_kube_attack2.py)."""

from __future__ import annotations

import base64

import pytest

from hoopy.masking import ValueMasker
from hoopy.protocols.kube.bodies import BodyError, Inspector, body_names, reading_op
from hoopy.protocols.kube.commands import command_for
from hoopy.protocols.kube.requestinfo import PathRejected, parse_query, request_info
from hoopy.protocols.kube.strictload import load_yaml

EMAIL = "bob@example.com"


@pytest.mark.parametrize("query", ["watch=0#&watch=1", "a=b#", "#", "x=%23#"])
def test_a_hash_in_the_query_is_refused(query: str) -> None:
    with pytest.raises(PathRejected):
        parse_query(query)


def test_an_encoded_hash_is_a_value() -> None:
    assert parse_query("fieldSelector=metadata.name%3Da%23b") == {
        "fieldSelector": ["metadata.name=a#b"]
    }


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2024-01-01", "2024-01-01"),
        ("2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00"),
        ("2001-12-14 21:59:43.10 -5", "2001-12-14 21:59:43.10 -5"),
        ("!!timestamp 2024-01-01", "2024-01-01"),
        ("'2024-01-01'", "2024-01-01"),
    ],
)
def test_a_yaml_timestamp_is_its_text(text: str, want: str) -> None:
    assert load_yaml(f"metadata: {{name: {text}}}".encode()) == {"metadata": {"name": want}}
    body = f"metadata:\n  generateName: {text}\n".encode()
    assert body_names("application/yaml", body) == ("", want)


@pytest.mark.parametrize(
    ("body", "want"),
    [
        (b'[{"op":"copy","from":"/data/a","path":"/metadata/annotations/x"}]', "copy"),
        (b'[{"op":"add","path":"/x","value":1},{"op":"move","from":"/a","path":"/b"}]', "move"),
        (b'[{"op":"test","path":"/data/a","value":"x"}]', "test"),
        (b'[{"op":"Copy","from":"/data/a","path":"/b"}]', "Copy"),
        (b'[{"path":"/b"}]', "None"),  # no op: refused, whatever the cluster would do
        (b'[{"op":1}]', "1"),
        (b'[{"op":"add","path":"/metadata/labels/a","value":"b"}]', ""),
        (b'{"metadata":{"labels":{"a":"b"}}}', ""),
        (b"", ""),
    ],
)
def test_reading_op(body: bytes, want: str) -> None:
    assert reading_op("application/json-patch+json", body) == want


def test_reading_op_reads_whatever_the_content_type_says() -> None:
    body = b'[{"op":"copy","from":"/data/a","path":"/b"}]'
    assert reading_op("application/merge-patch+json", body) == "copy"
    assert reading_op("application/apply-patch+yaml", b"- {op: move, from: /a, path: /b}") == "move"
    with pytest.raises(BodyError):
        reading_op("application/json-patch+json", b'[{"op":"copy","op":"add"}]')


def _env() -> dict[str, object]:
    return {"containers": [{"name": "c", "env": [{"name": "E", "value": EMAIL}]}]}


@pytest.mark.parametrize(
    ("kind", "obj"),
    [
        ("CronJob", {"spec": {"jobTemplate": {"spec": {"template": {"spec": _env()}}}}}),
        ("ReplicationController", {"spec": {"template": {"spec": _env()}}}),
        ("PodTemplate", {"template": {"spec": _env()}}),
        ("ControllerRevision", {"data": {"spec": {"template": {"spec": _env()}}}}),
        ("ControllerRevision", {"data": [f"raw {EMAIL}"]}),
        ("Pod", {"spec": {"ephemeralContainers": _env()["containers"]}}),
        ("ConfigMap", {"binaryData": {"b": base64.b64encode(b"\xff" + EMAIL.encode()).decode()}}),
        ("ConfigMap", {"binaryData": {"b": f"not base64 {EMAIL}"}}),
    ],
)
def test_detectors_reach_every_pod_template(kind: str, obj: dict[str, object]) -> None:
    inspector = Inspector(masker=ValueMasker(["email"]), kind=kind)
    for shown in (inspector.item({"kind": kind, **obj}), inspector.item(obj)):
        text = repr(shown)
        for v in (shown.get("binaryData") or {}).values():
            text += repr(base64.b64decode(v, validate=False)) if " " not in v else v
        assert EMAIL not in text, shown
    assert inspector.counts["email"] == 2


def _exec(query: str) -> frozenset[str]:
    q = parse_query(query)
    info = request_info("GET", "/api/v1/namespaces/n/pods/p/exec", q)
    return command_for("c", info, q, "GET").opaque


@pytest.mark.parametrize("argv", ["less&command=f", "man&command=ls", "git&command=log"])
def test_a_pager_is_opaque_with_a_tty_and_stdin(argv: str) -> None:
    assert _exec(f"command={argv}&tty=true&stdin=true") == {"shell_code"}
    assert _exec(f"command={argv}&tty=yes&stdin=1") == {"shell_code"}  # (as Go reads them)
    assert _exec(f"command={argv}&tty=true") == frozenset()  # nothing can be typed
    assert _exec(f"command={argv}&stdin=true") == frozenset()  # no terminal: no pager


def test_a_pager_with_a_tty_is_another_decision() -> None:
    q1, q2 = (
        parse_query("command=less&command=f"),
        parse_query("command=less&command=f&tty=1&stdin=1"),
    )
    info = request_info("GET", "/api/v1/namespaces/n/pods/p/exec", q1)
    assert (
        command_for("c", info, q1, "GET").fingerprint
        != command_for("c", info, q2, "GET").fingerprint
    )


def test_each_item_is_masked_by_its_own_rules() -> None:
    cards = ValueMasker(["credit_card"])
    inspector = Inspector(
        item_masker=lambda ns, name: cards if ns == "hr" or name.startswith("pay") else None,
        kind="ConfigMap",
    )
    card = "4111 1111 1111 1111"
    listed = inspector.value(
        {
            "kind": "ConfigMapList",
            "items": [
                {"metadata": {"namespace": ns, "name": name}, "data": {"c": card}}
                for ns, name in (("hr", "a"), ("ops", "payroll"), ("ops", "b"))
            ],
        }
    )
    assert [i["data"]["c"] == card for i in listed["items"]] == [False, False, True]
    assert inspector.masker is None  # (an item's masker is that item's only)


def test_a_token_request_answer_is_masked() -> None:
    answer = {"kind": "TokenRequest", "status": {"token": "eyJh.x.y", "expirationTimestamp": "t"}}
    for shown in (
        Inspector(kind="TokenRequest").value(answer),
        Inspector(kind="TokenRequest").value({**answer, "kind": None}),
    ):
        assert shown["status"] == {"token": "hoopy:masked", "expirationTimestamp": "t"}
    assert Inspector(kind="TokenRequest", mask_secrets=False).value(answer) == answer
