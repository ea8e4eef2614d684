"""requestinfo: kube-apiserver's RequestInfo for paths kubectl 1.32 sends (captured
from kubectl traffic through the emulator), and the path tricks hoopy refuses."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hoopy.protocols.kube.requestinfo import (
    PathRejected,
    go_bool,
    parse_query,
    request_info,
)

# method, path?query -> verb, group, version, namespace, resource, subresource, name
CASES = [
    ("GET", "/api", ("get", False, "", "", "", "", "", "")),
    ("GET", "/apis", ("get", False, "", "", "", "", "", "")),
    ("GET", "/api/v1", ("get", False, "", "", "", "", "", "")),
    ("GET", "/apis/apps/v1", ("get", False, "", "", "", "", "", "")),
    ("GET", "/version?timeout=32s", ("get", False, "", "", "", "", "", "")),
    ("GET", "/openapi/v3/apis/apps/v1?hash=ab", ("get", False, "", "", "", "", "", "")),
    (
        "GET",
        "/api/v1/namespaces/default/pods?limit=500",
        ("list", True, "", "v1", "default", "pods", "", ""),
    ),
    ("GET", "/api/v1/pods?limit=500", ("list", True, "", "v1", "", "pods", "", "")),
    (
        "GET",
        "/api/v1/namespaces/default/pods/web-0",
        ("get", True, "", "v1", "default", "pods", "", "web-0"),
    ),
    (
        "GET",
        "/api/v1/namespaces/default/pods?resourceVersion=12&watch=true",
        ("watch", True, "", "v1", "default", "pods", "", ""),
    ),
    ("GET", "/api/v1/pods?watch=1", ("watch", True, "", "v1", "", "pods", "", "")),
    ("GET", "/api/v1/pods?watch=", ("watch", True, "", "v1", "", "pods", "", "")),
    ("GET", "/api/v1/pods?watch=false&watch=true", ("list", True, "", "v1", "", "pods", "", "")),
    (
        "GET",
        "/api/v1/watch/namespaces/default/pods",
        ("watch", True, "", "v1", "default", "pods", "", ""),
    ),
    (
        "GET",
        "/api/v1/namespaces/default/pods?fieldSelector=metadata.name%3Dweb-0&watch=true",
        ("watch", True, "", "v1", "default", "pods", "", "web-0"),
    ),
    (
        "GET",
        "/api/v1/namespaces/default/pods?fieldSelector=metadata.name!%3Dweb-0",
        ("list", True, "", "v1", "default", "pods", "", ""),
    ),
    (
        "POST",
        "/api/v1/namespaces/default/pods?fieldManager=kubectl-run",
        ("create", True, "", "v1", "default", "pods", "", ""),
    ),
    (
        "PUT",
        "/api/v1/namespaces/default/configmaps/c1",
        ("update", True, "", "v1", "default", "configmaps", "", "c1"),
    ),
    (
        "PATCH",
        "/apis/apps/v1/namespaces/default/deployments/web?fieldManager=kubectl-rollout",
        ("patch", True, "apps", "v1", "default", "deployments", "", "web"),
    ),
    (
        "DELETE",
        "/api/v1/namespaces/default/pods/web-0",
        ("delete", True, "", "v1", "default", "pods", "", "web-0"),
    ),
    (
        "DELETE",
        "/api/v1/namespaces/default/pods?labelSelector=a%3Db",
        ("deletecollection", True, "", "v1", "default", "pods", "", ""),
    ),
    (
        "GET",
        "/api/v1/namespaces/default/pods/web-0/log?follow=true&container=main",
        ("get", True, "", "v1", "default", "pods", "log", "web-0"),
    ),
    (
        "GET",
        "/api/v1/namespaces/default/pods/web-0/exec?command=sh&command=-c&command=id&stdout=true",
        ("create", True, "", "v1", "default", "pods", "exec", "web-0"),
    ),
    (
        "POST",
        "/api/v1/namespaces/default/pods/web-0/attach?stdin=true",
        ("create", True, "", "v1", "default", "pods", "attach", "web-0"),
    ),
    (
        "GET",
        "/api/v1/namespaces/default/pods/web-0/portforward?ports=80",
        ("create", True, "", "v1", "default", "pods", "portforward", "web-0"),
    ),
    (
        "GET",
        "/api/v1/namespaces/team-a",
        ("get", True, "", "v1", "team-a", "namespaces", "", "team-a"),
    ),
    ("GET", "/api/v1/namespaces", ("list", True, "", "v1", "", "namespaces", "", "")),
    (
        "PUT",
        "/api/v1/namespaces/team-a/finalize",
        ("update", True, "", "v1", "team-a", "namespaces", "finalize", "team-a"),
    ),
    (
        "PUT",
        "/apis/apps/v1/namespaces/default/deployments/web/scale",
        ("update", True, "apps", "v1", "default", "deployments", "scale", "web"),
    ),
    (
        "GET",
        "/api/v1/namespaces/default/services/web:80/proxy/metrics",
        ("create", True, "", "v1", "default", "services", "proxy", "web:80"),
    ),
    (
        "GET",
        "/api/v1/proxy/namespaces/default/pods/web-0/x/y",
        ("proxy", True, "", "v1", "default", "pods", "", "web-0"),
    ),
    ("GET", "/api/v1/nodes/", ("list", True, "", "v1", "", "nodes", "", "")),
]


@pytest.mark.parametrize(("method", "target", "want"), CASES)
def test_request_info(method: str, target: str, want: tuple) -> None:
    path, _, query = target.partition("?")
    info = request_info(method, path, parse_query(query))
    got = (
        info.verb,
        info.is_resource,
        info.group,
        info.version,
        info.namespace,
        info.resource,
        info.subresource,
        info.name,
    )
    assert got == want


@pytest.mark.parametrize(
    "target",
    [
        "/api/v1/namespaces/default/pods/../../kube-system/secrets",
        "/api/v1/namespaces/default/../kube-system/secrets",
        "/api/v1/namespaces/default/./secrets",
        "/api/v1//namespaces/kube-system/secrets",
        "/api/v1/namespaces/kube-system%2Fsecrets",
        "/api/v1/namespaces/kube%2dsystem/secrets",
        "/api/v1/namespaces/default/secrets%2fx",
        "/api/v1/namespaces/default/secrets;x=1",
        "/api/v1/namespaces/Kube-System/secrets",
        "/api/v1/namespaces/kube-system/Secrets",
        "/API/v1/namespaces/kube-system/secrets",
        "/apis/APPS/v1/deployments",
        "/api/V1/pods",
        "/api/v1/namespaces/default/pods/a\\b",
        "/api/v1/namespaces/default/pods/x/exec/extra",
        "/api/v1/namespaces/default/pods?watch=true;watch=false",
        "/api/v1/namespaces/default/pods?watch=%zz&watch=false",
        "/api/v1/namespaces/default/pods?fieldSelector=%&fieldSelector=metadata.name%3Dx",
        "/api/v1/namespaces/dé/pods",
        "api/v1/pods",
    ],
)
def test_path_tricks_are_refused(target: str) -> None:
    path, _, query = target.partition("?")
    with pytest.raises(PathRejected):
        request_info("GET", path, parse_query(query))


def test_unknown_method_refused() -> None:
    with pytest.raises(PathRejected):
        request_info("TRACE", "/api/v1/pods", {})


def test_go_bool() -> None:
    assert not go_bool(None) and not go_bool([]) and not go_bool(["0"]) and not go_bool(["FALSE"])
    assert go_bool([""]) and go_bool(["true"]) and go_bool(["yes"])


SEGMENTS = [
    "api",
    "apis",
    "v1",
    "apps",
    "namespaces",
    "default",
    "kube-system",
    "pods",
    "secrets",
    "exec",
    "log",
    "watch",
    "proxy",
    "..",
    ".",
    "",
    "%2f",
    "Pods",
    "a;b",
    "x",
    "status",
]


@given(
    st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "get"]),
    st.lists(st.one_of(st.sampled_from(SEGMENTS), st.text(max_size=8)), max_size=8),
    st.text(max_size=40),
)
@settings(max_examples=400, deadline=None)
def test_fuzzed_requests_parse_or_are_refused(method: str, segments: list[str], query: str) -> None:
    path = "/" + "/".join(segments)
    try:
        info = request_info(method, path, parse_query(query))
    except PathRejected:
        return
    parts = path.strip("/").split("/")
    assert not {".", "..", ""} & set(parts) or path == "/"
    assert "%" not in path and ";" not in path
    if info.is_resource:
        assert info.namespace == info.namespace.lower() and info.resource == info.resource.lower()
        assert info.verb in (
            "get",
            "list",
            "watch",
            "create",
            "update",
            "patch",
            "delete",
            "deletecollection",
            "proxy",
        )


def test_go_bool_folds_case_as_go_does() -> None:
    # strings.EqualFold("fal\u017fe", "false") is true (U+017F folds to "s"): a `watch`
    # the cluster reads as false must not be judged as a watch (a list rule skipped)
    assert not go_bool(["fal\u017fe"]) and not go_bool(["FAL\u017fE"])
    assert go_bool(["fal\u017f"]) and go_bool(["\u212aalse"])  # (K: not an "f")
