"""Unit tables for the commands a Kubernetes write carries (podcmds.py, podproto.py,
commands.judge_write); real kubectl runs them in
tests/integration/test_kube_workload_cmds.py."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest

from hoopy.policy import Command, Decision, Identity, KubeMatch, Match, PolicySet, Rule, decide
from hoopy.protocols.kube.bodies import BodyError
from hoopy.protocols.kube.commands import command_for, judge_write
from hoopy.protocols.kube.podcmds import Site, write_sites
from hoopy.protocols.kube.requestinfo import request_info
from hoopy.session import Session


def sites(body: Any, method: str = "POST", ctype: str = "application/json") -> list[Site]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return write_sites(ctype, raw, method, "deployments")


def lines(found: list[Site]) -> list[str]:
    return [c.line for s in found for c in s.reading.commands]


def opaque(found: list[Site]) -> list[str]:
    return [w for s in found for w in s.reading.opaque]


def pod(**container: Any) -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "c", "image": "busybox", **container}]}}


@pytest.mark.parametrize(
    ("container", "want"),
    [
        ({"command": ["rm", "-rf", "/d"]}, "rm -rf /d"),
        ({"command": ["/usr/bin/rm"], "args": ["-rf", "/d"]}, "rm -rf /d"),
        ({"args": ["rm", "-rf", "/d"]}, "rm -rf /d"),  # an image without an entrypoint
        ({"args": ["rm -rf /d"]}, "rm -rf /d"),  # an entrypoint that is `sh -c`
        ({"args": ["-c", "rm -rf /d"]}, "rm -rf /d"),  # an entrypoint that is `sh`
        ({"command": ["sh", "-c", "cd /; r''m -rf d"]}, "rm -rf d"),
        ({"command": ["sh", "-c", "echo $$(rm x)"]}, "rm x"),  # `$$` is a `$`
        ({"livenessProbe": {"exec": {"command": ["rm", "x"]}}}, "rm x"),
        ({"startupProbe": {"exec": {"command": ["rm", "x"]}}}, "rm x"),
        ({"lifecycle": {"preStop": {"exec": {"command": ["rm", "x"]}}}}, "rm x"),
    ],
)
def test_commands_are_found(container: dict[str, Any], want: str) -> None:
    found = sites(pod(**container))
    assert want in lines(found), found
    assert not opaque(found), found


def test_every_container_list_anywhere() -> None:
    body = {
        "spec": {
            "jobTemplate": {
                "spec": {
                    "template": {
                        "spec": {
                            "initContainers": [{"name": "i", "command": ["rm", "a"]}],
                            "containers": [{"name": "c", "command": ["rm", "b"]}],
                            "ephemeralContainers": [{"name": "e", "command": ["rm", "c"]}],
                        }
                    }
                }
            }
        }
    }
    found = sites(body)
    assert {"rm a", "rm b", "rm c"} <= set(lines(found))
    assert found[0].where.startswith("spec.jobTemplate.spec.template.spec.initContainers[0] (i)")


def test_no_command_is_nothing_to_judge() -> None:
    assert sites(pod()) == []
    assert sites({"metadata": {"name": "x"}, "data": {"containers": "x"}}) == []


@pytest.mark.parametrize(
    "container",
    [
        {"command": ["$(X)"], "envFrom": [{"configMapRef": {"name": "m"}}]},
        {"command": ["$(DB_SERVICE_HOST)"]},  # a service link variable
        {"command": ["$(P)"], "env": [{"name": "P", "valueFrom": {"fieldRef": {}}}]},
        {"command": ["sh", "-c", "$X"]},
        {"command": "rm -rf /"},  # not a list: refused by the cluster, opaque here
        {"command": ["rm", 1]},
        {"$deleteFromPrimitiveList/command": ["echo"]},
        {"$retainKeys": ["name", "args"]},  # drops the command: the args run alone
    ],
)
def test_what_cannot_be_read_is_opaque(container: dict[str, Any]) -> None:
    assert opaque(sites(pod(**container), method="PATCH"))


def test_an_undefined_reference_stays_as_written() -> None:
    found = sites(pod(command=["sh", "-c", "echo $(date +%s) $$(hostname)"]))
    assert "date +%s" in lines(found) and "hostname" in lines(found) and not opaque(found)


@pytest.mark.parametrize(
    ("container", "want"),
    [
        ({"command": ["$(P)", "x"], "env": [{"name": "P", "value": "rm"}]}, "rm x"),
        ({"command": ["sh", "-c", "r$(E)m x"], "env": [{"name": "E", "value": ""}]}, "rm x"),
        # `kubectl set env` can later give q the value `'; rm -rf /; '`
        ({"command": ["sh", "-c", "echo '$(q)'"]}, "echo $(q)"),
    ],
)
def test_env_references_are_opaque_and_read(container: dict[str, Any], want: str) -> None:
    found = sites(pod(**container))
    assert want in lines(found) and opaque(found), found


@pytest.mark.parametrize(
    ("ops", "want", "is_opaque"),
    [
        ([{"op": "add", "path": "/spec/template/spec/containers/-", "value": {"command": ["rm"]}}],
         "rm", False),
        ([{"op": "replace", "path": "/spec/template/spec/containers/0/command",
           "value": ["rm", "x"]}], "rm x", False),
        ([{"op": "add", "path": "/spec/template/spec/containers/0/lifecycle",
           "value": {"postStart": {"exec": {"command": ["rm", "y"]}}}}], "rm y", False),
        ([{"op": "add", "path": "", "value": pod(command=["rm", "z"])}], "rm z", False),
        ([{"op": "replace", "path": "/spec/containers/0/command/0", "value": "rm"}], "rm", True),
        ([{"op": "remove", "path": "/spec/containers/0/command"}], "", True),
        ([{"op": "copy", "from": "/metadata/name", "path": "/spec/containers/0/args"}], "", True),
        ([{"op": "move", "from": "/x", "path": "/spec"}], "", True),
        ([{"op": "add", "path": "/spec/containers/0/command", "value": ["sh", "-c"]}], "", True),
        ([{"op": "add", "path": "/metadata/labels/a", "value": "b"}], None, False),
        ([{"op": "copy", "from": "/metadata/labels/a", "path": "/metadata/labels/b"}], None, False),
    ],
)  # fmt: skip
def test_json_patches(ops: list[Any], want: str | None, is_opaque: bool) -> None:
    found = sites(ops, "PATCH", "application/json-patch+json")
    if want is None:
        assert found == []
        return
    if want:
        assert want in lines(found), found
    assert bool(opaque(found)) is is_opaque, found


def test_a_yaml_apply_body() -> None:
    body = b"spec:\n  template:\n    spec:\n      containers:\n      - {name: a, args: [rm, x]}\n"
    assert "rm x" in lines(sites(body, "PATCH", "application/apply-patch+yaml"))
    with pytest.raises(BodyError):
        sites(b"spec: {a: 1, a: 2}", "PATCH", "application/apply-patch+yaml")


# ---- protobuf ------------------------------------------------------------------------
def _f(num: int, data: bytes) -> bytes:
    """A length-delimited protobuf field (lengths < 128 here)."""
    key = (num << 3) | 2
    out = bytearray()
    while key >= 0x80:
        out.append((key & 0x7F) | 0x80)
        key >>= 7
    out.append(key)
    return bytes(out) + bytes([len(data)]) + data


def test_protobuf_pod_specs() -> None:
    container = _f(1, b"c") + _f(3, b"rm") + _f(4, b"-rf") + _f(4, b"/d")
    probe = _f(10, _f(1, _f(1, _f(1, b"shred") + _f(1, b"x"))))  # livenessProbe.exec
    hook = _f(12, _f(2, _f(1, _f(1, b"wipefs"))))  # lifecycle.preStop.exec
    init = _f(1, b"i") + _f(3, b"dd")
    eph = _f(1, _f(1, b"e") + _f(3, b"halt"))
    spec = _f(2, container + probe + hook) + _f(20, init) + _f(34, eph)
    template = _f(2, spec)
    job = _f(2, _f(6, template))
    body = b"k8s\x00" + _f(1, _f(2, b"Job")) + _f(2, job)
    found = write_sites("application/vnd.kubernetes.protobuf", body, "POST", "jobs")
    assert {"rm -rf /d", "shred x", "wipefs", "dd", "halt"} <= set(lines(found)), found
    # a ConfigMap in protobuf carries no containers; a truncated Pod is refused
    assert write_sites("application/vnd.kubernetes.protobuf", body, "POST", "configmaps") == []
    with pytest.raises(BodyError):
        write_sites("application/vnd.kubernetes.protobuf", body[:-3], "POST", "jobs")


# ---- decisions -----------------------------------------------------------------------
WHO = Identity("agent", frozenset({"agents"}))


class _Session:
    def __init__(self, rules: list[Rule]) -> None:
        self.policies: tuple[PolicySet, ...] = (PolicySet("p", tuple(rules)),)
        self.identity = WHO

    def decide(self, cmd: Command) -> Decision:
        return decide(self.policies, self.identity, cmd)


def _judge(rules: list[Rule], container: dict[str, Any], path: str) -> tuple[Command, Decision]:
    info = request_info("POST", path, {})
    base = command_for("c", info, {}, "POST")
    base = Command(**{**base.__dict__, "name": "web"})
    found = sites(pod(name="app", **container))
    return judge_write(cast(Session, _Session(rules)), base, found)


ALLOW_WRITES = Rule("writes", "allow", Match(kubernetes=KubeMatch(verbs=("create",))))
DENY_EXEC_RM = Rule(
    "no-rm",
    "deny",
    Match(kubernetes=KubeMatch(resources=("pods/exec",), commands=("rm *",))),
    reason="no rm",
)
DEPLOYS = "/apis/apps/v1/namespaces/ns/deployments"


def test_an_exec_rule_denies_the_write() -> None:
    cmd, d = _judge([ALLOW_WRITES, DENY_EXEC_RM], {"command": ["rm", "-rf", "/"]}, DEPLOYS)
    assert d.outcome == "deny" and d.rule == "no-rm"
    assert "spec.containers[0] (app) command" in d.reason
    assert "rm -rf /" in cmd.commands and "-- spec.containers[0] (app) command: rm" in cmd.text
    _, d = _judge([ALLOW_WRITES, DENY_EXEC_RM], {"command": ["ls"]}, DEPLOYS)
    assert d.outcome == "allow"


def test_an_exec_allow_does_not_allow_the_write() -> None:
    """A rule allowing `ls` (for exec) must not allow creating a Deployment that runs it."""
    exec_ls = Rule("ls", "allow", Match(kubernetes=KubeMatch(commands=("ls *",))))
    _, d = _judge([exec_ls], {"command": ["ls"]}, DEPLOYS)
    assert d.outcome == "deny"


def test_an_allow_with_commands_must_cover_them() -> None:
    only_sleep = Rule(
        "sleepers", "allow", Match(kubernetes=KubeMatch(verbs=("create",), commands=("sleep *",)))
    )
    _, d = _judge([ALLOW_WRITES, only_sleep], {"command": ["sleep", "1"]}, DEPLOYS)
    assert d.outcome == "allow"
    _, d = _judge([only_sleep], {"command": ["rm", "x"]}, DEPLOYS)
    assert d.outcome == "deny"


def test_opaque_needs_an_opaque_allow_and_approval_propagates() -> None:
    _, d = _judge([ALLOW_WRITES, DENY_EXEC_RM], {"command": ["sh", "-c", "$X"]}, DEPLOYS)
    assert d.outcome == "deny" and "shell_dynamic" in d.reason
    opaque_ok = Rule("o", "allow", Match(kubernetes=KubeMatch(verbs=("create",), opaque=True)))
    _, d = _judge([opaque_ok, DENY_EXEC_RM], {"command": ["sh", "-c", "$X"]}, DEPLOYS)
    assert d.outcome == "allow"
    ask = Rule(
        "ask", "require_approval", Match(kubernetes=KubeMatch(commands=("shred *",))),
        approvers=("ops",),
    )  # fmt: skip
    _, d = _judge([ALLOW_WRITES, ask], {"args": ["shred", "/dev/sda"]}, DEPLOYS)
    assert d.outcome == "require_approval" and d.rule == "ask"


def test_opaque_commands_pass_where_no_rule_is_about_commands() -> None:
    """Opaque commands are refused to protect rules about commands; with none there is
    nothing to hide from (the freely chosen image runs anything already)."""
    for argv in (["sh", "-c", "$X"], ["/app/server"], ["python3", "app.py"]):
        _, d = _judge([ALLOW_WRITES], {"command": argv}, DEPLOYS)
        assert d.outcome == "allow", (argv, d)
    only_sleep = Rule(
        "s", "allow", Match(kubernetes=KubeMatch(verbs=("create",), commands=("sleep *",)))
    )
    _, d = _judge([only_sleep], {"command": ["sh", "-c", "$X"]}, DEPLOYS)
    assert d.outcome == "deny"  # an allow-list of commands is a rule about commands


def test_a_rule_about_exec_alone_leaves_writes_alone() -> None:
    """`deny pods/exec` (no commands) is about exec, not about what a Deployment runs."""
    no_exec = Rule("no-exec", "deny", Match(kubernetes=KubeMatch(resources=("pods/exec",))))
    _, d = _judge([ALLOW_WRITES, no_exec], {"command": ["sleep", "1"]}, DEPLOYS)
    assert d.outcome == "allow"


def test_too_many_commands_are_refused() -> None:
    many = {"spec": {"containers": [{"name": f"c{i}", "command": ["true"]} for i in range(1001)]}}
    with pytest.raises(BodyError, match="over 1000"):
        sites(many)


def test_env_values_put_into_a_command_are_not_recorded() -> None:
    """The decision is on the expanded words; the recording shows them as written."""
    env = [{"name": "TOKEN", "value": "Zq-secret-771"}, {"name": "P", "value": "rm"}]
    container = {"command": ["$(P)", "$(TOKEN)"], "env": env}
    cmd, d = _judge([ALLOW_WRITES, DENY_EXEC_RM], container, DEPLOYS)
    assert d.outcome == "deny" and d.rule == "no-rm"
    everything = json.dumps([cmd.text, cmd.commands, cmd.fingerprint, d.reason])
    assert "Zq-secret-771" not in everything and "$(TOKEN)" in cmd.text, everything


def test_half_containers_are_completed_by_the_object() -> None:
    from hoopy.protocols.kube.podcmds import resolve

    current = {"spec": {"containers": [{"name": "a", "command": ["find"], "args": ["/t"]}]}}
    patch = {"spec": {"containers": [{"name": "a", "args": ["/", "-delete"]}]}}
    found = sites(patch, "PATCH", "application/strategic-merge-patch+json")
    assert found[0].need is not None
    assert "find / -delete" in lines(resolve(found, current))
    # a container the object does not have is whole as the patch gives it
    assert "find / -delete" not in lines(resolve(found, {"spec": {"containers": []}}))
    assert "find / -delete" not in lines(resolve(found, None))
    # JSON patch: by index
    ops = [{"op": "add", "path": "/spec/containers/0/command", "value": ["sh", "-c"]}]
    found = sites(ops, "PATCH", "application/json-patch+json")
    current["spec"]["containers"][0]["args"] = ["rm -rf /d"]
    done = resolve(found, current)
    assert "rm -rf /d" in lines(done) and not opaque(done), done
    # a JSON merge patch replaces the list: nothing to complete
    found = sites(patch, "PATCH", "application/merge-patch+json")
    assert found and found[0].need is None


def test_a_directive_cannot_drop_the_other_half_unseen() -> None:
    """`$patch: replace` makes the container what the patch gives: args alone."""
    from hoopy.protocols.kube.podcmds import resolve

    current = {"spec": {"containers": [{"name": "a", "command": ["echo"]}]}}
    patch = {"spec": {"containers": [{"name": "a", "$patch": "replace", "args": ["rm", "x"]}]}}
    found = resolve(sites(patch, "PATCH", "application/strategic-merge-patch+json"), current)
    assert "echo rm x" in lines(found) and "rm x" in lines(found), found


def test_shadow_rules_on_commands_are_recorded() -> None:
    watch = Rule("watch-rm", "deny", Match(kubernetes=KubeMatch(commands=("rm *",))))
    sess = _Session([ALLOW_WRITES])
    sess.policies = (*sess.policies, PolicySet("shadow", (watch,), mode="shadow"))
    info = request_info("POST", DEPLOYS, {})
    base = command_for("c", info, {}, "POST")
    _, d = judge_write(cast(Session, sess), base, sites(pod(command=["rm", "x"])))
    assert d.outcome == "allow" and d.shadow == ("watch-rm",)
