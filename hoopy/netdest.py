"""Network destinations (`host:port`) as policy sees them: normalised, and matched
against rule patterns.  Pure: no I/O, no DNS.

Theory of operation: an agent names a destination (an SSH `direct-tcpip` channel:
`ssh -L`, `ssh -W`); the backend host resolves and reaches it.  hoopy never resolves
a name, so a rule is about the destination *as named*, and every form that could
name one place two ways, or that the backend's resolver reads differently from the
way a rule reads it, is refused instead of guessed at:

- names: ASCII letters, digits, `-`, `_` and dots, lower-cased; no empty label, no
  trailing dot (`db.internal.` skips the backend's search domains), no label starting
  with `-`, at most 253 characters;
- IPv4: only the canonical dotted quad.  `127.1`, `0x7f.0.0.1`, `017.0.0.1` and
  `2130706433` are what inet_aton makes of them, not what they look like: refused;
- IPv6: bare on the wire (OpenSSH strips the brackets of `-L 1:[::1]:2`), written
  back compressed; zone ids (`fe80::1%eth0`) refused; an IPv4-mapped address is its
  IPv4 address; one a translator or tunnel may turn into the IPv4 address it carries
  (NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, SIIT `::ffff:0:a.b.c.d`,
  IPv4-compatible `::a.b.c.d`, 6to4 `2002::/16`) has that address (and its aliases) as aliases;
- ports 1-65535.

A destination also has *aliases*: other names of the same place.  Loopback has many
(`localhost` and the names /etc/hosts usually gives it, names under `.localhost` and
`.localhost.localdomain` (nss-myhostname), `127.0.0.0/8`, `::1`, and `0.0.0.0/8` / `::`,
which reach the local host on Linux).  Deny and approval rules match
the destination or any alias, so a deny on `127.0.0.1:*` also stops `0.0.0.0:22`; an
allow must name the destination itself.  Names hoopy cannot know (the backend's own
host name and addresses, its other /etc/hosts entries) are no aliases: allow lists,
not deny lists, are what confines forwarding.

Patterns (`ssh: {forward: [...]}`) are `HOST:PORT`.  HOST is `*` (any destination),
a name glob where `*` and `?` never cross a dot (`*.internal` is `a.internal`, not
`a.b.internal`; `db.internal*` is never `db.internal.evil.com`), an IPv4 address or
CIDR block (`10.0.0.0/8`), or an IPv6 address or block in brackets (`[fd00::/8]`;
one within `::ffff:0:0/96` is read as the IPv4 block it maps, as destinations are).
PORT is a number, `*`, a range `lo-hi`, or a digit glob (`80*`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

MAX_NAME = 253
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,62})\Z")
_NUMERIC_LABEL = re.compile(r"(0x[0-9a-f]*|[0-9]+)\Z")
_GLOB_LABEL = re.compile(r"[a-z0-9_*?-]{1,63}\Z")
_PORT_GLOB = re.compile(r"[0-9*?]{1,5}\Z")
_PORT_RANGE = re.compile(r"([0-9]{1,5})-([0-9]{1,5})\Z")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
# Names the usual /etc/hosts gives loopback addresses (Debian, RHEL)
_LOOPBACK_HOSTS = frozenset(
    {"localhost", "localhost.localdomain", "localhost4", "localhost6", "ip6-localhost",
     "ip6-loopback", "localhost4.localdomain4", "localhost6.localdomain6",
     # systemd (nss-myhostname, nss-resolve): the host's own outbound address and the
     # resolver stubs on 127.0.0.53/54
     "_outbound", "_localdnsstub", "_localdnsproxy"}
)  # fmt: skip


# nss-myhostname (systemd) resolves any name under these to loopback
_LOOPBACK_SUFFIXES = (".localhost", ".localhost.localdomain")
# 0.0.0.0/8 is "this host" (RFC 1122); a Linux connect() to 0.x.y.z goes to the host
_THIS_HOST = ipaddress.IPv4Network("0.0.0.0/8")
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_COMPAT = ipaddress.IPv6Network("::/96")
_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT (RFC 2765)


@dataclass(frozen=True)
class Destination:
    host: str  # normalised: lower-case name, canonical IPv4, compressed IPv6 (no brackets)
    port: int
    aliases: tuple[str, ...] = ()  # other hosts naming the same place (see module doc)

    def __str__(self) -> str:
        return join(self.host, self.port)

    def forms(self) -> tuple[str, ...]:
        """`host:port` of the destination, then of each alias."""
        return (str(self), *(join(a, self.port) for a in self.aliases if a != self.host))


def join(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split(text: str) -> tuple[str, str]:
    """`host:port` / `[v6]:port` → (host without brackets, port text)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError("an IPv6 address goes in brackets followed by :port: [::1]:22")
        return host, rest[1:]
    host, sep, port = text.rpartition(":")
    if not sep:
        raise ValueError("name a port: host:port, or host:* for any port")
    if ":" in host:
        raise ValueError("an IPv6 address goes in brackets: [::1]:22")
    return host, port


def destination(host: str, port: int) -> Destination:
    """The destination an agent named, normalised; ValueError says why it is refused."""
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is out of range (1-65535)")
    if not host or len(host) > MAX_NAME or not (host.isascii() and host.isprintable()):
        raise ValueError("the host must be a plain ASCII name or IP address of 1-253 characters")
    if any(c.isspace() for c in host):
        raise ValueError("the host must be a plain ASCII name or IP address of 1-253 characters")
    if ":" in host:
        return _v6(host, port)
    name = host.lower()
    labels = name.split(".")
    if all(_NUMERIC_LABEL.match(label) for label in labels):
        try:
            ip = ipaddress.IPv4Address(name)
        except ValueError:
            ip = None
        if ip is None or str(ip) != name:
            raise ValueError(
                f"'{name}' is not a canonical IPv4 address (write it as a.b.c.d, "
                "decimal, no leading zeros)"
            )
        return Destination(name, port, _aliases(ip))
    if name.endswith("."):
        raise ValueError("a trailing dot is not accepted: name the host without it")
    if not all(_LABEL.match(label) for label in labels):
        raise ValueError(
            "the host name may hold only letters, digits, '-', '_' and dots between "
            "non-empty labels, none starting with '-'"
        )
    if name in _LOOPBACK_HOSTS or name.endswith(_LOOPBACK_SUFFIXES):
        return Destination(name, port, _LOOPBACK_NAMES)
    return Destination(name, port)


def _v6(host: str, port: int) -> Destination:
    if "%" in host or "[" in host or "]" in host:
        raise ValueError("IPv6 zone ids and brackets are not accepted in a destination")
    try:
        ip = ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"'{host}' is not an IPv6 address") from None
    mapped = ip.ipv4_mapped
    if mapped is not None:
        return Destination(str(mapped), port, _aliases(mapped))
    embedded = _embedded_v4(ip)
    if embedded is not None:  # where a translator would take it: that place's names too
        names = dict.fromkeys((str(embedded), *_aliases(embedded)))
        return Destination(ip.compressed, port, tuple(names))
    return Destination(ip.compressed, port, _aliases(ip))


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries for a translator or tunnel, if any: NAT64
    64:ff9b::/96 and 64:ff9b:1::/48, SIIT ::ffff:0:a.b.c.d, IPv4-compatible ::a.b.c.d,
    6to4 2002::/16."""
    low = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64 or ip in _TRANSLATED:
        return low
    if ip in _COMPAT and not (ip.is_loopback or ip.is_unspecified):
        return low
    if ip in _NAT64_LOCAL:  # RFC 6052 /48 layout: bits 48-63 and 72-87 (64-71 are zero)
        n = int(ip)
        return ipaddress.IPv4Address(((n >> 64) & 0xFFFF) << 16 | ((n >> 40) & 0xFFFF))
    return ip.sixtofour


def _aliases(ip: IPAddress) -> tuple[str, ...]:
    this_host = ip.version == 4 and ip in _THIS_HOST
    return _LOOPBACK_NAMES if ip.is_loopback or ip.is_unspecified or this_host else ()


# ---- patterns -------------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    any_host: bool = False
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    name: re.Pattern[str] | None = None  # a name glob, labels kept apart
    ports: tuple[int, int] | None = None  # inclusive range
    port_glob: re.Pattern[str] | None = None

    def matches(self, host: str, port: int) -> bool:
        if self.ports is not None and not self.ports[0] <= port <= self.ports[1]:
            return False
        if self.port_glob is not None and not self.port_glob.fullmatch(str(port)):
            return False
        if self.any_host:
            return True
        if self.network is not None:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                return False  # a name: hoopy does not resolve it
            return ip.version == self.network.version and ip in self.network
        return self.name is not None and self.name.fullmatch(host) is not None


def _glob(text: str, one: str, many: str) -> re.Pattern[str]:
    out = "".join(many if c == "*" else one if c == "?" else re.escape(c) for c in text)
    return re.compile(out)


@lru_cache(maxsize=1024)
def pattern(text: str) -> Pattern:
    """A rule's `HOST:PORT`; ValueError says what is wrong with it."""
    if not text.isascii() or not text.isprintable() or " " in text:
        raise ValueError("use plain ASCII without spaces: host:port")
    host, port = split(text)
    ports, port_glob = _port_pattern(port)
    if host == "*":
        return Pattern(any_host=True, ports=ports, port_glob=port_glob)
    if "/" in host or ":" in host:
        try:
            net = ipaddress.ip_network(host, strict=True)
        except ValueError as e:
            raise ValueError(f"'{host}' is not an IP address or CIDR block ({e})") from None
        if net.version == 6 and net.subnet_of(_MAPPED):
            # destinations name IPv4-mapped addresses as IPv4 (see _v6): so does the rule
            low = int(net.network_address) & 0xFFFFFFFF
            net = ipaddress.IPv4Network((low, net.prefixlen - 96))
        return Pattern(network=net, ports=ports, port_glob=port_glob)
    name = host.lower()
    labels = name.split(".")
    if "*" not in name and "?" not in name:
        destination(name, 1)  # the same checks as an agent's destination
        if all(_NUMERIC_LABEL.match(label) for label in labels):
            net = ipaddress.ip_network(name)
            return Pattern(network=net, ports=ports, port_glob=port_glob)
    elif not all(_GLOB_LABEL.match(label) for label in labels):
        raise ValueError(
            f"host pattern '{host}': letters, digits, '-', '_', '*' and '?' between dots"
        )
    return Pattern(name=_glob(name, "[^.:]", "[^.:]*"), ports=ports, port_glob=port_glob)


def _port_pattern(port: str) -> tuple[tuple[int, int] | None, re.Pattern[str] | None]:
    if port == "*":
        return None, None
    r = _PORT_RANGE.match(port)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(f"port range {port}: need 1 <= low <= high <= 65535")
        return (lo, hi), None
    if not _PORT_GLOB.match(port):
        raise ValueError(f"port '{port}': a number, *, a range lo-hi or a digit glob like 80*")
    if "*" in port or "?" in port:
        return None, _glob(port, "[0-9]", "[0-9]*")
    if not 1 <= int(port) <= 65535 or str(int(port)) != port:
        raise ValueError(f"port {port} is out of range (1-65535, no leading zeros)")
    return (int(port), int(port)), None


def matches(patterns: tuple[str, ...], form: str) -> bool:
    """Does any pattern match one `host:port` form of a Destination?"""
    host, port = split(form)
    return any(pattern(p).matches(host, int(port)) for p in patterns)
