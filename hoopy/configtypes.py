"""hoopy's configuration as frozen dataclasses, with Secret and ConfigError.

Plain data, no YAML: every part of hoopy carries these, while only hoopy.config reads
files.  hoopy.config re-exports them all; import them from there.
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path

from hoopy.policy import PolicySet


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
    # Processes accepting agents on the PostgreSQL address (hoopy/pgworkers.py);
    # 1: the gateway process alone.
    workers: int = 1


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
