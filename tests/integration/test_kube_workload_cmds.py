"""Commands a write has the cluster run, judged as `kubectl exec` commands are: real
kubectl 1.32 against the emulator, under a policy that allows writes broadly and
denies `rm` in exec.  Before the fix each attack created its object (the cluster
would then run `rm`): `kubectl run`/`debug`/`create job`, `apply` of workloads with
the command in an init container, a probe, a hook or a CronJob, and patches of all
three types.  Allowed commands (and none at all) still go through."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
from collections.abc import Iterator

import pytest

from tests.integration.test_kube_hostile import call
from tests.kubefixture import Emu, KubeHoopy, start_hoopy

POLICY = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: [cluster]}
  - name: no-rm-in-pods
    effect: deny
    reason: no deleting files inside pods
    match: {kubernetes: {resources: ["pods/exec", "pods/attach"], commands: ["rm *", "rm"]}}
  - name: no-find-delete
    effect: deny
    reason: find -delete is not for agents
    match: {kubernetes: {commands: ["find *-delete*"]}}
  - name: race-ask
    effect: require_approval
    approvers: [ops]
    match: {kubernetes: {namespaces: [w-race], commands: ["ls *"]}}
  - name: ask-before-shred
    effect: require_approval
    approvers: [ops]
    match: {kubernetes: {commands: ["shred *"]}}
"""

pytest_plugins = ["tests.kubefixture"]  # the emulator fixture, `emu`


@pytest.fixture(scope="module")
def hk(emu: Emu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeHoopy]:
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-kube-wlcmds"), emu, POLICY)
    try:
        yield h
    finally:
        h.stop()


def hk_argv(hk: KubeHoopy, *args: str) -> list[str]:
    os.environ.setdefault("KUBECACHEDIR", str(hk.folder / "kcache"))
    server = f"{hk.server}/k8s/cluster"
    return ["kubectl", "--kubeconfig=/dev/null", "--server", server, "--token", hk.token(),
            "--certificate-authority", str(hk.ca), *args]  # fmt: skip


def _ns(emu: Emu, ns: str) -> None:
    try:
        emu.call("POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    except urllib.error.HTTPError as e:
        assert e.code == 409, e  # (made by an earlier case)


def _exists(emu: Emu, path: str) -> bool:
    try:
        emu.call("GET", path)
    except urllib.error.HTTPError as e:
        assert e.code == 404, e
        return False
    return True


def _denied(r: object, rule: str, where: str = "") -> None:
    out = getattr(r, "stdout", "") + getattr(r, "stderr", "")
    assert getattr(r, "returncode", 0) != 0, out
    assert f"rule '{rule}'" in out, out
    assert where in out, out


def _deployment(name: str, container: dict[str, object], init: bool = False) -> str:
    spec: dict[str, object] = {
        "containers": [{"name": "app", "image": "busybox", "command": ["sleep", "3600"]}]
    }
    spec["initContainers" if init else "containers"] = [{"image": "busybox", **container}]
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}, "spec": spec},
            },
        }
    )


# ---- imperative commands ---------------------------------------------------------------
def test_kubectl_run_with_rm_is_denied(hk: KubeHoopy, emu: Emu) -> None:
    _ns(emu, "w-run")
    r = hk.kubectl("-n", "w-run", "run", "wipe", "--image=busybox", "--", "rm", "-rf", "/data")
    _denied(r, "no-rm-in-pods", "spec.containers[0] (wipe)")
    assert not _exists(emu, "/api/v1/namespaces/w-run/pods/wipe")
    events = [json.loads(x) for x in hk.recordings_text().splitlines() if "w-run/wipe " in x]
    denied = [e for e in events if e.get("rule") == "no-rm-in-pods"]
    assert denied and "(in spec.containers[0] (wipe) command)" in denied[0]["reason"], events
    assert "spec.containers[0] (wipe) command: rm -rf /data" in denied[0]["text"], denied
    assert "rm -rf /data" in denied[0]["commands"], denied
    # `--command` puts it in command rather than args: the same
    r = hk.kubectl(
        "-n", "w-run", "run", "wipe2", "--image=busybox", "--command", "--", "/bin/rm", "-r", "/d"
    )
    _denied(r, "no-rm-in-pods")
    # an allowed command, and none at all (the image's entrypoint), run
    r = hk.kubectl("-n", "w-run", "run", "sleeper", "--image=busybox", "--", "sleep", "3600")
    assert r.returncode == 0, r.stderr
    r = hk.kubectl("-n", "w-run", "run", "plain", "--image=nginx")
    assert r.returncode == 0, r.stderr
    assert _exists(emu, "/api/v1/namespaces/w-run/pods/sleeper")


def test_kubectl_run_shell_and_approval_and_opaque(hk: KubeHoopy, emu: Emu) -> None:
    _ns(emu, "w-run2")
    # inside a shell's code
    r = hk.kubectl(
        "-n", "w-run2", "run", "sh1", "--image=busybox", "--", "sh", "-c", "cd /; r''m -rf data"
    )
    _denied(r, "no-rm-in-pods")
    # a command needing approval makes the write wait for one; denied, it is refused
    from tests.integration.test_pg_approvals import admin, wait_pending

    args = ("-n", "w-run2", "run", "sh2", "--image=busybox", "--", "shred", "/dev/sda")
    p = subprocess.Popen(
        hk_argv(hk, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        a = wait_pending(hk, "shred /dev/sda")  # type: ignore[arg-type]
        assert a["rule"] == "ask-before-shred", a
        status, _ = admin(hk, "POST", f"/api/approvals/{a['id']}/deny")  # type: ignore[arg-type]
        assert status == 200
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode != 0 and "sh2" not in out, out + err
    # a shell line hoopy cannot read is opaque, as in exec
    r = hk.kubectl("-n", "w-run2", "run", "sh3", "--image=busybox", "--", "sh", "-c", "$X")
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "shell_dynamic" in out, out
    for name in ("sh1", "sh2", "sh3"):
        assert not _exists(emu, f"/api/v1/namespaces/w-run2/pods/{name}")


def test_kubectl_debug_with_rm_is_denied(hk: KubeHoopy, emu: Emu) -> None:
    """kubectl debug: PATCH pods/x/ephemeralcontainers (strategic merge)."""
    _ns(emu, "w-dbg")
    emu.call(
        "POST",
        "/api/v1/namespaces/w-dbg/pods",
        {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a", "image": "nginx"}]}},
    )
    r = hk.kubectl("-n", "w-dbg", "debug", "pod/web", "--image=busybox", "--", "rm", "-rf", "/data")
    _denied(r, "no-rm-in-pods", "ephemeralContainers[0]")
    pod = emu.call("GET", "/api/v1/namespaces/w-dbg/pods/web")
    assert not pod["spec"].get("ephemeralContainers"), pod
    r = hk.kubectl("-n", "w-dbg", "debug", "pod/web", "--image=busybox", "--", "ls", "/")
    assert r.returncode == 0, r.stderr
    pod = emu.call("GET", "/api/v1/namespaces/w-dbg/pods/web")
    assert pod["spec"]["ephemeralContainers"][0]["command"] == ["ls", "/"], pod


def test_kubectl_create_job_with_rm_is_denied(hk: KubeHoopy, emu: Emu) -> None:
    _ns(emu, "w-job")
    r = hk.kubectl(
        "-n", "w-job", "create", "job", "wipe", "--image=busybox", "--", "rm", "-rf", "/data"
    )
    _denied(r, "no-rm-in-pods", "spec.template.spec.containers[0] (wipe)")
    assert not _exists(emu, "/apis/batch/v1/namespaces/w-job/jobs/wipe")
    r = hk.kubectl("-n", "w-job", "create", "job", "ok", "--image=busybox", "--", "date")
    assert r.returncode == 0, r.stderr


# ---- kubectl apply -f ----------------------------------------------------------------------
def _apply(hk: KubeHoopy, ns: str, doc: str, *extra: str) -> object:
    return hk.kubectl("-n", ns, "apply", "--validate=false", *extra, "-f", "-", input=doc)


@pytest.mark.parametrize("server_side", [False, True])
def test_apply_deployment_init_container_rm(hk: KubeHoopy, emu: Emu, server_side: bool) -> None:
    ns = f"w-apply-{int(server_side)}"
    _ns(emu, ns)
    extra = ("--server-side",) if server_side else ()
    doc = _deployment("wipe", {"name": "init", "command": ["rm", "-rf", "/data"]}, init=True)
    _denied(_apply(hk, ns, doc, *extra), "no-rm-in-pods", "initContainers[0] (init)")
    assert not _exists(emu, f"/apis/apps/v1/namespaces/{ns}/deployments/wipe")
    ok = _deployment("fine", {"name": "init", "command": ["sh", "-c", "echo ready > /tmp/r"]}, True)
    r = _apply(hk, ns, ok, *extra)
    assert getattr(r, "returncode", 1) == 0, getattr(r, "stderr", "")
    assert _exists(emu, f"/apis/apps/v1/namespaces/{ns}/deployments/fine")


POD_YAML = """
apiVersion: v1
kind: Pod
metadata: {name: NAME}
spec:
  containers:
  - name: app
    image: nginx
"""


@pytest.mark.parametrize(
    "name,extra,where",
    [
        (
            "probe",
            "    livenessProbe:\n      exec:\n        command: [rm, -rf, /data]\n",
            "livenessProbe.exec.command",
        ),
        (
            "hook",
            "    lifecycle:\n      postStart:\n        exec:\n"
            "          command: [sh, -c, 'rm -rf /data']\n",
            "lifecycle.postStart.exec.command",
        ),
        (
            # Kubernetes expands $(VAR) from the container's env before it runs
            "envref",
            "    command: [$(P), -rf, /data]\n    env: [{name: P, value: rm}]\n",
            "(app) command",
        ),
        (
            # `$$` is a `$` to Kubernetes: the shell gets `$(rm -rf /data)`
            "dollars",
            "    command: [sh, -c, 'echo $$(rm -rf /data)']\n",
            "(app) command",
        ),
    ],
)
def test_apply_pod_probe_and_hook(
    hk: KubeHoopy, emu: Emu, name: str, extra: str, where: str
) -> None:
    ns = f"w-pod-{name}"
    _ns(emu, ns)
    doc = POD_YAML.replace("NAME", name) + extra
    _denied(_apply(hk, ns, doc), "no-rm-in-pods", where)
    assert not _exists(emu, f"/api/v1/namespaces/{ns}/pods/{name}")


def test_apply_cronjob_rm(hk: KubeHoopy, emu: Emu) -> None:
    _ns(emu, "w-cron")
    doc = """
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - name: clean
            image: busybox
            args: [rm, -rf, /data]
"""
    _denied(_apply(hk, "w-cron", doc), "no-rm-in-pods", "jobTemplate.spec.template")
    assert not _exists(emu, "/apis/batch/v1/namespaces/w-cron/cronjobs/nightly")
    r = _apply(hk, "w-cron", doc.replace("args: [rm, -rf, /data]", "args: [date]"))
    assert getattr(r, "returncode", 1) == 0, getattr(r, "stderr", "")


# ---- kubectl patch -------------------------------------------------------------------------
PATCHES = {
    "strategic": json.dumps(
        {
            "spec": {
                "template": {
                    "spec": {"containers": [{"name": "app", "command": ["rm", "-rf", "/data"]}]}
                }
            }
        }
    ),
    "merge": json.dumps(
        {
            "spec": {
                "template": {
                    "spec": {
                        "containers": [
                            {"name": "app", "image": "busybox", "args": ["rm", "-rf", "/data"]}
                        ]
                    }
                }
            }
        }
    ),
    "json": json.dumps(
        [
            {
                "op": "add",
                "path": "/spec/template/spec/containers/0/command",
                "value": ["rm", "-rf", "/data"],
            }
        ]
    ),
}


@pytest.mark.parametrize("kind", sorted(PATCHES))
def test_patch_adding_rm_is_denied(hk: KubeHoopy, emu: Emu, kind: str) -> None:
    ns = f"w-patch-{kind}"
    _ns(emu, ns)
    r = _apply(hk, ns, _deployment("web", {"name": "side", "command": ["sleep", "1"]}))
    assert getattr(r, "returncode", 1) == 0, getattr(r, "stderr", "")
    r = hk.kubectl("-n", ns, "patch", "deployment", "web", f"--type={kind}", "-p", PATCHES[kind])
    _denied(r, "no-rm-in-pods")
    dep = emu.call("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web")
    assert "rm" not in json.dumps(dep["spec"]), dep
    # a patch that sets an allowed command goes through
    ok = PATCHES[kind].replace('"rm", "-rf", "/data"', '"sleep", "5"')
    r = hk.kubectl("-n", ns, "patch", "deployment", "web", f"--type={kind}", "-p", ok)
    assert r.returncode == 0, r.stderr


def test_raw_bodies_hoopy_cannot_read_are_refused(hk: KubeHoopy, emu: Emu) -> None:
    """A protobuf pod, or a JSON patch copying into a container, fails closed."""
    _ns(emu, "w-raw")
    code, body = call(
        hk,
        "POST",
        "/k8s/cluster/api/v1/namespaces/w-raw/pods",
        body=b"k8s\x00\x0a\x00",
        headers={"Content-Type": "application/vnd.kubernetes.protobuf"},
    )
    assert code == 400 and "protobuf" in json.dumps(body), body
    emu.call(
        "POST",
        "/api/v1/namespaces/w-raw/pods",
        {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "nginx"}]}},
    )
    ops = [{"op": "copy", "from": "/metadata/labels/x", "path": "/spec/containers/0/command"}]
    code, body = call(
        hk,
        "PATCH",
        "/k8s/cluster/api/v1/namespaces/w-raw/pods/p",
        body=json.dumps(ops).encode(),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert code == 403 and "shell_unparseable" in json.dumps(body), body


@pytest.mark.parametrize(
    "args",
    [
        ("create", "deployment", "wipe", "--image=busybox", "--", "rm", "-rf", "/data"),
        ("create", "cronjob", "wipe", "--image=busybox", "--schedule=* * * * *", "--", "rm", "/d"),
    ],
)
def test_kubectl_create_typed_protobuf(hk: KubeHoopy, emu: Emu, args: tuple[str, ...]) -> None:
    """kubectl's typed clients send these as protobuf."""
    ns = f"w-typed-{args[1][:4]}"
    _ns(emu, ns)
    _denied(hk.kubectl("-n", ns, *args), "no-rm-in-pods", "containers[0] (")
    group = "apps" if args[1] == "deployment" else "batch"
    assert not _exists(emu, f"/apis/{group}/v1/namespaces/{ns}/{args[1]}s/wipe")
    ok = tuple("date" if a == "rm" else a for a in args if a not in ("-rf", "/data", "/d"))
    r = hk.kubectl("-n", ns, *ok)
    assert r.returncode == 0, r.stderr


def test_kubectl_replace_is_judged(hk: KubeHoopy, emu: Emu) -> None:
    """PUT: the whole object, as a create."""
    _ns(emu, "w-put")
    doc = _deployment("web", {"name": "side", "command": ["sleep", "1"]})
    r = _apply(hk, "w-put", doc)
    assert getattr(r, "returncode", 1) == 0, getattr(r, "stderr", "")
    bad = doc.replace('"sleep", "1"', '"rm", "-rf", "/data"')
    r = hk.kubectl("-n", "w-put", "replace", "--validate=false", "-f", "-", input=bad)
    _denied(r, "no-rm-in-pods", "spec.template.spec.containers[0] (side)")
    dep = emu.call("GET", "/apis/apps/v1/namespaces/w-put/deployments/web")
    assert "rm" not in json.dumps(dep["spec"]), dep


@pytest.mark.parametrize(
    "body,ctype",
    [
        # a key spelled with a JSON escape is the same key to the cluster
        (b'{"metadata":{"name":"e1"},"spec":{"containers":[{"name":"a","image":"b",'
         b'"\\u0063ommand":["rm","-rf","/data"]}]}}', "application/json"),
        # YAML anchors and flow style
        (b"metadata: {name: e2}\nx: &c [rm, -rf, /data]\nspec:\n  containers:\n"
         b"  - {name: a, image: b, command: *c}\n", "application/yaml"),
        # a List wrapping the pod: every container list anywhere in the body is read
        (b'{"metadata":{"name":"e3"},"spec":{"containers":[{"name":"a","image":"b"}]},'
         b'"items":[{"spec":{"initContainers":[{"name":"i","args":["rm","/x"]}]}}]}',
         "application/json"),
    ],
)  # fmt: skip
def test_raw_bodies_in_other_spellings(hk: KubeHoopy, emu: Emu, body: bytes, ctype: str) -> None:
    _ns(emu, "w-spell")
    code, answer = call(
        hk,
        "POST",
        "/k8s/cluster/api/v1/namespaces/w-spell/pods",
        body=body,
        headers={"Content-Type": ctype},
    )
    assert code == 403 and "no-rm-in-pods" in json.dumps(answer), answer


FIND = {"name": "side", "command": ["find"], "args": ["/tmp", "-name", "x"]}
ECHO = {"name": "side", "command": ["echo"], "args": ["/", "-delete"]}
HALF_PATCHES = [
    # args alone, onto `find`: `find / -delete`
    (FIND, "strategic", '{"spec":{"template":{"spec":{"containers":[{"name":"side",'
     '"args":["/","-delete"]}]}}}}'),
    (FIND, "json", '[{"op":"replace","path":"/spec/template/spec/containers/0/args",'
     '"value":["/","-delete"]}]'),
    # the command alone, onto the args `/ -delete`
    (ECHO, "strategic", '{"spec":{"template":{"spec":{"containers":[{"name":"side",'
     '"command":["find"]}]}}}}'),
    (ECHO, "json", '[{"op":"replace","path":"/spec/template/spec/containers/0/command",'
     '"value":["find"]}]'),
]  # fmt: skip


@pytest.mark.parametrize("i", range(len(HALF_PATCHES)))
def test_half_a_command_is_judged_with_the_other_half(hk: KubeHoopy, emu: Emu, i: int) -> None:
    """A patch of only the args (or only the command) of a container: what runs is
    the object's command with the patch's args; hoopy reads the object to judge it."""
    start, kind, patch = HALF_PATCHES[i]
    ns = f"w-half-{i}"
    _ns(emu, ns)
    r = _apply(hk, ns, _deployment("web", start))
    assert getattr(r, "returncode", 1) == 0, getattr(r, "stderr", "")
    r = hk.kubectl("-n", ns, "patch", "deployment", "web", f"--type={kind}", "-p", patch)
    _denied(r, "no-find-delete", "containers[0]")
    dep = emu.call("GET", f"/apis/apps/v1/namespaces/{ns}/deployments/web")
    assert "-delete" not in json.dumps(dep["spec"]) or start is ECHO, dep
    # harmless halves still go through
    ok = patch.replace('"/","-delete"', '"/tmp","-name","y"').replace('"find"', '"ls"')
    r = hk.kubectl("-n", ns, "patch", "deployment", "web", f"--type={kind}", "-p", ok)
    assert r.returncode == 0, r.stderr


def test_server_side_apply_of_half_a_command(hk: KubeHoopy, emu: Emu) -> None:
    """An apply that gives args only keeps the command another manager set."""
    _ns(emu, "w-half-ssa")
    r = _apply(hk, "w-half-ssa", _deployment("web", FIND))
    assert getattr(r, "returncode", 1) == 0, getattr(r, "stderr", "")
    half = _deployment("web", {"name": "side", "args": ["/", "-delete"]})
    r = _apply(hk, "w-half-ssa", half, "--server-side", "--force-conflicts")
    _denied(r, "no-find-delete", "(side) command")
    # applied as a new object (nothing to complete), args alone are judged as they are
    r = _apply(hk, "w-half-ssa", half.replace('"web"', '"fresh"'), "--server-side")
    assert getattr(r, "returncode", 1) == 0, getattr(r, "stderr", "")


def test_two_halves_racing_are_judged_one_after_the_other(hk: KubeHoopy, emu: Emu) -> None:
    """Patch A gives the args `/ -delete` (onto `ls`: it waits for an approval), patch B
    the command `find`.  Judged each against the object before the other ran, both
    pass and `find / -delete` runs; hoopy takes writes carrying commands to one object
    one at a time, so B is judged on what A left."""
    from tests.integration.test_pg_approvals import admin, wait_pending

    _ns(emu, "w-race")
    side = {"name": "side", "image": "busybox", "command": ["ls"], "args": ["/tmp"]}
    spec = {"selector": {}, "template": {"spec": {"containers": [side]}}}
    emu.call("POST", "/apis/apps/v1/namespaces/w-race/deployments",
             {"metadata": {"name": "web"}, "spec": spec})  # fmt: skip

    def patch(half: str) -> subprocess.Popen[str]:
        c = json.loads("{" + half + "}")
        body = json.dumps({"spec": {"template": {"spec": {"containers": [{"name": "side", **c}]}}}})
        args = hk_argv(hk, "-n", "w-race", "patch", "deployment", "web", "-p", body)
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    a = patch('"args":["/","-delete"]')
    b = None
    try:
        pending = wait_pending(hk, "w-race/web")  # type: ignore[arg-type]
        b = patch('"command":["find"]')
        with pytest.raises(subprocess.TimeoutExpired):
            b.wait(3)  # (it waits for A: without the lock it would be let through now)
        status, _ = admin(hk, "POST", f"/api/approvals/{pending['id']}/approve", {"by": "o"})  # type: ignore[arg-type]
        assert status == 200
        _, err_a = a.communicate(timeout=30)
        assert a.returncode == 0, err_a
        out_b, err_b = b.communicate(timeout=30)
        assert b.returncode != 0 and "no-find-delete" in err_b, out_b + err_b
    finally:
        a.kill()
        if b is not None:
            b.kill()


NO_COMMAND_RULES = """
rules:
  - name: agents
    effect: allow
    match: {groups: [agents], connectors: [cluster]}
"""


def test_opaque_workload_commands_pass_where_no_rule_is_about_commands(
    emu: Emu, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Opaque commands are refused to protect rules about commands; a policy with none
    lets routine workloads (`/app/server`, `python3 app.py`, `sh -c "$X"`) be created,
    while exec of the same stays opaque (refused), as before."""
    h = start_hoopy(tmp_path_factory.mktemp("hoopy-kube-nocmds"), emu, NO_COMMAND_RULES)
    try:
        _ns(emu, "w-plain")
        runs = {
            "app1": ("--command", "--", "/app/server", "--port", "80"),
            "app2": ("--", "python3", "app.py"),
            "app3": ("--", "sh", "-c", "$X"),
        }
        for name, tail in runs.items():
            r = h.kubectl("-n", "w-plain", "run", name, "--image=busybox", *tail)
            assert r.returncode == 0, r.stdout + r.stderr
            assert _exists(emu, f"/api/v1/namespaces/w-plain/pods/{name}")
        r = h.kubectl("-n", "w-plain", "exec", "app2", "--", "python3", "-c", "print(1)")
        assert r.returncode != 0 and "shell_code" in r.stdout + r.stderr, r.stdout + r.stderr
    finally:
        h.stop()
