"""Large list answers hoopy must inspect go to kubectl item by item (liststream.py):
Secret values masked and governed namespaces removed as for a list read whole, in JSON
and in Table form, and the recording says the answer was streamed."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kubefixture import Emu, KubeHoopy, start_hoopy

POLICY = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: [cluster]}
  - name: no-kube-system
    effect: deny
    reason: kube-system is off limits
    match: {kubernetes: {namespaces: [kube-system]}}
"""
VALUE = "bGFyZ2Utc2VjcmV0LXZhbHVl"  # base64 of a secret value
PER_NS = 150  # x 2 namespaces x ~5 KB: well over the 1 MiB streaming threshold

pytest_plugins = ["tests.kubefixture"]  # the emulator fixture, `emu`


@pytest.fixture(scope="module")
def hk(emu: Emu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeHoopy]:
    names = {n["metadata"]["name"] for n in emu.call("GET", "/api/v1/namespaces")["items"]}
    for ns in ("big-app", "kube-system"):
        if ns not in names:
            emu.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
        for i in range(PER_NS):
            emu.call(
                "POST",
                f"/api/v1/namespaces/{ns}/secrets",
                {"metadata": {"name": f"{ns}-s{i}"}, "data": {"v": VALUE, "pad": VALUE * 200}},
            )
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-biglists"), emu, POLICY)
    try:
        yield h
    finally:
        h.stop()


def ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_a_large_secret_list_is_streamed_masked_and_filtered(hk: KubeHoopy, emu: Emu) -> None:
    raw = json.dumps(emu.call("GET", "/api/v1/secrets"))
    assert len(raw) > 1024 * 1024 and VALUE in raw  # the cluster holds them: the test can fail
    out = ok(hk.kubectl("get", "secrets", "-A", "-o", "json", "--chunk-size=0", timeout=120))
    assert VALUE not in out
    items = json.loads(out)["items"]
    assert not [i for i in items if i["metadata"]["namespace"] == "kube-system"]
    mine = [i for i in items if i["metadata"]["namespace"] == "big-app"]
    assert {i["metadata"]["name"] for i in mine} == {f"big-app-s{i}" for i in range(PER_NS)}
    assert all(set(i["data"]) == {"v", "pad"} for i in mine)
    # (request events reach the disk with the next command or the gateway's flush)
    deadline = time.monotonic() + 20
    while '"streamed"' not in hk.recordings_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert '"streamed"' in hk.recordings_text()
    assert VALUE not in hk.recordings_text()


def test_a_large_table_is_streamed_and_filtered(hk: KubeHoopy) -> None:
    out = ok(hk.kubectl("get", "secrets", "-A", "--chunk-size=0", timeout=120))
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert len([x for x in lines if x.startswith("big-app ")]) == PER_NS
    assert "kube-system" not in out


def test_a_large_list_in_one_namespace_is_streamed(hk: KubeHoopy, tmp_path: Path) -> None:
    out = ok(hk.kubectl("-n", "big-app", "get", "secrets", "-o", "yaml", "--chunk-size=0"))
    assert VALUE not in out and out.count("kind: Secret") == PER_NS
