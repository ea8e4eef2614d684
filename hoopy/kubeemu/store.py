"""The emulator's object store: resources, resourceVersions, watch history.

Pure data (no HTTP): one dict per (resource, namespace, name), a global
resourceVersion counter like etcd's revision, and a bounded event history that
watches replay from a given resourceVersion before waiting for new events.
"""

from __future__ import annotations

import asyncio
import builtins
import copy
import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    resource: str
    kind: str
    namespaced: bool
    short: tuple[str, ...] = ()
    verbs: tuple[str, ...] = (
        "create",
        "delete",
        "deletecollection",
        "get",
        "list",
        "patch",
        "update",
        "watch",
    )

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = (
    Kind("", "v1", "pods", "Pod", True, ("po",)),
    Kind("", "v1", "secrets", "Secret", True),
    Kind("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    Kind("", "v1", "services", "Service", True, ("svc",)),
    Kind(
        "",
        "v1",
        "namespaces",
        "Namespace",
        False,
        ("ns",),
        ("create", "delete", "get", "list", "patch", "update", "watch"),
    ),
    Kind("apps", "v1", "deployments", "Deployment", True, ("deploy",)),
    # (appended: KINDS[4] is namespaces) kinds that carry pod templates too
    Kind("batch", "v1", "cronjobs", "CronJob", True, ("cj",)),
    Kind("", "v1", "replicationcontrollers", "ReplicationController", True, ("rc",)),
    Kind("", "v1", "podtemplates", "PodTemplate", True),
    Kind("apps", "v1", "controllerrevisions", "ControllerRevision", True),
    Kind("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",)),
    Kind("batch", "v1", "jobs", "Job", True),
    Kind("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",)),
    Kind("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",)),
)
BY_PATH = {(k.group, k.version, k.resource): k for k in KINDS}
SUBRESOURCES = {
    "pods": ("log", "exec", "attach", "portforward", "status", "ephemeralcontainers"),
    "deployments": ("status", "scale"),
    "serviceaccounts": ("token",),
}

HISTORY = 5000


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Gone(Exception):
    pass


class Store:
    def __init__(self) -> None:
        self.rv = 1
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, type, resource, obj
        self.changed = asyncio.Condition()
        self.logs: dict[tuple[str, str], list[str]] = {}
        self.log_closed: set[tuple[str, str]] = set()
        for ns in ("default", "kube-system"):
            self.put(KINDS[4], "", {"metadata": {"name": ns}})

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    def get(self, kind: Kind, ns: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((kind.resource, ns, name))

    def list(self, kind: Kind, ns: str) -> list[dict[str, Any]]:
        out = [
            o
            for (res, ons, _), o in self.objects.items()
            if res == kind.resource and (not ns or ons == ns)
        ]
        return sorted(
            out, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )

    def put(self, kind: Kind, ns: str, obj: dict[str, Any], event: str = "") -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        key = (kind.resource, ns, meta["name"])
        old = self.objects.get(key)
        obj["apiVersion"] = kind.api_version
        obj["kind"] = kind.kind
        if kind.namespaced:
            meta["namespace"] = ns
        if not meta.get("uid"):
            meta["uid"] = old["metadata"]["uid"] if old else str(uuid.uuid4())
        if not meta.get("creationTimestamp"):
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"] if old else now()
        meta["resourceVersion"] = self._bump()
        _defaults(kind, obj, old)
        self.objects[key] = obj
        self._event(event or ("MODIFIED" if old else "ADDED"), kind, obj)
        return obj

    def delete(self, kind: Kind, ns: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.pop((kind.resource, ns, name), None)
        if obj is not None:
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = self._bump()
            self._event("DELETED", kind, obj)
            if kind.resource == "pods":
                self.log_closed.add((ns, name))
                self._wake()
        return obj

    def _event(self, type_: str, kind: Kind, obj: dict[str, Any]) -> None:
        self.history.append((self.rv, type_, kind.resource, obj))
        del self.history[:-HISTORY]
        self._wake()

    def _wake(self) -> None:
        async def notify() -> None:
            async with self.changed:
                self.changed.notify_all()

        asyncio.get_running_loop().create_task(notify())

    def since(self, rv: int, resource: str) -> builtins.list[tuple[int, str, dict[str, Any]]]:
        if self.history and rv and rv < self.history[0][0] - 1:
            raise Gone()
        return [(r, t, o) for r, t, res, o in self.history if r > rv and res == resource]

    def append_log(self, ns: str, pod: str, lines: builtins.list[str], close: bool) -> None:
        self.logs.setdefault((ns, pod), []).extend(lines)
        if close:
            self.log_closed.add((ns, pod))
        self._wake()


def _defaults(kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
    """What controllers would fill in: a running pod, a ready deployment, an active ns."""
    if kind.resource == "pods":
        spec = obj.setdefault("spec", {})
        spec.setdefault("containers", [{"name": "main", "image": "busybox"}])
        st = obj.setdefault("status", {})
        st.setdefault("phase", "Running")
        st.setdefault("startTime", obj["metadata"]["creationTimestamp"])
        st.setdefault(
            "containerStatuses",
            [
                {
                    "name": c.get("name", "main"),
                    "ready": True,
                    "restartCount": 0,
                    "image": c.get("image", ""),
                    "imageID": "",
                    "started": True,
                    "state": {"running": {"startedAt": obj["metadata"]["creationTimestamp"]}},
                }
                for c in spec["containers"]
            ],
        )
    elif kind.resource == "namespaces":
        obj.setdefault("status", {"phase": "Active"})
    elif kind.resource == "deployments":
        replicas = obj.setdefault("spec", {}).get("replicas", 1)
        obj["spec"]["replicas"] = replicas
        obj["status"] = {
            "replicas": replicas,
            "readyReplicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas,
            "observedGeneration": 1,
        }
        obj["metadata"]["generation"] = 1
    elif kind.resource == "secrets":
        obj["type"] = obj.get("type") or "Opaque"
        string_data = obj.pop("stringData", None)
        if string_data:
            import base64

            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(str(v).encode()).decode()
    elif kind.resource == "services":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("clusterIP", "10.96.0.10")
