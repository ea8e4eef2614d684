"""hoopy.yaml + connectors/ + policies/ → frozen dataclasses.

Every mistake is reported as `file:line: message` (all of them, not just the
first) so `hoopy check` can list them.  Secrets are references (`env:NAME`,
`file:PATH`) resolved only when used, and never appear in reprs or errors.
"""

from __future__ import annotations

import fnmatch
import functools
import hmac
import ipaddress
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qs, urlsplit

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from hoopy import netdest
from hoopy.policy import (
    SFTP_OPS,
    Effect,
    KubeMatch,
    Match,
    PolicySet,
    Rule,
    SqlMatch,
    SshMatch,
    glob_any,
)
from hoopy.yamlsrc import (
    Doc,
    Section,
    Tree,
    compose,
    is_null,
    line_of,
    parse_host_port,
    resolve_path,
    suggest,
    unreadable,
    yaml_files,
)


class ConfigError(Exception):
    """One or more configuration mistakes, each as 'file:line: message'."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Secret:
    """A reference to a secret (`env:NAME` or `file:PATH`); the value is read on use."""

    ref: str
    base: Path = Path(".")

    def get(self) -> str:
        kind, _, rest = self.ref.partition(":")
        if kind == "env":
            value = os.environ.get(rest)
            if value is None:
                raise ConfigError([f"secret {self.ref}: environment variable is not set"])
            return value
        if kind == "file":
            p = Path(rest)
            p = p if p.is_absolute() else self.base / p
            try:
                return p.read_text().rstrip("\r\n")
            except OSError as e:
                raise ConfigError([f"secret {self.ref}: cannot read ({e.strerror})"]) from None
        raise ConfigError([f"secret reference {self.ref!r} must start with env: or file:"])

    def matches(self, presented: str) -> bool:
        """Is `presented` this secret's value (compared in constant time)?  Never for an
        empty value.  Raises ConfigError when the secret cannot be read."""
        expected = self.get()
        return bool(expected) and hmac.compare_digest(presented.encode(), expected.encode())

    def __repr__(self) -> str:  # never the value
        return f"Secret({self.ref!r})"


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Listen:
    postgres: Address | None = None
    ssh: Address | None = None
    kubernetes: Address | None = None
    admin: Address | None = None


@dataclass(frozen=True)
class TLSFiles:
    cert: Path
    key: Path


@dataclass(frozen=True)
class IssuerConfig:
    url: str
    audience: str
    groups_claim: str = "groups"
    algorithms: tuple[str, ...] = (
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "ES256",
        "ES384",
        "EdDSA",
    )
    leeway: float = 30.0
    # Plain http:// (issuer or its discovery's jwks_uri) to a host other than loopback:
    # anyone on the path could swap the signing keys.  Refused unless set.
    allow_insecure_http: bool = False


@dataclass(frozen=True)
class DevIssuerConfig:
    listen: Address
    audience: str = "hoopy"
    groups_claim: str = "groups"


@dataclass(frozen=True)
class PostgresSettings:
    """Knobs for the PostgreSQL listener (key `postgres:` in hoopy.yaml)."""

    max_message_size: int = 64 * 1024 * 1024
    allow_cleartext_without_tls: bool = False
    record_rows: int = 100  # result rows recorded per statement
    record_bytes: int = 64 * 1024  # result bytes recorded per statement
    pool_size: int = 4  # idle authenticated backend connections kept per connector
    unknown_lineage: str = "mask"  # an output column hoopy cannot trace: mask | refuse
    # SQL texts (characters): longer ones are refused (54000); those over the inline size
    # are classified by worker processes (classworker.py) with these limits each.
    max_statement_size: int = 16 * 1024 * 1024
    classify_inline_size: int = 8192
    classify_workers: int = 1
    classify_timeout: float = 10.0
    classify_memory: int = 768 * 1024 * 1024  # address space of one worker


@dataclass(frozen=True)
class SshSettings:
    """Knobs for the SSH listener (key `ssh:` in hoopy.yaml)."""

    failed_logins: int = 10  # failed logins per source address …
    failed_login_window: float = 60.0  # … per this many seconds, then refused unchecked
    record_bytes: int = 4 * 1024 * 1024  # per channel and direction, in the asciicast
    backend_idle: float = 30.0  # s an idle backend connection waits for its identity (0: off)
    backend_pool: int = 16  # idle backend connections kept in all


@dataclass(frozen=True)
class MaskingSettings:
    """Key `masking:` in hoopy.yaml."""

    # Key of the `hash` style; generated in the state folder when absent.
    hash_key: Secret | None = None
    redact_numeric: str = "null"  # a redacted number becomes NULL, or "zero"


@dataclass(frozen=True)
class PostgresConnector:
    name: str
    host: str
    port: int
    database: str
    user: str
    password: Secret | None = None
    sslmode: str = "prefer"  # disable | prefer | require | verify-full
    sslrootcert: Path | None = None
    source: str = ""
    type: str = "postgres"


@dataclass(frozen=True)
class SshConnector:
    name: str
    host: str
    port: int
    user: str
    private_key: Secret | None = None
    password: Secret | None = None
    known_hosts: Secret | None = None
    source: str = ""
    type: str = "ssh"
    connect_timeout: float = 10.0  # seconds to reach and authenticate to the backend
    keepalive: float = 30.0  # seconds between keepalives to the backend (0: off)


@dataclass(frozen=True)
class KubeConnector:
    name: str
    kubeconfig: Secret
    context: str = ""
    source: str = ""
    type: str = "kubernetes"
    impersonate: bool = False  # Impersonate-User/Group: the agent's identity
    mask_secrets: bool = True  # Secret data/stringData masked in every response


Connector = PostgresConnector | SshConnector | KubeConnector


@dataclass(frozen=True)
class SlackConfig:
    token: Secret
    signing_secret: Secret
    channel: str
    approvers: dict[str, tuple[str, ...]] = field(default_factory=dict)
    api_url: str = "https://slack.com/api/"
    app_token: Secret | None = None  # Socket Mode


@dataclass(frozen=True)
class Config:
    path: Path  # the hoopy.yaml this came from
    listen: Listen
    tls: TLSFiles
    issuers: tuple[IssuerConfig, ...]
    state: str  # sqlite:///path or postgresql://…
    recordings: Path
    connectors_dir: Path
    policies_dir: Path
    connectors: dict[str, Connector] = field(default_factory=dict)
    policies: tuple[PolicySet, ...] = ()
    admin_token: Secret | None = None
    dev_issuer: DevIssuerConfig | None = None
    slack: SlackConfig | None = None
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    masking: MaskingSettings = field(default_factory=MaskingSettings)
    # The SQLite file when `state` is sqlite: (`sqlite:///abs/path` or `sqlite:rel/path`,
    # relative to the config folder); None for postgresql://.
    state_path: Path | None = None
    ssh: SshSettings = field(default_factory=SshSettings)

    @property
    def state_dir(self) -> Path:
        """Folder for hoopy's own files (dev issuer key, generated TLS pair)."""
        if self.state_path is not None:
            return self.state_path.parent
        return self.path.parent / ".hoopy"


# --------------------------------------------------------------------------------------
# Loader.  Everything below reads YAML nodes (hoopy.yamlsrc) so each problem carries its
# file and line; problems are collected, never raised one by one.

_TOP_KEYS = (
    "listen", "tls", "identity", "state", "admin_token", "dev_issuer", "recordings",
    "connectors_dir", "policies_dir", "slack", "postgres", "masking", "ssh",
)  # fmt: skip
_LISTEN_KEYS = ("postgres", "ssh", "kubernetes", "admin")
_ISSUER_KEYS = (
    "url", "audience", "groups_claim", "algorithms", "leeway", "allow_insecure_http",
)  # fmt: skip
_SLACK_KEYS = ("token", "signing_secret", "channel", "approvers", "api_url", "app_token")
_SLACK_API = "https://slack.com/api/"
_PG_KEYS = (
    "max_message_size", "allow_cleartext_without_tls", "record_rows", "record_bytes",
    "pool_size", "unknown_lineage", "max_statement_size", "classify_inline_size",
    "classify_workers", "classify_timeout", "classify_memory",
)  # fmt: skip
_CONNECTOR_KEYS = {
    "postgres": ("type", "address", "database", "user", "password", "sslmode", "sslrootcert"),
    "ssh": (
        "type",
        "address",
        "user",
        "private_key",
        "password",
        "known_hosts",
        "connect_timeout",
        "keepalive",
    ),
    "kubernetes": ("type", "kubeconfig", "context", "impersonate", "mask_secrets"),
}
_SSLMODES = ("disable", "prefer", "require", "verify-full")
_FORBIDDEN_ALGORITHMS = ("none", "HS256", "HS384", "HS512")  # symmetric: never with a JWKS
_CONNECTOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INLINE = "secret must be a reference env:NAME or file:PATH; never write it inline"

EFFECTS: tuple[Effect, ...] = ("allow", "deny", "require_approval", "mask")
_EFFECTS: dict[str, Effect] = {e: e for e in EFFECTS}
DETECTORS = (
    "email", "credit_card", "ssn", "phone", "iban", "ipv4", "ipv6", "jwt", "aws_access_key",
    "private_key", "api_key",
)  # fmt: skip
MASK_STYLES = ("redact", "partial", "hash")
_RULE_KEYS = (
    "name", "effect", "reason", "match", "approvers", "timeout", "grant", "columns",
    "detectors", "style",
)  # fmt: skip
_EFFECT_ONLY = {  # keys that only make sense for one effect
    "approvers": "require_approval", "timeout": "require_approval", "grant": "require_approval",
    "columns": "mask", "detectors": "mask", "style": "mask",
}  # fmt: skip
_MATCH_KEYS = ("subjects", "issuers", "groups", "connectors", "sql", "ssh", "kubernetes")
_SQL_KEYS = ("statements", "tables", "functions")
_KUBE_KEYS = ("verbs", "resources", "namespaces", "names", "commands")
_GLOB_CHARS = frozenset("*?[")


class _Loader(Tree):
    """The files being read, plus what `hoopy check` must find resolvable (secrets, files)."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.checks: list[tuple[Doc, int, str, Secret | Path]] = []


def _secret(
    ld: _Loader, sec: Section, key: str, base: Path, required: bool = False
) -> Secret | None:
    node = sec.get(key)
    if node is None:
        if required:
            sec.missing(key)
        return None
    ref = node.value if isinstance(node, ScalarNode) else ""
    kind, _, rest = ref.partition(":")
    if kind not in ("env", "file") or not rest.strip():
        sec.error(key, _INLINE)  # never the value: it may be the secret itself
        return None
    if kind == "env" and not _ENV_NAME.match(rest):
        sec.error(key, "env: must be followed by an environment variable name")
        return None
    secret = Secret(ref, base)
    ld.checks.append((sec.doc, line_of(node), sec.name(key), secret))
    return secret


def _address(
    sec: Section, key: str, default_port: int | None = None, required: bool = False, lo: int = 0
) -> Address | None:
    text = sec.text(key, required=required)
    if text is None:
        return None
    parsed = parse_host_port(text, default_port)
    if parsed is None or parsed[1] < lo:
        sec.error(key, f"expected host:port ([ipv6]:port) with a port from {lo} to 65535")
        return None
    return Address(*parsed)


# -- hoopy.yaml ------------------------------------------------------------------------


def _listen(top: Section) -> Listen:
    sec = top.section("listen", _LISTEN_KEYS)
    if sec is None:
        return Listen()
    return Listen(**{k: _address(sec, k) for k in _LISTEN_KEYS})


def _tls(ld: _Loader, top: Section) -> TLSFiles:
    sec = top.section("tls", ("cert", "key"))
    cert = sec.text("cert") if sec else None
    key = sec.text("key") if sec else None
    return TLSFiles(
        resolve_path(ld.base, cert or "tls/cert.pem"), resolve_path(ld.base, key or "tls/key.pem")
    )


def _issuers(top: Section) -> tuple[IssuerConfig, ...]:
    sec = top.section("identity", ("issuers",))
    node = sec.get("issuers") if sec else None
    if sec is None or node is None:
        return ()
    if not isinstance(node, SequenceNode):
        sec.error("issuers", "expected a list of issuers")
        return ()
    out: list[IssuerConfig] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(node.value):
        name = f"identity.issuers[{i}]"
        s = Section.of(sec.doc, item, _ISSUER_KEYS, name, f"{name}.")
        issuer = _issuer(s) if s else None
        if s is None or issuer is None:
            continue
        if issuer.url in seen:
            s.error("url", f"issuer already configured at line {seen[issuer.url]}")
            continue
        seen[issuer.url] = s.line("url")
        out.append(issuer)
    return tuple(out)


def _issuer(s: Section) -> IssuerConfig | None:
    url = s.url("url", required=True)
    audience = s.text("audience", required=True)
    defaults = IssuerConfig("", "")
    algorithms = s.strings("algorithms") or defaults.algorithms
    bad = [a for a in algorithms if a in _FORBIDDEN_ALGORITHMS]
    if bad:
        s.error("algorithms", f"{', '.join(bad)} cannot be verified against a public JWKS")
    groups_claim = s.text("groups_claim", defaults.groups_claim) or defaults.groups_claim
    leeway = s.number("leeway", defaults.leeway)
    insecure = s.boolean("allow_insecure_http", False)
    if url is not None and not insecure and insecure_http(url):
        s.error(
            "url",
            "plain http:// to a host other than loopback: whoever is on the path could "
            "serve their own signing keys and mint any identity; use https:// (or set "
            "allow_insecure_http: true to accept that risk)",
        )
        return None
    if url is None or audience is None or bad:
        return None
    return IssuerConfig(url, audience, groups_claim, algorithms, leeway, insecure)  # iss is exact


def insecure_http(url: str) -> bool:
    """Is `url` plain http:// to a host that is not loopback?"""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http":
        return False
    host = (parts.hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _state(ld: _Loader, top: Section) -> tuple[str, Path | None]:
    default = ld.base / "state" / "state.db"
    text = top.text("state")
    if text is None:
        return f"sqlite://{default}", default
    # The value is never echoed: a postgresql:// URL may carry a password.
    if text.startswith("sqlite://"):
        rest = text.removeprefix("sqlite://")
        if rest.startswith("/"):
            path = Path(os.path.normpath(rest))
            return f"sqlite://{path}", path
    elif text.startswith("sqlite:") and text.removeprefix("sqlite:").strip():
        path = resolve_path(ld.base, text.removeprefix("sqlite:"))
        return f"sqlite://{path}", path
    elif text.startswith(("postgresql://", "postgres://")):
        parts = urlsplit(text)
        if parts.password is not None or "password" in parse_qs(parts.query):
            top.error("state", "the URL holds a password; never write it inline (use PGPASSFILE)")
        return text, None
    top.error("state", "expected sqlite:///absolute/path, sqlite:relative/path or postgresql://…")
    return f"sqlite://{default}", default


def _folder(ld: _Loader, top: Section, key: str, default: str) -> tuple[Path, bool]:
    """The folder and whether to read it: an absent default folder just means 'none yet'."""
    path = resolve_path(ld.base, top.text(key) or default)
    if path.is_dir():
        return path, True
    if top.has(key):
        top.error(key, f"folder {path} does not exist")
    return path, False


def _dev_issuer(top: Section) -> DevIssuerConfig | None:
    sec = top.section("dev_issuer", ("listen", "audience", "groups_claim"))
    if sec is None:
        return None
    listen = _address(sec, "listen", required=True)
    d = DevIssuerConfig(Address("", 0))
    audience = sec.text("audience", d.audience) or d.audience
    groups_claim = sec.text("groups_claim", d.groups_claim) or d.groups_claim
    return DevIssuerConfig(listen, audience, groups_claim) if listen else None


def _slack(ld: _Loader, top: Section) -> SlackConfig | None:
    sec = top.section("slack", _SLACK_KEYS)
    if sec is None:
        return None
    token = _secret(ld, sec, "token", ld.base, required=True)
    signing_secret = _secret(ld, sec, "signing_secret", ld.base, required=True)
    channel = sec.text("channel", required=True)
    approvers: dict[str, tuple[str, ...]] = {}
    groups = sec.section("approvers", None)
    for group in groups.values if groups else ():
        approvers[group] = groups.strings(group) if groups else ()
        if groups and not approvers[group]:
            groups.error(group, "expected a list of Slack user IDs")
    api_url = sec.url("api_url", _SLACK_API) or _SLACK_API
    app_token = _secret(ld, sec, "app_token", ld.base)
    if token is None or signing_secret is None or channel is None:
        return None
    api_url = api_url if api_url.endswith("/") else api_url + "/"  # slack_sdk joins on '/'
    return SlackConfig(token, signing_secret, channel, approvers, api_url, app_token)


def _masking_settings(ld: _Loader, top: Section) -> MaskingSettings:
    sec = top.section("masking", ("hash_key", "redact_numeric"))
    d = MaskingSettings()
    if sec is None:
        return d
    numeric = sec.choice("redact_numeric", ("null", "zero"), d.redact_numeric)
    return MaskingSettings(_secret(ld, sec, "hash_key", ld.base), numeric or d.redact_numeric)


def _ssh_settings(top: Section) -> SshSettings:
    sec = top.section(
        "ssh",
        ("failed_logins", "failed_login_window", "record_bytes", "backend_idle", "backend_pool"),
    )
    d = SshSettings()
    if sec is None:
        return d
    return SshSettings(
        failed_logins=sec.integer("failed_logins", d.failed_logins, lo=1),
        failed_login_window=sec.duration("failed_login_window", d.failed_login_window),
        record_bytes=sec.size("record_bytes", d.record_bytes),
        backend_idle=sec.duration("backend_idle", d.backend_idle, zero_ok=True),
        backend_pool=sec.integer("backend_pool", d.backend_pool),
    )


def _postgres_settings(top: Section) -> PostgresSettings:
    sec = top.section("postgres", _PG_KEYS)
    d = PostgresSettings()
    if sec is None:
        return d
    return PostgresSettings(
        max_message_size=sec.size("max_message_size", d.max_message_size),
        allow_cleartext_without_tls=sec.boolean(
            "allow_cleartext_without_tls", d.allow_cleartext_without_tls
        ),
        record_rows=sec.integer("record_rows", d.record_rows),
        record_bytes=sec.size("record_bytes", d.record_bytes),
        pool_size=sec.integer("pool_size", d.pool_size),
        unknown_lineage=sec.choice("unknown_lineage", ("mask", "refuse"), d.unknown_lineage)
        or d.unknown_lineage,
        max_statement_size=sec.size("max_statement_size", d.max_statement_size),
        classify_inline_size=sec.size("classify_inline_size", d.classify_inline_size),
        classify_workers=sec.integer("classify_workers", d.classify_workers, 1, 64),
        classify_timeout=sec.duration("classify_timeout", d.classify_timeout),
        classify_memory=sec.size("classify_memory", d.classify_memory),
    )


# -- connectors/<name>.yaml ------------------------------------------------------------


def _load_connectors(ld: _Loader, folder: Path) -> tuple[dict[str, Connector], set[str]]:
    """The valid connectors, and every name a file defines (valid or not) for references."""
    out: dict[str, Connector] = {}
    names: dict[str, str] = {}
    for path in yaml_files(folder):
        doc, name = ld.doc(path), path.stem
        if name in names:
            doc.error(1, f"connector '{name}' is already defined by {names[name]}")
            continue
        names[name] = path.name
        if not _CONNECTOR_NAME.match(name):
            doc.error(1, f"connector name '{name}' (the file name) may only hold letters, "
                      "digits, '.', '_' and '-'")  # fmt: skip
            continue
        connector = _connector(ld, doc, path, name)
        if connector is not None:
            out[name] = connector
    return out, set(names)


def _connector(ld: _Loader, doc: Doc, path: Path, name: str) -> Connector | None:
    node = compose(path, doc)
    if node is None:
        return None
    if not isinstance(node, MappingNode):
        doc.error(node, "expected a mapping with 'type: postgres|ssh|kubernetes'")
        return None
    kind = next((v.value for k, v in node.value if getattr(k, "value", None) == "type"), None)
    allowed = _CONNECTOR_KEYS.get(str(kind)) or sorted(
        {k for ks in _CONNECTOR_KEYS.values() for k in ks}
    )
    sec = Section(doc, node, allowed)
    kind = sec.choice("type", tuple(_CONNECTOR_KEYS))
    if kind is None:
        if not sec.has("type"):
            sec.missing("type")
        return None
    source = f"{ld.relname(path)}:{line_of(node)}"
    if kind == "postgres":
        return _postgres_connector(ld, sec, name, path.parent, source)
    if kind == "ssh":
        return _ssh_connector(ld, sec, name, path.parent, source)
    return _kube_connector(ld, sec, name, path.parent, source)


def _postgres_connector(
    ld: _Loader, sec: Section, name: str, base: Path, source: str
) -> PostgresConnector | None:
    address = _address(sec, "address", default_port=5432, required=True, lo=1)
    database = sec.text("database", required=True)
    user = sec.text("user", required=True)
    password = _secret(ld, sec, "password", base)
    sslmode = sec.choice("sslmode", _SSLMODES, "prefer") or "prefer"
    rootcert_text = sec.text("sslrootcert")
    rootcert = resolve_path(base, rootcert_text) if rootcert_text else None
    if rootcert is not None:
        ld.checks.append((sec.doc, sec.line("sslrootcert"), "sslrootcert", rootcert))
    if address is None or database is None or user is None:
        return None
    return PostgresConnector(
        name, address.host, address.port, database, user, password, sslmode, rootcert, source
    )


def _ssh_connector(
    ld: _Loader, sec: Section, name: str, base: Path, source: str
) -> SshConnector | None:
    address = _address(sec, "address", default_port=22, required=True, lo=1)
    user = sec.text("user", required=True)
    private_key = _secret(ld, sec, "private_key", base)
    password = _secret(ld, sec, "password", base)
    # The backend's host key is pinned: connecting without known_hosts would trust anyone.
    known_hosts = _secret(ld, sec, "known_hosts", base, required=True)
    if not (sec.has("private_key") or sec.has("password")):
        sec.doc.error(sec.node, "an ssh connector needs private_key or password")
    connect_timeout = sec.duration("connect_timeout", 10.0)
    keepalive = sec.duration("keepalive", 30.0, zero_ok=True)
    if address is None or user is None or known_hosts is None:
        return None
    return SshConnector(
        name, address.host, address.port, user, private_key, password, known_hosts, source,
        connect_timeout=connect_timeout, keepalive=keepalive,
    )  # fmt: skip


def _kube_connector(
    ld: _Loader, sec: Section, name: str, base: Path, source: str
) -> KubeConnector | None:
    kubeconfig = _secret(ld, sec, "kubeconfig", base, required=True)
    context = sec.text("context", "") or ""
    impersonate = sec.boolean("impersonate", False)
    mask_secrets = sec.boolean("mask_secrets", True)
    if not kubeconfig:
        return None
    return KubeConnector(name, kubeconfig, context, source, impersonate=impersonate,
                         mask_secrets=mask_secrets)  # fmt: skip


# -- policies/<name>.yaml --------------------------------------------------------------


@dataclass
class _Refs:
    """What rules are checked against, across all policy files."""

    connectors: set[str]
    approver_groups: set[str] | None  # None: no Slack, approvals come from the CLI/API
    rule_sources: dict[str, str] = field(default_factory=dict)  # rule name -> file:line
    issuers: int = 0  # token issuers configured (the dev issuer counts)


def _load_policies(ld: _Loader, folder: Path, refs: _Refs) -> tuple[PolicySet, ...]:
    sets = (_policy_set(ld, path, refs) for path in yaml_files(folder))
    return tuple(s for s in sets if s is not None)


def _policy_set(ld: _Loader, path: Path, refs: _Refs) -> PolicySet | None:
    doc = ld.doc(path)
    node = compose(path, doc)
    sec = Section.of(doc, node, ("mode", "rules")) if node is not None else None
    if sec is None:
        return None
    mode: Literal["enforce", "shadow"] = (
        "shadow" if sec.choice("mode", ("enforce", "shadow")) == "shadow" else "enforce"
    )
    rules_node = sec.get("rules")
    rules: list[Rule] = []
    if rules_node is None:
        sec.missing("rules")
    elif not isinstance(rules_node, SequenceNode):
        sec.error("rules", "expected a list of rules")
    else:
        for item in rules_node.value:
            rule = _rule(doc, item, refs, ld.relname(path))
            if rule is not None:
                rules.append(rule)
    return PolicySet(path.stem, tuple(rules), mode, ld.relname(path))


def _rule(doc: Doc, node: Node, refs: _Refs, rel: str) -> Rule | None:
    sec = Section.of(doc, node, _RULE_KEYS, "rule")
    if sec is None:
        return None
    source = f"{rel}:{line_of(node)}"
    name = sec.text("name", required=True)
    if name is not None and name in refs.rule_sources:
        sec.error("name", f"rule name '{name}' is already used at {refs.rule_sources[name]}")
    elif name is not None:
        refs.rule_sources[name] = source
    effect = sec.choice("effect", EFFECTS)
    if effect is None and not sec.has("effect"):
        sec.missing("effect")
    for key, only in _EFFECT_ONLY.items():
        if sec.has(key) and effect is not None and effect != only:
            sec.error(key, f"only applies to effect {only}")
    reason = sec.text("reason", "") or ""
    effect_ = _EFFECTS.get(effect or "", "deny")
    rule = Rule(name or "", effect_, _match(sec, refs), reason, source=source)
    if effect == "require_approval":
        rule = _with_approval(sec, refs, rule)
    elif effect == "mask":
        rule = _with_masks(sec, rule)
    return rule if name and effect else None


def _with_approval(sec: Section, refs: _Refs, rule: Rule) -> Rule:
    approvers = sec.string_items("approvers")
    if not approvers:
        sec.missing("approvers")
    for group, node in approvers:
        known = refs.approver_groups
        if known is not None and group not in known:
            msg = f"approvers: group '{group}' is not in slack.approvers{suggest(group, known)}"
            sec.doc.error(node, msg)
    grant = sec.section("grant", ("reuse_for",))
    return replace(
        rule,
        approvers=tuple(g for g, _ in approvers),
        timeout=sec.duration("timeout", 600.0),
        reuse_for=grant.duration("reuse_for", 0.0, zero_ok=True) if grant else 0.0,
    )


def _with_masks(sec: Section, rule: Rule) -> Rule:
    detectors = sec.string_items("detectors")
    for value, node in detectors:
        if value not in DETECTORS:
            sec.doc.error(node, f"detectors: unknown detector '{value}'{suggest(value, DETECTORS)}")
    columns = sec.strings("columns")
    if not columns and not detectors:
        sec.doc.error(sec.node, "a mask rule needs columns or detectors")
    return replace(
        rule,
        columns=columns,
        detectors=tuple(v for v, _ in detectors if v in DETECTORS),
        style=sec.choice("style", MASK_STYLES, "redact") or "redact",
    )


def _match(rule: Section, refs: _Refs) -> Match:
    m = rule.section("match", _MATCH_KEYS)
    if m is None:
        return Match()
    connectors = _match_items(m, "connectors")
    for value, node in connectors:
        if not (_GLOB_CHARS & set(value)) and value not in refs.connectors:
            hint = suggest(value, refs.connectors)
            m.doc.error(node, f"match.connectors: no connector named '{value}'{hint}")
    sql = _sql_match(m)
    subjects, issuers = _match_strings(m, "subjects"), _match_strings(m, "issuers")
    if subjects and not issuers and refs.issuers > 1:
        m.error(
            "subjects",
            f"{refs.issuers} token issuers are configured and a subject is only unique "
            "within its issuer: add match.issuers to say whose subjects these are",
        )
    ssh = m.section("ssh", ("commands", "opaque", "sftp", "paths", "shell", "forward"))
    kube = m.section("kubernetes", (*_KUBE_KEYS, "opaque", "ports"))
    return Match(
        subjects=subjects,
        issuers=issuers,
        groups=_match_strings(m, "groups"),
        connectors=tuple(v for v, _ in connectors),
        sql=sql,
        ssh=_ssh_match(ssh) if ssh else None,
        kubernetes=_kube_match(kube) if kube else None,
    )


def _ssh_match(ssh: Section) -> SshMatch:
    sftp = _match_items(ssh, "sftp")
    for value, node in sftp:
        if not (_GLOB_CHARS & set(value)) and value not in SFTP_OPS:
            ssh.doc.error(node, f"ssh.sftp: unknown operation '{value}'{suggest(value, SFTP_OPS)}")
    return SshMatch(
        _match_strings(ssh, "commands"),
        _opaque(ssh),
        sftp=tuple(v for v, _ in sftp),
        paths=_match_strings(ssh, "paths"),
        shell=ssh.boolean("shell", False),
        forward=_forward_patterns(ssh),
    )


def _forward_patterns(ssh: Section) -> tuple[str, ...]:
    """`ssh.forward`: direct-tcpip destinations (`host:port` patterns, hoopy.netdest).
    A forward is not a command line: the key stands alone."""
    items = _match_items(ssh, "forward")
    others = [k for k in ("commands", "opaque", "sftp", "paths", "shell") if ssh.has(k)]
    if items and others:
        ssh.error("forward", f"cannot be combined with {', '.join(others)}: use another rule")
    for value, node in items:
        try:
            netdest.pattern(value)
        except ValueError as e:
            ssh.doc.error(node, f"ssh.forward: '{value}': {e}")
    return tuple(v for v, _ in items)


def _kube_match(kube: Section) -> KubeMatch:
    verbs, resources, namespaces, names, commands = (_match_strings(kube, k) for k in _KUBE_KEYS)
    ports = _ports(kube)
    if ports and resources and not glob_any(resources, ("pods/portforward",)):
        kube.error("ports", "ports only apply to pods/portforward, which resources leaves out")
    return KubeMatch(verbs, resources, namespaces, names, commands, _opaque(kube), ports)


def _ports(kube: Section) -> tuple[tuple[int, int], ...]:
    """`ports: [5432, "8000-8080"]` (pods/portforward): port numbers or inclusive ranges."""
    node = kube.values.get("ports")
    if node is None:
        return ()
    items = node.value if isinstance(node, SequenceNode) else [node]
    if not items or is_null(node):
        kube.error("ports", "empty, so it would match anything: name at least one port")
        return ()
    out: list[tuple[int, int]] = []
    for item in items:
        text = str(item.value) if isinstance(item, ScalarNode) else "a list or mapping"
        lo, dash, hi = text.partition("-")
        try:
            pair = (int(lo), int(hi) if dash else int(lo))
        except ValueError:
            pair = (0, 0)
        if not isinstance(item, ScalarNode) or not (1 <= pair[0] <= pair[1] <= 65535):
            kube.doc.error(
                item, f"kubernetes.ports: '{text[:40]}' is not a port (1-65535) or a range 'LO-HI'"
            )
            continue
        out.append(pair)
    return tuple(out)


def _opaque(sec: Section) -> bool:
    """`opaque: true` (ssh, kubernetes): shell lines hoopy cannot read (hoopy.shell)."""
    return sec.boolean("opaque", False)


def _sql_match(m: Section) -> SqlMatch | None:
    sql = m.section("sql", _SQL_KEYS)
    if sql is None:
        return None
    statements = _match_items(sql, "statements")
    for value, node in statements:
        problem = _statement_kind_problem(value)
        if problem:
            sql.doc.error(node, problem)
    return SqlMatch(
        tuple(v for v, _ in statements),
        _match_strings(sql, "tables"),
        _match_strings(sql, "functions"),
    )


def _match_items(sec: Section, key: str) -> list[tuple[str, Node]]:
    """A match field's strings.  An absent matcher means "any", so an empty list (or a
    key with no value) is a mistake: `tables: []` would silently match every table."""
    node = sec.values.get(key)
    if node is not None and (is_null(node) or (isinstance(node, SequenceNode) and not node.value)):
        sec.error(key, "empty, so it would match anything: name at least one, or remove the key")
    return sec.string_items(key)


def _match_strings(sec: Section, key: str) -> tuple[str, ...]:
    return tuple(v for v, _ in _match_items(sec, key))


@functools.cache
def _statement_kinds() -> tuple[frozenset[str], frozenset[str]]:
    """Every name a statement kind goes by (kinds and their verbs: `drop` covers
    `drop_table`), and the verbs a `verb_object` kind may start with."""
    from hoopy.protocols.postgres import classkinds as c
    from hoopy.protocols.postgres.pgquery import OBJECT_TYPES

    # The classifier's own list (one list: a kind it emits is a kind a rule may name).
    kinds = set(c.STATEMENT_KINDS)
    kinds |= {c.object_kind(v, o) for v in c.OBJECT_KIND_VERBS for o in OBJECT_TYPES}
    verbs = {k for k in kinds if "_" not in k}
    return frozenset(kinds | {k.split("_", 1)[0] for k in kinds}), frozenset(verbs)


def _statement_kind_problem(value: str) -> str | None:
    """What is wrong with a name (or glob) in `sql.statements`, or None."""
    names, verbs = _statement_kinds()
    kind = value.lower()  # policy matches kinds case-insensitively
    verb, _, obj = kind.partition("_")
    if kind in names or (obj and verb in verbs):  # verb_object: objects come from the tree
        return None
    if _GLOB_CHARS & set(kind):
        if any(fnmatch.fnmatchcase(n, kind) for n in names):
            return None
        return f"statement pattern '{value}' matches no statement kind"
    return f"unknown statement kind '{value}'{suggest(kind, names)}"


# -- entry points ----------------------------------------------------------------------


def _read(path: Path) -> tuple[Config | None, _Loader]:
    ld = _Loader(path)
    doc = ld.doc(ld.path)
    node = compose(ld.path, doc)
    top = Section.of(doc, node, _TOP_KEYS) if node is not None else None
    if top is None:
        return None, ld
    listen, tls, issuers = _listen(top), _tls(ld, top), _issuers(top)
    state, state_path = _state(ld, top)
    admin_token = _secret(ld, top, "admin_token", ld.base)
    dev_issuer, slack, pg = _dev_issuer(top), _slack(ld, top), _postgres_settings(top)
    masking = _masking_settings(ld, top)
    ssh_settings = _ssh_settings(top)
    recordings = resolve_path(ld.base, top.text("recordings") or "recordings/")
    connectors_dir, read_connectors = _folder(ld, top, "connectors_dir", "connectors/")
    policies_dir, read_policies = _folder(ld, top, "policies_dir", "policies/")
    connectors, names = _load_connectors(ld, connectors_dir) if read_connectors else ({}, set())
    groups = set(slack.approvers) if slack else None
    if top.has("slack") and slack is None:
        groups = None  # slack is broken: its own problems are reported, skip the cross-check
    refs = _Refs(names, groups, issuers=len(issuers) + (dev_issuer is not None))
    policies = _load_policies(ld, policies_dir, refs) if read_policies else ()
    if ld.problems:
        return None, ld
    config = Config(
        ld.path, listen, tls, issuers, state, recordings, connectors_dir, policies_dir,
        connectors, policies, admin_token, dev_issuer, slack, pg, masking, state_path,
        ssh=ssh_settings,
    )  # fmt: skip
    return config, ld


def load_config(path: Path) -> Config:
    """The whole configuration, or ConfigError listing every problem as 'file:line: message'.

    Secret references are checked for form only; `check_config` also checks they resolve.
    """
    config, ld = _read(path)
    if config is None:
        raise ConfigError(ld.problems or [f"{path}: cannot load"])
    return config


def check_config(path: Path) -> list[str]:
    """Every problem (empty: OK), including secrets that do not resolve — names, never values."""
    _, ld = _read(path)
    for doc, line, key, what in ld.checks:
        problem = _unresolvable(what) if isinstance(what, Secret) else unreadable(what)
        if problem:
            doc.error(line, f"{key}: {problem}")
    return ld.problems


def _unresolvable(secret: Secret) -> str | None:
    kind, _, rest = secret.ref.partition(":")
    if kind == "env":
        value = os.environ.get(rest)
        if value is None:
            return f"environment variable {rest} is not set"
        return None if value else f"environment variable {rest} is empty"
    p = Path(rest)
    return unreadable(p if p.is_absolute() else secret.base / p)
