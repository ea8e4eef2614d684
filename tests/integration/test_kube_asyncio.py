"""kubernetes-asyncio (the Python client) through hoopy: typed CRUD, a watch, a
denial as ApiException 403, Secrets masked."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.stream import WsApiClient

from hoopy.kubeemu.__main__ import kubeconfig
from tests.kubefixture import Emu, KubeHoopy, start_emulator, start_hoopy

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


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Emu, KubeHoopy]]:
    emu = start_emulator(tmp_path_factory.mktemp("kubeemu"))
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-kube"), emu, POLICY)
    try:
        yield emu, h
    finally:
        h.stop()
        emu.stop()


def test_python_client_through_hoopy(setup: tuple[Emu, KubeHoopy], tmp_path: Path) -> None:
    emu, h = setup
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(kubeconfig(f"{h.server}/k8s/cluster", h.ca, h.token(sub="py-agent")))

    async def run() -> None:
        await config.load_kube_config(config_file=str(cfg))
        async with client.ApiClient() as api:
            v1 = client.CoreV1Api(api)
            await v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="py")))
            secret = client.V1Secret(
                metadata=client.V1ObjectMeta(name="py-secret"),
                string_data={"token": "py-secret-value-123"},
            )
            await v1.create_namespaced_secret("py", secret)
            got = await v1.read_namespaced_secret("py-secret", "py")
            assert base64.b64decode(got.data["token"]) == b"hoopy:masked"
            listed = await v1.list_namespaced_secret("py")
            assert [base64.b64decode(s.data["token"]) for s in listed.items] == [b"hoopy:masked"]
            await v1.create_namespaced_pod(
                "py",
                client.V1Pod(
                    metadata=client.V1ObjectMeta(name="py-pod"),
                    spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="x")]),
                ),
            )
            w = watch.Watch()
            names = []
            async with w.stream(v1.list_namespaced_pod, "py", timeout_seconds=5) as stream:
                async for ev in stream:
                    names.append(ev["object"].metadata.name)
                    w.stop()
            assert names == ["py-pod"]
            with pytest.raises(client.ApiException) as denied:
                await v1.list_namespaced_pod("kube-system")
            assert denied.value.status == 403 and "no-kube-system" in str(denied.value.body)
            async with WsApiClient() as ws_api:  # exec over v4.channel.k8s.io
                out = await client.CoreV1Api(ws_api).connect_get_namespaced_pod_exec(
                    "py-pod",
                    "py",
                    command=["sh", "-c", "echo via-v4; echo err >&2"],
                    stderr=True,
                    stdin=False,
                    stdout=True,
                    tty=False,
                )
            assert "via-v4" in out and "err" in out
            await v1.delete_namespaced_pod("py-pod", "py")
            assert (await v1.list_namespaced_pod("py")).items == []

    asyncio.run(run())
    raw = emu.call("GET", "/api/v1/namespaces/py/secrets/py-secret")
    assert base64.b64decode(raw["data"]["token"]) == b"py-secret-value-123"  # really there
