"""hoopy.yaml + connectors/ + policies/ → frozen dataclasses.

Every mistake is reported as `file:line: message` (all of them, not just the
first) so `hoopy check` can list them.  Secrets are references (`env:NAME`,
`file:PATH`) resolved only when used, and never appear in reprs or errors.

This module reads hoopy.yaml and connectors/<name>.yaml and is the public API:
the dataclasses live in hoopy.configtypes and policy files are read by
hoopy.configpolicy, both re-exported or called from here.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from hoopy.configpolicy import PolicyRefs, load_policies
from hoopy.configtypes import (
    Address,
    Config,
    ConfigError,
    Connector,
    DevIssuerConfig,
    IssuerConfig,
    KubeConnector,
    Listen,
    MaskingSettings,
    PostgresConnector,
    PostgresSettings,
    Secret,
    SlackConfig,
    SshConnector,
    SshSettings,
    TLSFiles,
)
from hoopy.yamlsrc import (
    Doc,
    Section,
    Tree,
    compose,
    line_of,
    parse_host_port,
    resolve_path,
    unreadable,
    yaml_files,
)

__all__ = [
    "Address",
    "Config",
    "ConfigError",
    "Connector",
    "DevIssuerConfig",
    "IssuerConfig",
    "KubeConnector",
    "Listen",
    "MaskingSettings",
    "PostgresConnector",
    "PostgresSettings",
    "Secret",
    "SlackConfig",
    "SshConnector",
    "SshSettings",
    "TLSFiles",
    "check_config",
    "insecure_http",
    "load_config",
]

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
    "classify_workers", "classify_timeout", "classify_memory", "workers",
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
        workers=sec.integer("workers", d.workers, 1, 64),
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
    refs = PolicyRefs(names, groups, issuers=len(issuers) + (dev_issuer is not None))
    policies = load_policies(ld, policies_dir, refs) if read_policies else ()
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
