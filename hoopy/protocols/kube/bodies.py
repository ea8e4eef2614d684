"""What hoopy reads inside Kubernetes bodies (sans-I/O: decoded JSON in and out).

- `body_namespace`: the `metadata.namespace` a request body names (JSON, YAML,
  JSON patch, or Kubernetes protobuf), so a body cannot move a write into another
  namespace than the path (and the policy) says.
- `Inspector`: rewrites one response value (an object, a `<Kind>List`, a `List`, a
  `Table`, a watch event): drops items the policy does not allow the agent to see
  (cross-namespace lists and watches), masks Secret `data`/`stringData` (and the
  last-applied annotation that repeats them), and runs mask rules' detectors over
  ConfigMap data and container env values.
"""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from hoopy.masking import ValueMasker
from hoopy.protocols.kube.strictload import AmbiguousKey, load_json, load_yaml

MASKED = "hoopy:masked"
MASKED_B64 = base64.b64encode(MASKED.encode()).decode()
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
PROTOBUF_MAGIC = b"k8s\x00"
MAX_YAML = 4 * 1024 * 1024


# Kinds whose spec.template is a pod template (CronJob, PodTemplate and
# ControllerRevision hold theirs elsewhere).
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet", "ReplicationController")


class BodyError(ValueError):
    pass


def body_namespace(content_type: str, body: bytes) -> list[str]:
    """Every namespace the body names (empty when none); BodyError if unreadable."""
    if not body:
        return []
    if "protobuf" in content_type:
        return _protobuf_namespace(body)
    value = _decode(content_type, body)
    if isinstance(value, list):  # JSON patch: ops on /metadata/namespace
        return _patch_namespaces(value)
    if not isinstance(value, dict):
        return []
    meta = value.get("metadata")
    if isinstance(meta, dict) and meta.get("namespace") not in (None, ""):
        return [str(meta["namespace"])]
    return []


def body_name(content_type: str, body: bytes) -> str:
    """The `metadata.name` of a create's body ("" when none): a create's path has no
    name, so name rules are judged on this one."""
    return body_names(content_type, body)[0]


def body_names(content_type: str, body: bytes) -> tuple[str, str]:
    """A create body's `metadata.name` and `metadata.generateName` ("" when absent).
    The cluster uses generateName only when name is empty."""
    if not body:
        return "", ""
    if "protobuf" in content_type:
        if not body.startswith(PROTOBUF_MAGIC):
            raise BodyError("not a Kubernetes protobuf envelope")
        pb = _message(_field(body[4:], 2) or b"", 1)  # ObjectMeta: name 1, generateName 2
        try:
            return (_field(pb, 1) or b"").decode(), (_field(pb, 2) or b"").decode()
        except UnicodeDecodeError:
            raise BodyError("undecodable name in protobuf") from None
    value = _decode(content_type, body)
    meta = value.get("metadata") if isinstance(value, dict) else None
    if not isinstance(meta, dict):
        return "", ""
    name, generate = meta.get("name"), meta.get("generateName")
    return (
        name if isinstance(name, str) else "",
        generate if isinstance(generate, str) else "",
    )


def _decode(content_type: str, body: bytes) -> Any:
    """A JSON or YAML body, read strictly (strictload.py: no key twice)."""
    try:
        if "yaml" in content_type:
            if len(body) > MAX_YAML:
                raise BodyError("YAML body too large")
            return load_yaml(body)
        return load_json(body)
    except AmbiguousKey as e:
        raise BodyError(f"the request body is ambiguous: {e}") from None
    except (ValueError, yaml.YAMLError, RecursionError):
        raise BodyError("the request body is not valid JSON/YAML") from None


def _patch_namespaces(ops: list[Any]) -> list[str]:
    found = []
    for op in ops:
        if not isinstance(op, dict):
            continue
        path, v = str(op.get("path", "")), op.get("value")
        if path == "/metadata/namespace" or str(op.get("from", "")).startswith(
            "/metadata/namespace"
        ):
            if op.get("op") not in ("add", "replace", "test"):
                raise BodyError("a JSON patch may only set metadata.namespace to a value")
            found.append(str(v))
        elif path in ("", "/metadata") and isinstance(v, dict):
            meta = v.get("metadata", {}) if path == "" else v
            if isinstance(meta, dict) and meta.get("namespace") not in (None, ""):
                found.append(str(meta["namespace"]))
    return found


# JSON patch operations that read a value of the object: `copy` and `move` could put
# a masked value where no masking reaches (an annotation, a label, a field whose
# validation error quotes it), and `test` tells whether a guess of it is right.
READING_OPS = ("copy", "move", "test")


def reading_op(content_type: str, body: bytes) -> str:
    """The first JSON patch operation of the body that reads a value ("" if none); the
    body is read whatever its Content-Type says (a list is a JSON patch or an error)."""
    if not body or "protobuf" in content_type:
        return ""
    value = _decode(content_type, body)
    if not isinstance(value, list):
        return ""
    for op in value:
        kind = op.get("op") if isinstance(op, dict) else None
        if not isinstance(kind, str) or kind.lower() in READING_OPS:
            return str(kind)
    return ""


def _varint(b: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if i >= len(b) or shift > 63:
            raise BodyError("truncated protobuf")
        c = b[i]
        i += 1
        value |= (c & 0x7F) << shift
        if c < 0x80:
            return value, i
        shift += 7


def _message(b: bytes, number: int) -> bytes:
    """Embedded message field `number`: protobuf merges repeated occurrences (as Go
    decodes them), which is the same as parsing them concatenated."""
    return b"".join(_fields(b, number))


def _field(b: bytes, number: int) -> bytes | None:
    """The last length-delimited field `number` (a string or bytes: the last wins)."""
    found = _fields(b, number)
    return found[-1] if found else None


def _fields(b: bytes, number: int) -> list[bytes]:
    """Every length-delimited field `number` of a protobuf message, in order."""
    return [v for num, wire, v in all_fields(b) if num == number and wire == 2]


def all_fields(b: bytes) -> list[tuple[int, int, Any]]:
    """(number, wire type, value) of each field of one message, in order."""
    out: list[tuple[int, int, Any]] = []
    i = 0
    while i < len(b):
        v: Any
        key, i = _varint(b, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(b, i)
        elif wire == 2:
            n, i = _varint(b, i)
            if i + n > len(b):
                raise BodyError("truncated protobuf")
            v, i = b[i : i + n], i + n
        elif wire in (1, 5):
            n = 8 if wire == 1 else 4
            if i + n > len(b):
                raise BodyError("truncated protobuf")
            v, i = b[i : i + n], i + n
        else:
            raise BodyError("unsupported protobuf wire type")
        out.append((num, wire, v))
    return out


def _protobuf_namespace(body: bytes) -> list[str]:
    """runtime.Unknown{2: raw object{1: ObjectMeta{3: namespace}}}."""
    if not body.startswith(PROTOBUF_MAGIC):
        raise BodyError("not a Kubernetes protobuf envelope")
    raw = _field(body[4:], 2) or b""  # runtime.Unknown.raw: bytes
    meta = _message(raw, 1)  # ObjectMeta: an embedded message
    ns = _field(meta, 3)
    try:
        return [ns.decode()] if ns else []
    except UnicodeDecodeError:
        raise BodyError("undecodable namespace in protobuf") from None


# -------------------------------------------------------------------- responses


@dataclass
class Inspector:
    """One response's rewriting.  `visible(namespace, name)`: may the agent see an item
    of a collection?  `masker`: mask rules' detectors (None: no rule applies)."""

    mask_secrets: bool = True
    masker: ValueMasker | None = None
    visible: Callable[[str, str], bool] | None = None
    # Each item's own masker (its namespace and name, as `visible`), when mask rules
    # scoped to namespaces or names mask some items of a collection and not others
    item_masker: Callable[[str, str], ValueMasker | None] | None = None
    counts: Counter[str] = field(default_factory=Counter)
    # The kind the request's resource holds (`Secret` for secrets): kube-apiserver
    # omits each list item's kind (kubernetes/kubernetes#3030), so an item without one
    # is of the list's kind, or of this one.
    kind: str = ""

    def value(self, v: Any) -> Any:
        """The rewritten form of any decoded response value (a new object: the input is
        not modified)."""
        if not isinstance(v, dict):
            return v
        kind = v.get("kind")
        if kind == "Table":
            return self._table(v)
        if isinstance(v.get("items"), list) and (kind is None or str(kind).endswith("List")):
            of = str(kind)[:-4] if kind and kind != "List" else ""
            out = dict(v)
            items = (self.list_item(i, of) for i in v["items"])
            out["items"] = [i for i in items if i is not self.HIDDEN]
            return out
        if set(v) <= {"type", "object"} and isinstance(v.get("object"), dict):  # watch event
            return {"type": v.get("type"), "object": self.value(v["object"])}
        return self.item(v)

    def event(self, ev: Any) -> Any | None:
        """A watch event, or None when its object must not be shown."""
        if not isinstance(ev, dict) or not isinstance(ev.get("object"), dict):
            return self.value(ev)  # not an event: whatever it is, it is still read
        obj = ev["object"]
        if obj.get("kind") == "Table":
            table = self._table(obj)
            if obj.get("rows") and not table.get("rows"):
                return None
            return {**ev, "object": table}
        if obj.get("kind") != "Status" and not self._shown(obj):
            return None
        return {**ev, "object": self.item(obj)}

    def _table(self, t: dict[str, Any]) -> dict[str, Any]:
        out = dict(t)
        rows = (self.table_row(r) for r in t.get("rows") or [])
        out["rows"] = [r for r in rows if r is not self.HIDDEN]
        return out

    # What list_item / table_row return for an item the agent must not see.
    HIDDEN: ClassVar[Any] = object()

    def list_item(self, obj: Any, of: str) -> Any:
        """An item of a list of `of` (liststream.py sends them one by one): rewritten,
        or HIDDEN."""
        return self.item(obj, of) if self._shown(obj, of) else self.HIDDEN

    def table_row(self, row: Any) -> Any:
        """A row of a Table: rewritten, or HIDDEN."""
        if not isinstance(row, dict):
            return self.HIDDEN
        obj = row.get("object")
        if self.visible is not None and not (isinstance(obj, dict) and self._shown(obj)):
            self.counts["filtered"] += 1
            return self.HIDDEN
        if isinstance(obj, dict):
            row = {**row, "object": self.item(obj)}
        return row

    def _kind(self, obj: dict[str, Any], of: str = "") -> str:
        """The object's kind, else the list's (`of`), else the request's."""
        return str(obj.get("kind") or of or self.kind)

    def _where(self, obj: dict[str, Any], of: str = "") -> tuple[str, str]:
        """An item's namespace and name (a Namespace's namespace is itself)."""
        meta: dict[str, Any] = obj["metadata"] if isinstance(obj.get("metadata"), dict) else {}
        ns = meta.get("namespace") or ""
        name = meta.get("name") or ""
        if "Namespace" in (self._kind(obj, of), self.kind):  # (as Secrets, above)
            ns = name
        return str(ns), str(name)

    def _shown(self, obj: Any, of: str = "") -> bool:
        if self.visible is None:
            return True
        if not isinstance(obj, dict):
            return False
        ok = self.visible(*self._where(obj, of))
        if not ok:
            self.counts["filtered"] += 1
        return ok

    def item(self, obj: Any, of: str = "") -> Any:
        if not isinstance(obj, dict):
            return obj
        if self.item_masker is None or obj.get("kind") == "Table" or "items" in obj:
            return self._item(obj, of)
        held = self.masker  # (this item's masker, for this item only)
        self.masker = self.item_masker(*self._where(obj, of))
        try:
            return self._item(obj, of)
        finally:
            self.masker = held

    def _item(self, obj: dict[str, Any], of: str) -> Any:
        kind = self._kind(obj, of)
        if kind == "Table" or (kind.endswith("List") and isinstance(obj.get("items"), list)):
            return self.value(obj)  # a list inside a `List`: its items are read too
        # a secrets request's answer is Secrets whatever kind the answer (or its list)
        # gives them: the cluster's word on the kind is not what keeps a value hidden
        if self.mask_secrets and "Secret" in (kind, self.kind):
            return self._secret(obj)
        if self.mask_secrets and "TokenRequest" in (kind, self.kind):
            return self._token(obj)
        if self.masker is not None:
            # (the request's kind too: a Table's PartialObjectMetadata rows carry only
            # the metadata, whose last-applied annotation repeats data and env values)
            kinds = (kind, self.kind)
            if "ConfigMap" in kinds:
                return self._applied(self._binary(self._mapping(obj, "data")))
            if "Pod" in kinds:
                return self._applied(self._pod(obj))
            if any(k in WORKLOADS for k in kinds):
                return self._applied(self._workload(obj))
            if "CronJob" in kinds:
                return self._applied(self._cronjob(obj))
            if "PodTemplate" in kinds:
                return self._applied(self._template(obj, "template"))
            if "ControllerRevision" in kinds:
                # its data is a StatefulSet's or DaemonSet's template as a patch: every
                # string of it is read, whatever shape the patch has
                masked, counts = self.masker.mask_json(obj.get("data"))
                self.counts.update(counts)
                return self._applied({**obj, "data": masked} if "data" in obj else obj)
        return obj

    def _secret(self, obj: dict[str, Any]) -> dict[str, Any]:
        out = dict(obj)
        for key in ("data", "stringData"):
            values = obj.get(key)
            if isinstance(values, dict):
                masked = MASKED_B64 if key == "data" else MASKED
                out[key] = {k: masked for k in values}
                self.counts["secret_values"] += len(values)
        meta = obj.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("annotations"), dict):
            ann = meta["annotations"]
            if LAST_APPLIED in ann:
                out["metadata"] = {**meta, "annotations": {**ann, LAST_APPLIED: MASKED}}
        return out

    def _token(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A TokenRequest's answer (`kubectl create token`): a bearer token for the
        cluster, what a service-account-token Secret holds, masked as that would be."""
        st = obj.get("status")
        if not isinstance(st, dict) or "token" not in st:
            return obj
        self.counts["secret_values"] += 1
        return {**obj, "status": {**st, "token": MASKED}}

    def _mapping(self, obj: dict[str, Any], key: str) -> dict[str, Any]:
        assert self.masker is not None
        values = obj.get(key)
        if not isinstance(values, dict):
            return obj
        masked, counts = self.masker.mask_json(values)
        self.counts.update(counts)
        return {**obj, key: masked}

    def _binary(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A ConfigMap's binaryData (base64, `create configmap --from-file` of a file
        that is not UTF-8): each value read byte for byte (Latin-1), masked as text, and
        encoded again; a value that is not base64 is masked as text."""
        assert self.masker is not None
        values = obj.get("binaryData")
        if not isinstance(values, dict):
            return obj
        out: dict[str, Any] = {}
        for key, value in values.items():
            if not isinstance(value, str):
                out[key] = value
                continue
            try:
                text = base64.b64decode(value, validate=True).decode("latin-1")
            except ValueError:
                out[key], counts = self.masker.mask_text(value)
                self.counts.update(counts)
                continue
            masked, counts = self.masker.mask_text(text)
            self.counts.update(counts)
            out[key] = base64.b64encode(masked.encode("latin-1", "replace")).decode()
        return {**obj, "binaryData": out}

    def _applied(self, obj: dict[str, Any]) -> dict[str, Any]:
        """The last-applied annotation (the object as `kubectl apply` sent it) masked."""
        assert self.masker is not None
        meta = obj.get("metadata")
        if isinstance(meta, dict) and isinstance(meta.get("annotations"), dict):
            ann = meta["annotations"]
            if LAST_APPLIED in ann:
                text, c = self.masker.mask_json_text(str(ann[LAST_APPLIED]))
                self.counts.update(c)
                return {**obj, "metadata": {**meta, "annotations": {**ann, LAST_APPLIED: text}}}
        return obj

    def _containers(self, spec: Any) -> Any:
        if not isinstance(spec, dict):
            return spec
        out = dict(spec)
        for key in ("containers", "initContainers", "ephemeralContainers"):
            if isinstance(spec.get(key), list):
                out[key] = [self._container(c) for c in spec[key]]
        return out

    def _container(self, c: Any) -> Any:
        assert self.masker is not None
        if not isinstance(c, dict) or not isinstance(c.get("env"), list):
            return c
        env = []
        for e in c["env"]:
            if isinstance(e, dict) and isinstance(e.get("value"), str):
                text, counts = self.masker.mask_text(e["value"])
                self.counts.update(counts)
                e = {**e, "value": text}
            env.append(e)
        return {**c, "env": env}

    def _pod(self, obj: dict[str, Any]) -> dict[str, Any]:
        if "spec" not in obj:
            return obj
        return {**obj, "spec": self._containers(obj.get("spec"))}

    def _workload(self, obj: dict[str, Any]) -> dict[str, Any]:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return obj
        return {**obj, "spec": self._template(spec, "template")}

    def _template(self, holder: dict[str, Any], key: str) -> dict[str, Any]:
        """`holder[key]` is a PodTemplateSpec: its containers' env values masked."""
        tpl = holder.get(key)
        if not isinstance(tpl, dict):
            return holder
        return {**holder, key: {**tpl, "spec": self._containers(tpl.get("spec"))}}

    def _cronjob(self, obj: dict[str, Any]) -> dict[str, Any]:
        spec = obj.get("spec")
        if not isinstance(spec, dict) or not isinstance(spec.get("jobTemplate"), dict):
            return obj
        job = spec["jobTemplate"]
        return {**obj, "spec": {**spec, "jobTemplate": self._workload(job)}}
