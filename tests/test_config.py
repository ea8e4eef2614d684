"""hoopy.config: hoopy.yaml + connectors/ + policies/ → dataclasses, mistakes as file:line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from hoopy.config import (
    Address,
    ConfigError,
    KubeConnector,
    PostgresConnector,
    Secret,
    SshConnector,
    check_config,
    load_config,
)
from hoopy.policy import KubeMatch, Match, SqlMatch, SshMatch
from hoopy.yamlsrc import parse_duration, parse_host_port, parse_size

REPO = Path(__file__).resolve().parent.parent

FULL = """\
listen:
  postgres: 127.0.0.1:15432
  ssh: "[::1]:12222"
  kubernetes: 0.0.0.0:0
  admin: localhost:18080
tls: {cert: certs/gw.pem, key: /etc/hoopy/gw.key}
identity:
  issuers:
    - url: https://idp.example.com/
      audience: hoopy
      groups_claim: roles
      algorithms: [RS256, ES256]
      leeway: 5
state: sqlite:state/db.sqlite
admin_token: env:HOOPY_ADMIN_TOKEN
dev_issuer:
  listen: 127.0.0.1:18081
recordings: rec/
connectors_dir: conn/
policies_dir: pol/
slack:
  token: env:SLACK_BOT_TOKEN
  signing_secret: file:slack-signing
  channel: "#db-approvals"
  approvers: {dba: [U0DBA1, U0DBA2], sre: U0SRE}
  api_url: http://127.0.0.1:9999/api
postgres:
  max_message_size: 1MiB
  allow_cleartext_without_tls: true
  record_rows: 10
  record_bytes: 4KB
  pool_size: 0
  unknown_lineage: refuse
"""

APP_DB = """\
type: postgres
address: db.internal
database: app
user: app_rw
password: env:APP_DB_PASSWORD
sslmode: verify-full
sslrootcert: ca.pem
"""

BASTION = """\
type: ssh
address: "[2001:db8::1]:2222"
user: deploy
private_key: file:keys/deploy
known_hosts: file:/run/secrets/known_hosts
"""

CLUSTER = """\
type: kubernetes
kubeconfig: file:kubeconfig
context: prod
"""

POLICY_A = """\
mode: shadow
rules:
  - name: agents
    effect: allow
    match:
      groups: agents
      connectors: [app-db, "bast*"]
  - name: writes
    effect: require_approval
    approvers: [dba, sre]
    timeout: 90
    grant: {reuse_for: 5m}
    match: {sql: {statements: [delete, update], tables: [orders]}}
"""

POLICY_B = """\
rules:
  - name: no-rm
    effect: deny
    reason: no deleting files
    match: {ssh: {commands: ["rm *"]}}
  - name: no-exec
    effect: deny
    match: {kubernetes: {verbs: [create], resources: [pods/exec], namespaces: [kube-*]}}
  - name: pii
    effect: mask
    columns: ["*.email"]
    detectors: [email, iban]
    style: partial
    match: {connectors: [app-db]}
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "hoopy.yaml"


def full(tmp_path: Path) -> Path:
    files = {
        "hoopy.yaml": FULL,
        "conn/app-db.yaml": APP_DB,
        "conn/bastion.yml": BASTION,
        "conn/cluster.yaml": CLUSTER,
        "conn/README.md": "not a connector: ignored",
        "conn/notes.txt": "type: nonsense",
        "pol/a.yaml": POLICY_A,
        "pol/b.yaml": POLICY_B,
    }
    return write(tmp_path, files)


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path)
    return e.value.problems


def minimal(tmp_path: Path, yaml_text: str = "", **files: str) -> Path:
    """hoopy.yaml, empty connectors/ and policies/, plus `files` (path relative to tmp_path)."""
    (tmp_path / "connectors").mkdir(exist_ok=True)
    (tmp_path / "policies").mkdir(exist_ok=True)
    return write(tmp_path, {"hoopy.yaml": yaml_text, **files})


# -- a valid configuration ---------------------------------------------------------------


def test_full_config_loads_into_dataclasses(tmp_path: Path) -> None:
    cfg = load_config(full(tmp_path))
    assert cfg.path == tmp_path / "hoopy.yaml"
    assert cfg.listen.postgres == Address("127.0.0.1", 15432)
    assert cfg.listen.ssh == Address("::1", 12222)
    assert cfg.listen.kubernetes == Address("0.0.0.0", 0)
    assert cfg.listen.admin == Address("localhost", 18080)
    assert cfg.tls.cert == tmp_path / "certs/gw.pem"
    assert cfg.tls.key == Path("/etc/hoopy/gw.key")
    (issuer,) = cfg.issuers
    assert (issuer.url, issuer.audience, issuer.groups_claim) == (
        "https://idp.example.com/",  # as written: `iss` is compared exactly
        "hoopy",
        "roles",
    )
    assert issuer.algorithms == ("RS256", "ES256")
    assert issuer.leeway == 5.0
    assert cfg.state == f"sqlite://{tmp_path}/state/db.sqlite"
    assert cfg.state_path == tmp_path / "state/db.sqlite"
    assert cfg.admin_token == Secret("env:HOOPY_ADMIN_TOKEN", tmp_path)
    assert cfg.dev_issuer is not None and cfg.dev_issuer.listen == Address("127.0.0.1", 18081)
    assert cfg.recordings == tmp_path / "rec"
    assert cfg.connectors_dir == tmp_path / "conn"
    assert cfg.policies_dir == tmp_path / "pol"

    slack = cfg.slack
    assert slack is not None
    assert slack.token.ref == "env:SLACK_BOT_TOKEN"
    assert slack.signing_secret == Secret("file:slack-signing", tmp_path)
    assert slack.channel == "#db-approvals"
    assert slack.approvers == {"dba": ("U0DBA1", "U0DBA2"), "sre": ("U0SRE",)}
    assert slack.api_url == "http://127.0.0.1:9999/api/"
    assert slack.app_token is None

    pg = cfg.postgres
    assert pg.max_message_size == 1024 * 1024
    assert pg.allow_cleartext_without_tls is True
    assert (pg.record_rows, pg.record_bytes, pg.pool_size) == (10, 4000, 0)
    assert pg.unknown_lineage == "refuse"


def test_full_config_connectors(tmp_path: Path) -> None:
    cfg = load_config(full(tmp_path))
    assert sorted(cfg.connectors) == ["app-db", "bastion", "cluster"]
    conn = tmp_path / "conn"
    assert cfg.connectors["app-db"] == PostgresConnector(
        name="app-db",
        host="db.internal",
        port=5432,  # default port
        database="app",
        user="app_rw",
        password=Secret("env:APP_DB_PASSWORD", conn),
        sslmode="verify-full",
        sslrootcert=conn / "ca.pem",  # relative to the connector file
        source="conn/app-db.yaml:1",
    )
    assert cfg.connectors["bastion"] == SshConnector(
        name="bastion",
        host="2001:db8::1",
        port=2222,
        user="deploy",
        private_key=Secret("file:keys/deploy", conn),
        known_hosts=Secret("file:/run/secrets/known_hosts", conn),
        source="conn/bastion.yml:1",
    )
    assert cfg.connectors["cluster"] == KubeConnector(
        "cluster", Secret("file:kubeconfig", conn), "prod", "conn/cluster.yaml:1"
    )


def test_full_config_policies(tmp_path: Path) -> None:
    cfg = load_config(full(tmp_path))
    a, b = cfg.policies  # sorted by file name
    assert (a.name, a.mode, a.source) == ("a", "shadow", "pol/a.yaml")
    assert (b.name, b.mode) == ("b", "enforce")
    agents, writes = a.rules
    assert agents.match == Match(groups=("agents",), connectors=("app-db", "bast*"))
    assert agents.source == "pol/a.yaml:3"
    assert writes.effect == "require_approval"
    assert writes.approvers == ("dba", "sre")
    assert (writes.timeout, writes.reuse_for) == (90.0, 300.0)
    assert writes.match.sql == SqlMatch(statements=("delete", "update"), tables=("orders",))
    assert writes.source == "pol/a.yaml:8"
    no_rm, no_exec, pii = b.rules
    assert (no_rm.effect, no_rm.reason) == ("deny", "no deleting files")
    assert no_rm.match.ssh == SshMatch(commands=("rm *",))
    assert no_exec.match.kubernetes == KubeMatch(
        verbs=("create",), resources=("pods/exec",), namespaces=("kube-*",)
    )
    assert no_exec.timeout == 600.0  # untouched default
    assert (pii.columns, pii.detectors, pii.style) == (("*.email",), ("email", "iban"), "partial")
    assert pii.source == "pol/b.yaml:9"


def test_defaults_when_keys_are_absent(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {"hoopy.yaml": "# nothing here\n"}))
    assert cfg.listen.postgres is cfg.listen.ssh is cfg.listen.kubernetes is None
    assert cfg.listen.admin is None
    assert cfg.tls.cert == tmp_path / "tls/cert.pem"
    assert cfg.tls.key == tmp_path / "tls/key.pem"
    assert cfg.issuers == ()
    assert cfg.state_path == tmp_path / "state/state.db"
    assert cfg.state == f"sqlite://{tmp_path}/state/state.db"
    assert cfg.recordings == tmp_path / "recordings"
    assert cfg.connectors_dir == tmp_path / "connectors"
    assert cfg.policies_dir == tmp_path / "policies"
    assert cfg.connectors == {} and cfg.policies == ()
    assert cfg.slack is None and cfg.dev_issuer is None and cfg.admin_token is None
    assert cfg.postgres.max_message_size == 64 * 1024 * 1024


@pytest.mark.parametrize(
    ("state", "url", "path"),
    [
        ("sqlite:///var/lib/hoopy/s.db", "sqlite:///var/lib/hoopy/s.db", "/var/lib/hoopy/s.db"),
        ("sqlite:data/s.db", "sqlite://{root}/data/s.db", "{root}/data/s.db"),
        ("postgresql://hoopy@db:5432/hoopy", "postgresql://hoopy@db:5432/hoopy", None),
    ],
)
def test_state_forms(tmp_path: Path, state: str, url: str, path: str | None) -> None:
    cfg = load_config(write(tmp_path, {"hoopy.yaml": f"state: {state}\n"}))
    assert cfg.state == url.format(root=tmp_path)
    assert cfg.state_path == (Path(path.format(root=tmp_path)) if path else None)


def test_relative_config_path_resolves_against_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, {"deploy/hoopy.yaml": "recordings: ../rec\ntls: {cert: c.pem}\n"})
    monkeypatch.chdir(tmp_path)
    cfg = load_config(Path("deploy/hoopy.yaml"))
    assert cfg.path == tmp_path / "deploy/hoopy.yaml"
    assert cfg.recordings == tmp_path / "rec"
    assert cfg.tls.cert == tmp_path / "deploy/c.pem"
    # problems name files the way the user named the config: clickable from the cwd
    (tmp_path / "deploy/hoopy.yaml").write_text("listen:\n  admin: nowhere\n")
    assert check_config(Path("deploy/hoopy.yaml")) == [
        "deploy/hoopy.yaml:2: listen.admin: expected host:port ([ipv6]:port) with a port "
        "from 0 to 65535"
    ]


def test_size_and_duration_forms() -> None:
    assert parse_size("64MiB") == 64 * 1024 * 1024
    assert parse_size("1MB") == 1_000_000
    assert parse_size("512kib") == 512 * 1024
    assert parse_size("4096") == 4096
    assert parse_size("10 GB") == 10 * 1000**3
    assert parse_size("MiB") is None
    assert parse_size("1iB") is None
    assert parse_duration("10m") == 600
    assert parse_duration("30s") == 30
    assert parse_duration("1h30m") == 5400
    assert parse_duration("250ms") == 0.25
    assert parse_duration("90") == 90
    assert parse_duration("ten minutes") is None
    assert parse_duration("") is None


def test_host_port_forms() -> None:
    assert parse_host_port("127.0.0.1:0") == ("127.0.0.1", 0)
    assert parse_host_port("[::1]:65535") == ("::1", 65535)
    assert parse_host_port("db", 5432) == ("db", 5432)
    assert parse_host_port("db") is None
    assert parse_host_port("::1:80") is None  # IPv6 needs brackets
    assert parse_host_port("[not-v6]:80") is None
    assert parse_host_port("h:65536") is None
    assert parse_host_port("h:-1") is None


# -- mistakes, each with its exact file:line ------------------------------------------------


def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    cfg = minimal(tmp_path, "listen:\n  postgres: 127.0.0.1:1\n  admn: 127.0.0.1:2\n")
    assert problems_of(cfg) == [
        f"{cfg}:3: unknown key 'listen.admn' (did you mean 'listen.admin'?)"
    ]


def test_unknown_key_in_rule(tmp_path: Path) -> None:
    policy = "rules:\n  - name: r\n    efect: allow\n"
    cfg = minimal(tmp_path, **{"policies/p.yaml": policy})
    pol = tmp_path / "policies/p.yaml"
    assert problems_of(cfg) == [
        f"{pol}:2: missing required key 'effect'",
        f"{pol}:3: unknown key 'efect' (did you mean 'effect'?)",
    ]


def test_wrong_types_point_at_the_value(tmp_path: Path) -> None:
    text = textwrap.dedent("""\
        postgres:
          record_rows: many
          allow_cleartext_without_tls: 1
          max_message_size: huge
        listen: [127.0.0.1:1]
        identity:
          issuers:
            - url: ftp://idp
              audience: [a, b]
    """)
    cfg = minimal(tmp_path, text)
    assert problems_of(cfg) == [
        f"{cfg}:2: postgres.record_rows: expected an integer",
        f"{cfg}:3: postgres.allow_cleartext_without_tls: expected true or false",
        f"{cfg}:4: postgres.max_message_size: expected a size in bytes such as 1048576, "
        "64MiB or 1MB",
        f"{cfg}:5: listen: expected a mapping",
        f"{cfg}:8: identity.issuers[0].url: expected an http:// or https:// URL",
        f"{cfg}:9: identity.issuers[0].audience: expected a string",
    ]


def test_yaml_syntax_error_line(tmp_path: Path) -> None:
    cfg = minimal(tmp_path, "listen:\n  postgres: 127.0.0.1:1\n admin: [oops\n")
    (problem,) = problems_of(cfg)
    assert problem.startswith(f"{cfg}:3: YAML syntax error: ")


def test_yaml_syntax_error_in_policy_and_duplicate_key(tmp_path: Path) -> None:
    cfg = minimal(
        tmp_path,
        "recordings: a\nrecordings: b\n",
        **{"policies/p.yaml": "rules:\n  - name: x\n    effect: allow\n  - {name: y\n"},
    )
    assert problems_of(cfg) == [
        f"{cfg}:2: duplicate key 'recordings' (first at line 1)",
        f"{tmp_path}/policies/p.yaml:5: YAML syntax error: expected ',' or '}}', but got "
        "'<stream end>'",
    ]


def test_ports_and_addresses(tmp_path: Path) -> None:
    text = "listen:\n  postgres: 127.0.0.1:70000\n  ssh: 127.0.0.1\n  admin: '[::1]:0'\n"
    cfg = minimal(tmp_path, text)
    msg = "expected host:port ([ipv6]:port) with a port from 0 to 65535"
    assert problems_of(cfg) == [f"{cfg}:2: listen.postgres: {msg}", f"{cfg}:3: listen.ssh: {msg}"]


def test_bad_state_and_inline_state_password(tmp_path: Path) -> None:
    cfg = minimal(tmp_path, "state: mysql://x\n")
    assert problems_of(cfg) == [
        f"{cfg}:1: state: expected sqlite:///absolute/path, sqlite:relative/path or postgresql://…"
    ]
    cfg = minimal(tmp_path, "\nstate: postgresql://hoopy:Sup3rS3cret@db/hoopy\n")
    (problem,) = problems_of(cfg)
    assert problem.startswith(f"{cfg}:2: state: the URL holds a password")
    assert "Sup3rS3cret" not in problem


def test_missing_folder_given_explicitly(tmp_path: Path) -> None:
    cfg = write(tmp_path, {"hoopy.yaml": "policies_dir: nope/\n"})
    assert problems_of(cfg) == [f"{cfg}:1: policies_dir: folder {tmp_path}/nope does not exist"]


def test_connector_mistakes(tmp_path: Path) -> None:
    cfg = minimal(
        tmp_path,
        **{
            "connectors/a.yaml": "type: postgress\naddress: db:5432\n",
            "connectors/b.yaml": "type: ssh\naddress: h\nuser: u\ndatabase: x\npassword: env:P\n",
            "connectors/c.yaml": "type: postgres\naddress: db:0\ndatabase: d\nuser: u\n"
            "sslmode: verify-ful\n",
            "connectors/d.yaml": "address: db:1\n",
            "connectors/e.yaml": "- type: postgres\n",
        },
    )
    c = tmp_path / "connectors"
    assert problems_of(cfg) == [
        f"{c}/a.yaml:1: type: 'postgress' is not one of postgres, ssh, kubernetes "
        "(did you mean 'postgres'?)",
        f"{c}/b.yaml:1: missing required key 'known_hosts'",
        f"{c}/b.yaml:4: unknown key 'database'",
        f"{c}/c.yaml:2: address: expected host:port ([ipv6]:port) with a port from 1 to 65535",
        f"{c}/c.yaml:5: sslmode: 'verify-ful' is not one of disable, prefer, require, "
        "verify-full (did you mean 'verify-full'?)",
        f"{c}/d.yaml:1: missing required key 'type'",
        f"{c}/e.yaml:1: expected a mapping with 'type: postgres|ssh|kubernetes'",
    ]


def test_policy_mistakes(tmp_path: Path) -> None:
    policy = textwrap.dedent("""\
        mode: shdow
        rules:
          - name: r1
            effect: require_approval
            timeout: soon
            match: {connectors: [app-db, app-dbb, "app-*"]}
          - name: r2
            effect: mask
            detectors: [email, creditcard]
            approvers: [dba]
          - name: r3
            effect: mask
          - effect: deny
            match: {sql: {statments: [drop]}, groups: {a: b}}
    """)
    cfg = minimal(
        tmp_path,
        **{"connectors/app-db.yaml": APP_DB.replace("ca.pem", "/x"), "policies/p.yaml": policy},
    )
    p = tmp_path / "policies/p.yaml"
    assert problems_of(cfg) == [
        f"{p}:1: mode: 'shdow' is not one of enforce, shadow (did you mean 'shadow'?)",
        f"{p}:3: missing required key 'approvers'",
        f"{p}:5: timeout: expected a duration such as 30s, 10m or 1h (or seconds)",
        f"{p}:6: match.connectors: no connector named 'app-dbb' (did you mean 'app-db'?)",
        f"{p}:9: detectors: unknown detector 'creditcard' (did you mean 'credit_card'?)",
        f"{p}:10: approvers: only applies to effect require_approval",
        f"{p}:11: a mask rule needs columns or detectors",
        f"{p}:13: missing required key 'name'",
        f"{p}:14: unknown key 'match.sql.statments' (did you mean 'match.sql.statements'?)",
        f"{p}:14: match.groups: expected a string or a list of strings",
    ]


def test_unknown_statement_kinds_are_reported(tmp_path: Path) -> None:
    policy = textwrap.dedent("""\
        rules:
          - name: no-deletes
            effect: deny
            match: {sql: {statements: [delet]}}
          - name: fine
            effect: deny
            match:
              sql:
                statements: [DROP, drop_*, drop_table, create_function, do, dynamic_sql,
                             copy_program, refresh, "sel*", "*", alter_some_new_object]
          - name: typos
            effect: deny
            match:
              sql:
                statements:
                  - updat
                  - "xyz_*"
                  - frobnicate_table
    """)
    cfg = minimal(tmp_path, **{"policies/p.yaml": policy})
    p = tmp_path / "policies/p.yaml"
    assert problems_of(cfg) == [
        f"{p}:4: unknown statement kind 'delet' (did you mean 'delete'?)",
        f"{p}:16: unknown statement kind 'updat' (did you mean 'update'?)",
        f"{p}:17: statement pattern 'xyz_*' matches no statement kind",
        f"{p}:18: unknown statement kind 'frobnicate_table' (did you mean 'create_table'?)",
    ]


def test_hoopy_check_reports_unknown_statement_kind(tmp_path: Path) -> None:
    from tests.test_cli import run

    policy = "rules:\n  - name: r\n    effect: deny\n    match: {sql: {statements: [delet]}}\n"
    minimal(tmp_path, **{"policies/p.yaml": policy})
    r = run("check", "--config", "hoopy.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert "policies/p.yaml:4: unknown statement kind 'delet' (did you mean 'delete'?)" in r.stdout


def test_every_kind_the_classifier_emits_is_accepted() -> None:
    """The check's list of kinds keeps up with the classifier (its own test tables)."""
    from hoopy.configpolicy import _statement_kind_problem
    from hoopy.protocols.postgres.classify import classify
    from tests.protocols.postgres.test_classify import KINDS, OPAQUE

    emitted: set[str] = set()
    for sql, _ in [*KINDS, *OPAQUE]:
        for cmd in classify(sql, "db"):
            emitted |= cmd.kinds | cmd.opaque
    assert {k: _statement_kind_problem(k) for k in sorted(emitted)} == dict.fromkeys(
        sorted(emitted)
    )


def test_empty_match_lists_are_reported(tmp_path: Path) -> None:
    policy = textwrap.dedent("""\
        rules:
          - name: r1
            effect: deny
            match: {sql: {tables: []}}
          - name: r2
            effect: deny
            match:
              groups: []
              sql: {statements: [], functions: [pg_sleep]}
              ssh: {commands: []}
              kubernetes: {verbs: [delete], namespaces: []}
          - name: r3
            effect: deny
            match: {subjects: ~, sql: {tables: [orders]}}
    """)
    cfg = minimal(tmp_path, **{"policies/p.yaml": policy})
    p = tmp_path / "policies/p.yaml"
    empty = "empty, so it would match anything: name at least one, or remove the key"
    assert problems_of(cfg) == [
        f"{p}:4: match.sql.tables: {empty}",
        f"{p}:8: match.groups: {empty}",
        f"{p}:9: match.sql.statements: {empty}",
        f"{p}:10: match.ssh.commands: {empty}",
        f"{p}:11: match.kubernetes.namespaces: {empty}",
        f"{p}:14: match.subjects: {empty}",
    ]


def test_rule_names_unique_across_files(tmp_path: Path) -> None:
    rule = "rules:\n  - name: same\n    effect: allow\n"
    cfg = minimal(tmp_path, **{"policies/a.yaml": rule, "policies/b.yaml": "\n" + rule})
    assert problems_of(cfg) == [
        f"{tmp_path}/policies/b.yaml:3: name: rule name 'same' is already used at policies/a.yaml:2"
    ]


def test_approver_groups_checked_against_slack_only_when_configured(tmp_path: Path) -> None:
    policy = "rules:\n  - name: w\n    effect: require_approval\n    approvers: [dab]\n"
    cfg = minimal(tmp_path, **{"policies/p.yaml": policy})
    assert load_config(cfg).policies[0].rules[0].approvers == ("dab",)
    slack = (
        "slack:\n  token: env:T\n  signing_secret: env:S\n  channel: c\n  approvers: {dba: [U1]}\n"
    )
    cfg.write_text(slack)
    assert problems_of(cfg) == [
        f"{tmp_path}/policies/p.yaml:4: approvers: group 'dab' is not in slack.approvers "
        "(did you mean 'dba'?)"
    ]


def test_all_mistakes_reported_across_files(tmp_path: Path) -> None:
    cfg = minimal(
        tmp_path,
        "listen: {postgres: 'x'}\nadmin_token: hunter2\n",
        **{
            "connectors/db.yaml": "type: postgres\naddress: db\ndatabase: d\n",
            "policies/p.yaml": "rules:\n  - name: r\n    effect: alow\n",
        },
    )
    got = problems_of(cfg)
    assert [p.split(": ", 1)[0] for p in got] == [
        f"{cfg}:1",
        f"{cfg}:2",
        f"{tmp_path}/connectors/db.yaml:1",
        f"{tmp_path}/policies/p.yaml:3",
    ]
    assert check_config(cfg) == got  # nothing more: no secret was referenced


# -- secrets ---------------------------------------------------------------------------------

INLINE = "secret must be a reference env:NAME or file:PATH; never write it inline"


def test_inline_secrets_are_rejected_without_echoing_them(tmp_path: Path) -> None:
    cfg = minimal(
        tmp_path,
        "admin_token: s3cr3t-admin\n"
        "slack:\n  token: xoxb-s3cr3t\n  signing_secret: env:OK\n  channel: c\n"
        "  app_token: 'envy:s3cr3t-app'\n",
        **{
            "connectors/db.yaml": "type: postgres\naddress: db\ndatabase: d\nuser: u\n"
            "password: pg-s3cr3t\n",
            "connectors/k.yaml": "type: kubernetes\nkubeconfig: {inline: s3cr3t-kube}\n",
        },
    )
    got = check_config(cfg)
    assert got == [
        f"{cfg}:1: admin_token: {INLINE}",
        f"{cfg}:3: slack.token: {INLINE}",
        f"{cfg}:4: slack.signing_secret: environment variable OK is not set",
        f"{cfg}:6: slack.app_token: {INLINE}",
        f"{tmp_path}/connectors/db.yaml:5: password: {INLINE}",
        f"{tmp_path}/connectors/k.yaml:2: kubeconfig: {INLINE}",
    ]
    assert not any("s3cr3t" in p for p in got)
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert "s3cr3t" not in str(e.value)


def test_secret_in_syntax_error_is_not_quoted(tmp_path: Path) -> None:
    cfg = minimal(tmp_path, "admin_token: 'hunter2-s3cr3t\n")
    (problem,) = problems_of(cfg)
    assert "s3cr3t" not in problem


def test_env_and_file_secrets_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = full(tmp_path)
    conn = tmp_path / "conn"
    monkeypatch.setenv("APP_DB_PASSWORD", "pw-value")
    monkeypatch.setenv("HOOPY_ADMIN_TOKEN", "admin-value")
    monkeypatch.setenv("SLACK_BOT_TOKEN", "xoxb-value")
    (tmp_path / "slack-signing").write_text("signing-value\n")
    (conn / "keys").mkdir()
    (conn / "keys/deploy").write_text("KEY")
    (conn / "kubeconfig").write_text("apiVersion: v1\n")
    (conn / "ca.pem").write_text("CA")
    problems = check_config(cfg)
    assert problems == [
        f"{conn}/bastion.yml:5: known_hosts: cannot read /run/secrets/known_hosts "
        "(No such file or directory)"
    ]
    loaded = load_config(cfg)  # form only: unresolvable secrets do not stop loading
    assert loaded.slack is not None
    assert loaded.slack.signing_secret.get() == "signing-value"
    assert loaded.admin_token is not None and loaded.admin_token.get() == "admin-value"
    db = loaded.connectors["app-db"]
    assert isinstance(db, PostgresConnector) and db.password is not None
    assert db.password.get() == "pw-value"
    bastion = loaded.connectors["bastion"]
    assert isinstance(bastion, SshConnector) and bastion.private_key is not None
    assert bastion.private_key.get() == "KEY"  # relative to the connector's file


def test_missing_secrets_reported_by_name_with_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = full(tmp_path)
    for name in ("APP_DB_PASSWORD", "HOOPY_ADMIN_TOKEN", "SLACK_BOT_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLACK_BOT_TOKEN", "")
    conn = tmp_path / "conn"
    assert check_config(cfg) == [
        f"{cfg}:15: admin_token: environment variable HOOPY_ADMIN_TOKEN is not set",
        f"{cfg}:22: slack.token: environment variable SLACK_BOT_TOKEN is empty",
        f"{cfg}:23: slack.signing_secret: cannot read {tmp_path}/slack-signing "
        "(No such file or directory)",
        f"{conn}/app-db.yaml:5: password: environment variable APP_DB_PASSWORD is not set",
        f"{conn}/app-db.yaml:7: sslrootcert: cannot read {conn}/ca.pem (No such file or directory)",
        f"{conn}/bastion.yml:4: private_key: cannot read {conn}/keys/deploy "
        "(No such file or directory)",
        f"{conn}/bastion.yml:5: known_hosts: cannot read /run/secrets/known_hosts "
        "(No such file or directory)",
        f"{conn}/cluster.yaml:2: kubeconfig: cannot read {conn}/kubeconfig "
        "(No such file or directory)",
    ]


def test_bad_env_reference(tmp_path: Path) -> None:
    cfg = minimal(tmp_path, "admin_token: 'env:NOT A NAME'\n")
    assert problems_of(cfg) == [
        f"{cfg}:1: admin_token: env: must be followed by an environment variable name"
    ]


# -- the examples shipped in the repository ----------------------------------------------------


def test_repository_examples_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_DB_PASSWORD", "example")
    cfg = write(
        tmp_path,
        {
            "hoopy.yaml": f"connectors_dir: {REPO / 'connectors'}\n"
            f"policies_dir: {REPO / 'policies'}\n"
        },
    )
    assert check_config(cfg) == []
    loaded = load_config(cfg)
    db = loaded.connectors["app-db"]
    assert isinstance(db, PostgresConnector)
    assert (db.host, db.port, db.database, db.user) == ("db.internal", 5432, "app", "app_rw")
    (agents,) = loaded.policies
    assert agents.mode == "enforce"
    rules = {r.name: r for r in agents.rules}
    assert list(rules) == [
        "agents-use-app-db",
        "no-schema-changes",
        "writes-need-a-dba",
        "hide-pii",
    ]
    assert rules["agents-use-app-db"].match == Match(groups=("agents",), connectors=("app-db",))
    deny = rules["no-schema-changes"]
    assert deny.effect == "deny" and deny.reason
    assert deny.match.sql == SqlMatch(statements=("drop", "truncate", "alter"))
    approval = rules["writes-need-a-dba"]
    assert (approval.effect, approval.approvers, approval.timeout) == (
        "require_approval",
        ("dba",),
        600.0,
    )
    mask = rules["hide-pii"]
    assert mask.columns == ("*.email", "customers.ssn")
    assert mask.detectors == ("email", "credit_card")


def test_masking_settings(tmp_path: Path) -> None:
    cfg = load_config(minimal(tmp_path, "masking:\n  hash_key: env:HK\n  redact_numeric: zero\n"))
    assert cfg.masking.hash_key is not None and cfg.masking.hash_key.ref == "env:HK"
    assert cfg.masking.redact_numeric == "zero"
    assert load_config(minimal(tmp_path, "")).masking.redact_numeric == "null"
    bad = minimal(tmp_path, "masking:\n  hash_key: s3cret-inline\n  redact_numeric: one\n")
    problems = problems_of(bad)
    assert len(problems) == 2 and all(p.startswith(f"{bad}:") for p in problems)
    assert not any("s3cret-inline" in p for p in problems)


# -- issue 16: issuers ---------------------------------------------------------------------


def _issuer_yaml(url: str, extra: str = "") -> str:
    return f"identity:\n  issuers:\n    - url: {url}\n      audience: hoopy\n{extra}"


@pytest.mark.parametrize(
    "url", ["http://idp.example.com", "http://10.0.0.5:8080/realms/x", "HTTP://idp.example.com"]
)
def test_plain_http_issuer_off_loopback_is_refused(tmp_path: Path, url: str) -> None:
    cfg = minimal(tmp_path, _issuer_yaml(url))
    (problem,) = problems_of(cfg)
    assert problem.startswith(f"{cfg}:3: identity.issuers[0].url: plain http://")
    assert "allow_insecure_http: true" in problem


@pytest.mark.parametrize(
    "url",
    ["https://idp.example.com", "http://127.0.0.1:8080", "http://localhost:9", "http://[::1]:9"],
)
def test_https_and_loopback_issuers_are_accepted(tmp_path: Path, url: str) -> None:
    (issuer,) = load_config(minimal(tmp_path, _issuer_yaml(url))).issuers
    assert issuer.url == url and not issuer.allow_insecure_http


def test_plain_http_issuer_accepted_when_said_explicitly(tmp_path: Path) -> None:
    cfg = minimal(
        tmp_path, _issuer_yaml("http://idp.internal", "      allow_insecure_http: true\n")
    )
    (issuer,) = load_config(cfg).issuers
    assert issuer.allow_insecure_http


def test_hoopy_check_says_why_an_http_issuer_is_refused(tmp_path: Path) -> None:
    from tests.test_cli import run

    minimal(tmp_path, _issuer_yaml("http://idp.example.com"))
    r = run("check", "--config", "hoopy.yaml", cwd=tmp_path)
    assert r.returncode == 1
    assert "hoopy.yaml:3: identity.issuers[0].url: plain http:// to a host other than" in r.stdout
    assert "could serve their own signing keys" in r.stdout


def test_match_issuers_and_subjects_tied_to_them(tmp_path: Path) -> None:
    two = _issuer_yaml("https://idp-a.example") + "dev_issuer: {listen: 127.0.0.1:0}\n"
    policy = textwrap.dedent("""\
        rules:
          - name: tied
            effect: deny
            match: {issuers: ["https://idp-a.*"], subjects: [agent-1]}
          - name: untied
            effect: deny
            match: {subjects: [agent-1]}
          - name: groups-only
            effect: allow
            match: {groups: [agents]}
    """)
    cfg = minimal(tmp_path, two, **{"policies/p.yaml": policy})
    (problem,) = problems_of(cfg)
    assert problem.startswith(f"{tmp_path / 'policies/p.yaml'}:7: match.subjects: 2 token")
    assert "add match.issuers" in problem
    # with one issuer, a subject names one agent: no problem
    cfg = minimal(tmp_path, _issuer_yaml("https://idp-a.example"))
    (tied, _untied, _) = load_config(cfg).policies[0].rules
    assert tied.match == Match(subjects=("agent-1",), issuers=("https://idp-a.*",))


def test_ssh_backend_pool_settings(tmp_path: Path) -> None:
    for name in "dsmb":
        (tmp_path / name).mkdir()
    d = load_config(minimal(tmp_path / "d")).ssh
    assert (d.backend_idle, d.backend_pool) == (30.0, 16)
    s = load_config(minimal(tmp_path / "s", "ssh: {backend_idle: 0, backend_pool: 3}\n")).ssh
    assert (s.backend_idle, s.backend_pool) == (0.0, 3)  # 0: no reuse
    assert load_config(minimal(tmp_path / "m", "ssh: {backend_idle: 2m}\n")).ssh.backend_idle == 120
    bad = problems_of(minimal(tmp_path / "b", "ssh: {backend_idle: soon, backend_pool: -1}\n"))
    assert len(bad) == 2
    assert "ssh.backend_idle" in bad[0] and "ssh.backend_pool" in bad[1]
