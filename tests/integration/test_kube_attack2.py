"""Attacks from a second review of the Kubernetes path (session 10), each through real
kubectl (or raw HTTP where kubectl cannot send the shape) against the emulator; each
failed before its fix: a pager run on a terminal, masked values read through a pod
subresource or a workload kind hoopy did not rewrite, a JSON patch copying a masked
value to where it shows."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.test_kube_hostile import call
from tests.kubefixture import Emu, KubeHoopy, start_hoopy

POLICY = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: ["cluster*"]}
  - name: no-rm-in-pods
    effect: deny
    reason: no deleting files inside pods
    match: {kubernetes: {resources: ["pods/exec", "pods/attach"], commands: ["rm *", "rm"]}}
  - name: no-dated-objects
    effect: deny
    reason: dated objects are made by the release job
    match: {kubernetes: {verbs: [create], names: ["20*"]}}
  - name: no-hidden-namespace
    effect: deny
    reason: t-hidden is the platform team's
    match: {kubernetes: {namespaces: [t-hidden]}}
  - name: no-watching
    effect: deny
    reason: nobody watches t-nowatch
    match: {kubernetes: {verbs: [watch], namespaces: [t-nowatch]}}
  - name: hide-hr-cards
    effect: mask
    detectors: [credit_card]
    match: {kubernetes: {namespaces: [t-hr]}}
  - name: hide-payroll-ibans
    effect: mask
    detectors: [iban]
    match: {kubernetes: {names: ["payroll-*"]}}
  - name: hide-pod-keys
    effect: mask
    detectors: [aws_access_key]
    match: {kubernetes: {resources: [pods]}}
  - name: no-pod-reads
    effect: deny
    reason: pods in t-nopod are not to be read
    match: {kubernetes: {verbs: [get, list, watch], resources: [pods], namespaces: [t-nopod]}}
  - name: hide-emails
    effect: mask
    detectors: [email]
    match: {connectors: ["cluster*"]}
"""
EMAIL = "alice.owner@example.com"
SECRET = "Zq-secret-771-value"
SECRET_B64 = base64.b64encode(SECRET.encode()).decode()

pytest_plugins = ["tests.kubefixture"]  # the emulator fixture, `emu`


@pytest.fixture(scope="module")
def hk(emu: Emu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeHoopy]:
    h = start_hoopy(
        tmp_path_factory.mktemp("hoopy-kube-attack2"),
        emu,
        POLICY,
        connectors={"cluster": "", "cluster-imp": "impersonate: true\n"},
    )
    try:
        yield h
    finally:
        h.stop()


def _ns(emu: Emu, ns: str) -> None:
    emu.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})


def _env() -> list[dict[str, str]]:
    return [{"name": "OWNER", "value": EMAIL}]


def _podspec() -> dict[str, object]:
    return {"containers": [{"name": "main", "image": "busybox", "env": _env()}]}


# ---- exec with a terminal ----------------------------------------------------------------
def test_a_pager_on_a_terminal_is_opaque(hk: KubeHoopy, emu: Emu) -> None:
    """`kubectl exec -it pod -- less f`: less (man, git log, …) runs what is typed at its
    `!` prompt, so with a TTY and stdin it is opaque, as `ssh -t host less f` is; hoopy
    read it as a plain `less` and let it through a policy that denies rm."""
    _ns(emu, "t-pager")
    emu.call("POST", "/api/v1/namespaces/t-pager/pods", {"metadata": {"name": "victim"}})
    r = hk.kubectl_tty(
        "-n", "t-pager", "exec", "-it", "victim", "--", "less", "--version",
        token=hk.token(sub="pager"),
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "Forbidden" in out and "shell_code" in out, out
    # without a terminal less pages nothing: an ordinary command
    r = hk.kubectl("-n", "t-pager", "exec", "victim", "--", "less", "--version")
    assert r.returncode == 0 and "less" in r.stdout.lower(), r.stderr


# ---- subresources that answer the whole pod ---------------------------------------------
@pytest.mark.parametrize("sub", ["ephemeralcontainers", "status"])
def test_pod_subresources_answer_masked(hk: KubeHoopy, emu: Emu, sub: str) -> None:
    """GET and PATCH of pods/ephemeralcontainers (kubectl debug) answer the whole Pod,
    env values included; hoopy inspected only plain objects and `status`."""
    ns = f"t-sub-{sub[:5]}"
    _ns(emu, ns)
    emu.call(
        "POST", f"/api/v1/namespaces/{ns}/pods", {"metadata": {"name": "web"}, "spec": _podspec()}
    )
    path = f"/k8s/cluster/api/v1/namespaces/{ns}/pods/web/{sub}"
    r = hk.kubectl("get", "--raw", path)
    assert r.returncode == 0, r.stderr
    assert EMAIL not in r.stdout and '"OWNER"' in r.stdout, r.stdout
    patch = {"metadata": {"labels": {"x": "y"}}}
    if sub == "ephemeralcontainers":
        patch = {"spec": {"ephemeralContainers": [{"name": "dbg", "image": "busybox"}]}}
    code, body = call(
        hk,
        "PATCH",
        path,
        body=json.dumps(patch).encode(),
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert code == 200, body
    assert EMAIL not in json.dumps(body) and "OWNER" in json.dumps(body)


# ---- every kind that holds a pod template ---------------------------------------------------
WORKLOADS = {
    "cronjobs": (
        "/apis/batch/v1",
        {
            "spec": {
                "schedule": "* * * * *",
                "jobTemplate": {"spec": {"template": {"spec": _podspec()}}},
            }
        },
    ),
    "replicationcontrollers": ("/api/v1", {"spec": {"template": {"spec": _podspec()}}}),
    "podtemplates": ("/api/v1", {"template": {"spec": _podspec()}}),
    "controllerrevisions": (
        "/apis/apps/v1",
        {"revision": 1, "data": {"spec": {"template": {"$patch": "replace", "spec": _podspec()}}}},
    ),
}


@pytest.mark.parametrize("resource", sorted(WORKLOADS))
def test_every_pod_template_is_masked(hk: KubeHoopy, emu: Emu, resource: str) -> None:
    """Mask rules' detectors cover container env values of pods and workload templates;
    CronJobs, ReplicationControllers, PodTemplates and ControllerRevisions (which hold
    a StatefulSet's or DaemonSet's template) passed through unread."""
    ns = f"t-wl-{resource[:6]}"
    _ns(emu, ns)
    prefix, body = WORKLOADS[resource]
    emu.call("POST", f"{prefix}/namespaces/{ns}/{resource}", {"metadata": {"name": "w"}, **body})
    for args in (("get", resource, "w", "-o", "yaml"), ("get", resource, "-o", "json")):
        r = hk.kubectl("-n", ns, *args)
        assert r.returncode == 0, r.stderr
        assert EMAIL not in r.stdout and "OWNER" in r.stdout, r.stdout


# ---- JSON patches that move a masked value ---------------------------------------------------
@pytest.fixture(scope="module")
def masked_objects(emu: Emu) -> str:
    ns = "t-jp"
    _ns(emu, ns)
    meta = {"name": "s", "annotations": {"note": "n"}}
    emu.call(
        "POST",
        f"/api/v1/namespaces/{ns}/secrets",
        {"metadata": meta, "data": {"password": SECRET_B64}},
    )
    emu.call(
        "POST",
        f"/api/v1/namespaces/{ns}/configmaps",
        {"metadata": {**meta, "name": "c"}, "data": {"owner": EMAIL}},
    )
    emu.call(
        "POST",
        f"/api/v1/namespaces/{ns}/pods",
        {"metadata": {**meta, "name": "p"}, "spec": _podspec()},
    )
    return ns


COPIES = [
    ("secret", "s", '[{"op":"copy","from":"/data/password","path":"/metadata/annotations/leak"}]'),
    ("secret", "s", '[{"op":"move","from":"/data/password","path":"/metadata/annotations/leak"}]'),
    ("secret", "s", '[{"op":"copy","from":"/data","path":"/metadata/annotations"}]'),
    ("secret", "s", '[{"op":"copy","from":"","path":"/metadata/annotations/leak"}]'),
    ("configmap", "c", '[{"op":"copy","from":"/data/owner","path":"/metadata/annotations/leak"}]'),
    (
        "pod",
        "p",
        '[{"op":"copy","from":"/spec/containers/0/env/0/value","path":"/metadata/annotations/leak"}]',
    ),
]


@pytest.mark.parametrize(("kind", "name", "patch"), COPIES)
def test_a_json_patch_cannot_copy_a_masked_value(
    hk: KubeHoopy, emu: Emu, masked_objects: str, kind: str, name: str, patch: str
) -> None:
    """A JSON patch's copy/move puts a Secret's value (or a detected one) into an
    annotation, which no masking covers: the answer, every later read, and the
    cluster's validation errors (which quote a value they refuse) would show it."""
    ns = masked_objects
    r = hk.kubectl("-n", ns, "patch", kind, name, "--type=json", "-p", patch, "-o", "yaml")
    assert r.returncode != 0 and "Forbidden" in r.stderr, (r.stdout, r.stderr)
    assert SECRET_B64 not in r.stdout and EMAIL not in r.stdout
    plural = {"secret": "secrets", "configmap": "configmaps", "pod": "pods"}[kind]
    stored = emu.call("GET", f"/api/v1/namespaces/{ns}/{plural}/{name}")
    assert "leak" not in stored["metadata"]["annotations"]  # never reached the cluster


def test_a_json_patch_test_of_a_secret_value_is_refused(hk: KubeHoopy, masked_objects: str) -> None:
    """`test` would tell the agent whether its guess of a masked value is right."""
    guess = f'[{{"op":"test","path":"/data/password","value":"{SECRET_B64}"}}]'
    r = hk.kubectl("-n", masked_objects, "patch", "secret", "s", "--type=json", "-p", guess)
    assert r.returncode != 0 and "Forbidden" in r.stderr, r.stderr


def test_plain_json_patches_of_masked_objects_still_work(hk: KubeHoopy, emu: Emu) -> None:
    ns = "t-jp-ok"
    _ns(emu, ns)
    meta = {"name": "s", "annotations": {"note": "n"}}
    emu.call(
        "POST", f"/api/v1/namespaces/{ns}/secrets", {"metadata": meta, "data": {"k": SECRET_B64}}
    )
    emu.call(
        "POST", f"/api/v1/namespaces/{ns}/configmaps", {"metadata": meta, "data": {"k": EMAIL}}
    )
    add = '[{"op":"add","path":"/metadata/annotations/ok","value":"fine"}]'
    for kind in ("secret", "configmap"):
        r = hk.kubectl("-n", ns, "patch", kind, "s", "--type=json", "-p", add, "-o", "yaml")
        assert r.returncode == 0, r.stderr
        assert "fine" in r.stdout and SECRET_B64 not in r.stdout and EMAIL not in r.stdout


# ---- YAML bodies read as the cluster reads them ----------------------------------------------
@pytest.mark.parametrize("key", ["name", "generateName"])
def test_a_yaml_name_that_looks_like_a_date_is_judged(hk: KubeHoopy, emu: Emu, key: str) -> None:
    """`name: 2024-01-01` is the string "2024-01-01" to the cluster (go-yaml keeps a
    timestamp as its text) but was a date to PyYAML, so hoopy judged the create as
    nameless and the rule on names `20*` did not apply."""
    ns = f"t-yaml-{key.lower()}"
    _ns(emu, ns)
    body = f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  {key}: 2024-01-01\ndata: {{k: v}}\n"
    code, answer = call(
        hk,
        "POST",
        f"/k8s/cluster/api/v1/namespaces/{ns}/configmaps",
        body=body.encode(),
        headers={"Content-Type": "application/yaml"},
    )
    assert code == 403 and "no-dated-objects" in answer["message"], answer
    assert emu.call("GET", f"/api/v1/namespaces/{ns}/configmaps")["items"] == []
    # the same name in JSON is judged alike (the cluster reads both the same)
    meta = json.dumps({"metadata": {key: "2024-01-01"}, "data": {"k": "v"}})
    code, answer = call(
        hk,
        "POST",
        f"/k8s/cluster/api/v1/namespaces/{ns}/configmaps",
        body=meta.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert code == 403, answer


# ---- identity headers ------------------------------------------------------------------------
CLIENT_IDENTITY = {
    "Impersonate-User": "system:admin",
    "Impersonate-Group": "system:masters",
    "Impersonate-Uid": "0",
    "Impersonate-Extra-Scopes": "all",
    "X-Remote-User": "admin",
    "X-Remote-Group": "system:masters",
    "X-Remote-Extra-Scopes": "all",
    "Proxy-Authorization": "Basic YWRtaW46YWRtaW4=",
    "Cookie": "session=admin",
    "X-Forwarded-For": "10.0.0.1",
}
# headers that would authenticate or change who the cluster thinks is asking
UPSTREAM_BANNED = ("impersonate-", "x-remote-", "proxy-authorization", "cookie", "x-forwarded")


def _upstream(emu: Emu, marker: str) -> dict[str, object]:
    seen = [r for r in emu.requests() if marker in r["path"]]
    assert seen, marker
    return seen[-1]


def _clean(emu: Emu, seen: dict[str, object]) -> None:
    assert seen["impersonate"] == [], seen
    assert not [h for h in seen["headers"] if str(h).startswith(UPSTREAM_BANNED)], seen  # type: ignore[attr-defined]
    assert seen["authorization"] == f"Bearer {emu.token}"  # hoopy's own credential


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_client_identity_headers_never_reach_the_cluster(
    hk: KubeHoopy, emu: Emu, method: str
) -> None:
    """GETs go through hoopy's own HTTP server, other methods through aiohttp's: on both,
    the agent's impersonation and front-proxy headers are dropped."""
    marker = f"ident-{method.lower()}"
    path = f"/k8s/cluster/api/v1/namespaces/default/configmaps?fieldManager={marker}"
    body = None
    if method == "POST":
        body = json.dumps({"metadata": {"name": marker}}).encode()
    elif method == "DELETE":
        emu.call("POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": marker}})
        path = f"/k8s/cluster/api/v1/namespaces/default/configmaps/{marker}?dryRun=All&x={marker}"
    headers = {**CLIENT_IDENTITY, "Content-Type": "application/json"}
    code, answer = call(hk, method, path, body=body, headers=headers)
    assert code < 300, answer
    _clean(emu, _upstream(emu, marker))


def test_kubectl_as_is_dropped_for_reads_writes_and_exec(hk: KubeHoopy, emu: Emu) -> None:
    _ns(emu, "t-as")
    emu.call("POST", "/api/v1/namespaces/t-as/pods", {"metadata": {"name": "box"}})
    as_admin = ("--as=system:admin", "--as-group=system:masters", "--as-uid=0", "-n", "t-as")
    for args, marker in (
        (("get", "configmaps", "-l", "m=as-get"), "as-get"),
        (("create", "configmap", "as-create", "--field-manager=as-create"), "as-create"),
        (("exec", "box", "--", "echo", "as-exec"), "as-exec"),
    ):
        r = hk.kubectl(*as_admin, *args)
        assert r.returncode == 0, r.stderr
        _clean(emu, _upstream(emu, marker))


def test_impersonation_never_names_a_system_identity(hk: KubeHoopy, emu: Emu) -> None:
    """With `impersonate: true` the agent's identity becomes Impersonate-User/Group:
    an OIDC group `system:masters` would make the agent cluster-admin, and a subject
    `system:...` a node, controller or service account. `system:` is Kubernetes' own."""
    token = hk.token(sub="agent-imp", groups=("agents", "system:masters"))
    r = hk.kubectl(
        "get", "cm", "-n", "default", "-l", "m=imp1", connector="cluster-imp", token=token
    )
    assert r.returncode == 0, r.stderr
    seen = _upstream(emu, "imp1")
    assert seen["impersonate"] == ["Impersonate-Group: agents", "Impersonate-User: agent-imp"]
    token = hk.token(sub="system:kube-controller-manager", groups=("agents",))
    r = hk.kubectl(
        "get", "cm", "-n", "default", "-l", "m=imp2", connector="cluster-imp", token=token
    )
    assert r.returncode != 0 and "Forbidden" in r.stderr and "system:" in r.stderr, r.stderr
    assert not [q for q in emu.requests() if "imp2" in q["path"]]


# ---- query strings two parsers read apart -----------------------------------------------------
@pytest.mark.parametrize(
    ("method", "query"),
    [
        ("GET", "watch=0#&watch=1&timeoutSeconds=1"),
        ("GET", "fieldSelector=metadata.name%3Dx#y"),
        ("DELETE", "dryRun=All#&propagationPolicy=Orphan"),
    ],
)
def test_a_hash_in_the_query_is_refused(hk: KubeHoopy, emu: Emu, method: str, query: str) -> None:
    """kube-apiserver (Go) keeps a raw `#` in the query (`watch=0#` is a watch), while a
    proxy in front of it, or aiohttp in the emulator, ends the query at the `#` (a
    list): hoopy judged a watch the cluster ran as a list."""
    path = f"/k8s/cluster/api/v1/namespaces/default/configmaps?{query}"
    code, answer = call(hk, method, path)
    assert code == 400 and "'#' in the query" in answer["message"], answer
    assert not [
        r
        for r in emu.requests()
        if r["path"].startswith("/api/v1/namespaces/default/configmaps?" + query[:8])
    ]


def test_configmap_binary_data_is_masked(hk: KubeHoopy, tmp_path: Path) -> None:
    """`kubectl create configmap --from-file` puts a file that is not UTF-8 in
    binaryData, base64-encoded: detectors read only `data`, so the address in it
    came back whole."""
    hk.kubectl("create", "namespace", "t-bin")
    blob = tmp_path / "contacts.bin"
    blob.write_bytes(b"\xff\xfe\x00owner=" + EMAIL.encode() + b"\n")
    r = hk.kubectl("-n", "t-bin", "create", "configmap", "bin", f"--from-file={blob}")
    assert r.returncode == 0, r.stderr
    for args in (("get", "cm", "bin", "-o", "json"), ("get", "cm", "-o", "json")):
        r = hk.kubectl("-n", "t-bin", *args)
        assert r.returncode == 0, r.stderr
        answer = json.loads(r.stdout)
        items = answer.get("items", [answer])
        values = [base64.b64decode(v) for i in items for v in i["binaryData"].values()]
        assert values and all(v.startswith(b"\xff\xfe\x00owner=") for v in values), values
        assert not any(EMAIL.encode() in v for v in values), values


# ---- exec over each WebSocket protocol ---------------------------------------------------
async def _ws_exec(hk: KubeHoopy, query: str, protocols: tuple[str, ...]) -> tuple[int, bytes]:
    """(HTTP status of the handshake, stdout) of a raw WebSocket exec in t-ws/box."""
    host, port = hk.addresses["kubernetes"].rsplit(":", 1)
    url = f"https://{host}:{port}/k8s/cluster/api/v1/namespaces/t-ws/pods/box/exec?{query}"
    ctx = ssl.create_default_context(cafile=str(hk.ca))
    out = b""
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(
                url, ssl=ctx, protocols=protocols, headers={"Authorization": f"Bearer {hk.token()}"}
            )
        except aiohttp.WSServerHandshakeError as e:
            return e.status, b""
        async with ws:
            while True:
                msg = await ws.receive(timeout=30)
                if msg.type != aiohttp.WSMsgType.BINARY or msg.data[:1] == b"\x03":
                    break
                if msg.data[:1] == b"\x01":
                    out += msg.data[1:]
    return 101, out


@pytest.fixture(scope="module")
def ws_pod(emu: Emu) -> None:
    _ns(emu, "t-ws")
    emu.call("POST", "/api/v1/namespaces/t-ws/pods", {"metadata": {"name": "box"}})


@pytest.mark.parametrize("protocol", ["v4.channel.k8s.io", "v5.channel.k8s.io"])
def test_exec_is_judged_on_every_websocket_protocol(
    hk: KubeHoopy, ws_pod: None, protocol: str
) -> None:
    ok = "command=echo&command=ws-ok&stdout=true"
    assert asyncio.run(_ws_exec(hk, ok, (protocol,))) == (101, b"ws-ok\n")
    denied = (
        "command=sh&command=-c&command=rm+-rf+/tmp/hoopy-ws-x&stdout=true",
        "command=less&command=/etc/hostname&stdin=true&tty=true&stdout=true",
    )
    for query in denied:
        assert asyncio.run(_ws_exec(hk, query, (protocol,)))[0] == 403, query
    # base64.channel.k8s.io hides the channel bytes in text; older ones lack v5's close
    assert asyncio.run(_ws_exec(hk, ok, ("base64.channel.k8s.io", "channel.k8s.io")))[0] == 400


# ---- refusals are recorded ---------------------------------------------------------------
def test_body_refusals_are_recorded(hk: KubeHoopy, emu: Emu) -> None:
    """A body naming another namespace (or encoded) was answered 400 but left no trace
    in the recording: a create's never reached the policy, so not even its command."""
    from tests.integration.test_kube_portforward import session_events

    _ns(emu, "t-rec")
    token = hk.token(sub="rec-agent")
    path = "/k8s/cluster/api/v1/namespaces/t-rec/configmaps"
    other = json.dumps({"metadata": {"name": "x", "namespace": "kube-system"}}).encode()
    plain = json.dumps({"metadata": {"name": "x"}}).encode()
    for body, headers in (
        (other, {"Content-Type": "application/json"}),
        (plain, {"Content-Type": "application/json", "Content-Encoding": "gzip"}),
    ):
        code, answer = call(hk, "POST", path, token=token, body=body, headers=headers)
        assert code == 400, answer
    _, events = session_events(hk, "rec-agent")
    refused = [e for e in events if e.get("type") == "request" and e.get("status") == 400]
    reasons = [str(e.get("reason")) for e in refused]
    assert len(refused) == 2 and "namespace of the request body" in reasons[0], refused
    assert "encoded" in reasons[1] and all(e["decision"] == "refused" for e in refused)


# ---- pages of a filtered list ---------------------------------------------------------------
@pytest.mark.parametrize("table", [False, True])
def test_a_filtered_list_tells_nothing_of_hidden_objects(
    hk: KubeHoopy, emu: Emu, table: bool
) -> None:
    """A list across namespaces is filtered item by item, but its pages were the
    cluster's: `remainingItemCount` counted the hidden objects, and the `continue`
    token (base64 JSON naming the last key of the page) named a hidden one. hoopy now
    asks the cluster for the whole list, streams it filtered, and sends no pages."""
    with contextlib.suppress(urllib.error.HTTPError):  # (the other parameter made them)
        for ns in ("t-hidden", "t-shown"):
            _ns(emu, ns)
        for n in range(3):
            emu.call(
                "POST",
                "/api/v1/namespaces/t-hidden/configmaps",
                {"metadata": {"name": f"hush-{n}"}},
            )
        emu.call("POST", "/api/v1/namespaces/t-shown/configmaps", {"metadata": {"name": "shown"}})
    headers = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"} if table else {}
    for limit in (1, 2, 500):
        code, answer = call(
            hk, "GET", f"/k8s/cluster/api/v1/configmaps?limit={limit}", headers=headers
        )
        assert code == 200, answer
        meta = answer["metadata"]
        assert "remainingItemCount" not in meta and "continue" not in meta, meta
        text = json.dumps(answer)
        assert "hush-" not in text and "t-hidden" not in text and '"shown"' in text, text
    # kubectl's own pages (--chunk-size) still show everything the agent may see
    r = hk.kubectl("get", "cm", "-A", "--chunk-size=1")
    assert r.returncode == 0 and "shown" in r.stdout and "hush" not in r.stdout, r.stderr


def test_the_recording_and_log_hold_no_masked_value_or_credential(hk: KubeHoopy, emu: Emu) -> None:
    """Every shape above, once more, then the recordings and hoopy's log are searched:
    the agent's answers are recorded as it saw them (masked), request bodies not at all,
    and hoopy's own credential for the cluster never."""
    ns = "t-recscan"
    _ns(emu, ns)
    emu.call(
        "POST",
        f"/api/v1/namespaces/{ns}/secrets",
        {"metadata": {"name": "s"}, "data": {"k": SECRET_B64}},
    )
    emu.call(
        "POST", f"/api/v1/namespaces/{ns}/pods", {"metadata": {"name": "p"}, "spec": _podspec()}
    )
    prefix, body = WORKLOADS["cronjobs"]
    emu.call("POST", f"{prefix}/namespaces/{ns}/cronjobs", {"metadata": {"name": "w"}, **body})
    token = hk.token(sub="rec-scan")
    copy_op = '[{"op":"copy","from":"/data/k","path":"/metadata/annotations"}]'
    for args in (
        ("get", "secret", "s", "-o", "yaml"),
        ("get", "--raw", f"/k8s/cluster/api/v1/namespaces/{ns}/pods/p/ephemeralcontainers"),
        ("get", "cronjobs", "-o", "json"),
        ("patch", "secret", "s", "--type=json", "-p", copy_op),
        ("create", "secret", "generic", "made", f"--from-literal=k={SECRET}", "-o", "yaml"),
    ):
        r = hk.kubectl("-n", ns, *args, token=token)
        assert SECRET not in r.stdout and SECRET_B64 not in r.stdout and EMAIL not in r.stdout
    text = hk.recordings_text() + hk.log_text()
    assert "rec-scan" in text  # (the session was recorded)
    for value in (SECRET, SECRET_B64, EMAIL, emu.token):
        assert value not in text, value


# ---- the verb as the cluster reads it ------------------------------------------------------------
WATCHES = [
    "/api/v1/namespaces/t-nowatch/configmaps?watch=1",
    "/api/v1/namespaces/t-nowatch/configmaps?watch=true",
    "/api/v1/namespaces/t-nowatch/configmaps?watch=TRUE",
    "/api/v1/namespaces/t-nowatch/configmaps?watch=yes",
    "/api/v1/namespaces/t-nowatch/configmaps?watch=",
    "/api/v1/namespaces/t-nowatch/configmaps?watch",
    "/api/v1/namespaces/t-nowatch/configmaps?watch=1&watch=0",
    "/api/v1/namespaces/t-nowatch/configmaps?w%61tch=1",
    "/api/v1/namespaces/t-nowatch/configmaps?fieldSelector=metadata.name%3Dc&watch=1",
    "/api/v1/watch/namespaces/t-nowatch/configmaps",
    "/api/v1/watch/namespaces/t-nowatch/configmaps/c",
    "/api/v1/watch/namespaces/t-nowatch/configmaps/",
]
LISTS = [
    "/api/v1/namespaces/t-nowatch/configmaps",
    "/api/v1/namespaces/t-nowatch/configmaps?watch=0",
    "/api/v1/namespaces/t-nowatch/configmaps?watch=FaLsE",
    "/api/v1/namespaces/t-nowatch/configmaps?watch=fal%C5%BFe",  # (Go's EqualFold: false)
    "/api/v1/namespaces/t-nowatch/configmaps?watch=0&watch=1",
    "/api/v1/namespaces/t-nowatch/configmaps?Watch=1",
    "/api/v1/namespaces/t-nowatch/configmaps/c?watch=1",  # (a named get: never a watch)
]


@pytest.mark.parametrize("path", WATCHES + LISTS)
def test_the_verb_is_the_one_the_cluster_runs(hk: KubeHoopy, emu: Emu, path: str) -> None:
    with contextlib.suppress(urllib.error.HTTPError):
        _ns(emu, "t-nowatch")
        emu.call("POST", "/api/v1/namespaces/t-nowatch/configmaps", {"metadata": {"name": "c"}})
    sep = "&" if "?" in path else "?"
    code, answer = call(hk, "GET", f"/k8s/cluster{path}{sep}timeoutSeconds=1")
    if path in WATCHES:
        assert code == 403 and "no-watching" in answer["message"], answer
    else:
        assert code == 200, answer


# ---- mask rules scoped to namespaces or names, over collections ------------------------------
CARD = "4111 1111 1111 1111"
IBAN = "DE89370400440532013000"


@pytest.fixture(scope="module")
def scoped(emu: Emu) -> None:
    for ns in ("t-hr", "t-ops"):
        _ns(emu, ns)
    data = {"card": CARD, "iban": IBAN}
    for ns, name in (("t-hr", "cards"), ("t-ops", "payroll-1"), ("t-ops", "plain")):
        emu.call(
            "POST",
            f"/api/v1/namespaces/{ns}/configmaps",
            {"metadata": {"name": name}, "data": data},
        )


def _shown(items: list[dict[str, object]]) -> dict[str, dict[str, str]]:
    """namespace/name -> data of the scoped fixture's ConfigMaps in an answer."""
    out = {}
    for i in items:
        meta = i.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"  # type: ignore[union-attr]
        if key in ("t-hr/cards", "t-ops/payroll-1", "t-ops/plain"):
            out[key] = i["data"]  # type: ignore[assignment]
    return out


def _check(shown: dict[str, dict[str, str]], keys: tuple[str, ...]) -> None:
    assert set(shown) == set(keys), shown
    want = {
        "t-hr/cards": (False, True),  # (card shown, iban shown)
        "t-ops/payroll-1": (True, False),
        "t-ops/plain": (True, True),
    }
    for key in keys:
        assert (shown[key]["card"] == CARD, shown[key]["iban"] == IBAN) == want[key], (key, shown)


def test_scoped_mask_rules_apply_to_each_item_of_a_list(hk: KubeHoopy, scoped: None) -> None:
    """A mask rule for namespace t-hr (or names payroll-*) was judged on the request: a
    list across namespaces (namespace "") or of a whole namespace (no name) matched
    neither, so `get cm -A` showed t-hr's card numbers. Each item is now masked by the
    rules its own namespace and name match (and only by those)."""
    r = hk.kubectl("get", "cm", "-A", "-o", "json")
    assert r.returncode == 0, r.stderr
    _check(_shown(json.loads(r.stdout)["items"]), ("t-hr/cards", "t-ops/payroll-1", "t-ops/plain"))
    r = hk.kubectl("-n", "t-ops", "get", "cm", "-o", "json")
    assert r.returncode == 0, r.stderr
    _check(_shown(json.loads(r.stdout)["items"]), ("t-ops/payroll-1", "t-ops/plain"))
    # Tables (includeObject=Object) and watch events are items too
    table = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
    code, answer = call(
        hk, "GET", "/k8s/cluster/api/v1/configmaps?includeObject=Object", headers=table
    )
    assert code == 200, answer
    _check(
        _shown([row["object"] for row in answer["rows"]]),
        ("t-hr/cards", "t-ops/payroll-1", "t-ops/plain"),
    )
    code, answer = call(hk, "GET", "/k8s/cluster/api/v1/configmaps?watch=1&timeoutSeconds=1")
    assert code == 200
    events = [json.loads(line) for line in answer.splitlines() if line.strip()]
    _check(_shown([e["object"] for e in events]), ("t-hr/cards", "t-ops/payroll-1", "t-ops/plain"))


# ---- subresources answering their parent, under rules for the parent --------------------------
KEY = "AKIAIOSFODNN7EXAMPLE"


@pytest.mark.parametrize("sub", ["status", "ephemeralcontainers"])
def test_a_mask_rule_for_pods_covers_the_pod_its_subresources_answer(
    hk: KubeHoopy, emu: Emu, sub: str
) -> None:
    """A mask rule on `resources: [pods]` did not match `pods/status` (subresources are
    resources of their own, as in RBAC), yet that answer is the whole Pod: its env
    values came back unmasked, and a JSON patch could copy one into the status."""
    ns = f"t-pk-{sub[:5]}"
    _ns(emu, ns)
    spec = {"containers": [{"name": "m", "image": "x", "env": [{"name": "K", "value": KEY}]}]}
    emu.call("POST", f"/api/v1/namespaces/{ns}/pods", {"metadata": {"name": "p"}, "spec": spec})
    r = hk.kubectl("-n", ns, "get", "pod", "p", "-o", "yaml")
    assert r.returncode == 0 and KEY not in r.stdout and "name: K" in r.stdout, r.stdout
    r = hk.kubectl("get", "--raw", f"/k8s/cluster/api/v1/namespaces/{ns}/pods/p/{sub}")
    assert r.returncode == 0 and KEY not in r.stdout and '"K"' in r.stdout, r.stdout
    copy_op = '[{"op":"copy","from":"/spec/containers/0/env/0/value","path":"/status/message"}]'
    r = hk.kubectl(
        "-n", ns, "patch", "pod", "p", f"--subresource={sub}", "--type=json", "-p", copy_op
    )
    assert r.returncode != 0 and "Forbidden" in r.stderr, (r.stdout, r.stderr)
    assert "message" not in emu.call("GET", f"/api/v1/namespaces/{ns}/pods/p").get("status", {})


@pytest.mark.parametrize("sub", ["status", "ephemeralcontainers"])
def test_a_denied_pod_read_is_not_read_through_a_subresource(
    hk: KubeHoopy, emu: Emu, sub: str
) -> None:
    """`get pods` denied, `get pods/status` (a resource of its own, as in RBAC) was
    allowed: and its answer is the whole pod. Such a read is now judged as the pod's."""
    with contextlib.suppress(urllib.error.HTTPError):
        _ns(emu, "t-nopod")
        emu.call(
            "POST",
            "/api/v1/namespaces/t-nopod/pods",
            {"metadata": {"name": "p"}, "spec": _podspec()},
        )
    r = hk.kubectl("-n", "t-nopod", "get", "pod", "p")
    assert r.returncode != 0 and "no-pod-reads" in r.stderr, r.stderr
    r = hk.kubectl("get", "--raw", f"/k8s/cluster/api/v1/namespaces/t-nopod/pods/p/{sub}")
    assert r.returncode != 0 and "no-pod-reads" in r.stderr and "OWNER" not in r.stdout, r.stderr
    # the subresource's own writes are still judged as RBAC judges them (kubectl patch
    # reads the object first; a raw PATCH does not)
    code, answer = call(
        hk,
        "PATCH",
        f"/k8s/cluster/api/v1/namespaces/t-nopod/pods/p/{sub}",
        body=b'{"metadata":{"labels":{"seen":"yes"}}}',
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert code == 200, answer


# ---- service account tokens ------------------------------------------------------------------
def test_a_service_account_token_is_masked_as_a_secret(hk: KubeHoopy) -> None:
    """`kubectl create token SA` (a TokenRequest) answered a bearer token for the
    cluster, a credential the agent could take past hoopy, while the same token kept in
    a Secret (the older way) is masked; under mask_secrets it is masked too, in the
    answer and in the recording."""
    assert hk.kubectl("create", "namespace", "t-tok").returncode == 0
    assert hk.kubectl("-n", "t-tok", "create", "serviceaccount", "bot").returncode == 0
    token = hk.token(sub="token-asker")
    r = hk.kubectl("-n", "t-tok", "create", "token", "bot", token=token)
    assert r.returncode == 0, r.stderr
    assert "eyJhbGciOiJSUzI1NiJ9." not in r.stdout and "hoopy:masked" in r.stdout, r.stdout
    r = hk.kubectl("-n", "t-tok", "create", "token", "bot", "-o", "json", token=token)
    assert r.returncode == 0 and json.loads(r.stdout)["status"]["token"] == "hoopy:masked"
    assert "eyJhbGciOiJSUzI1NiJ9." not in hk.recordings_text()
