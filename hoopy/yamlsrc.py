"""Reading YAML with line numbers, collecting every problem instead of stopping.

Theory of operation: `yaml.compose` (SafeLoader) gives a node tree that keeps where each
value was written; we walk it ourselves instead of constructing Python objects, so a
mistake can be reported as `file:line: message`.  Accessors never raise: they record a
problem on the `Doc` and return a default, so one pass reports all the mistakes in a file.

Messages name keys, never free-form values (only short words checked against a list: a
choice, a connector or detector name): a secret pasted into the wrong key must not end up
on a terminal or in a CI log.  YAML syntax errors give pyyaml's problem text, not its
quote of the offending line.

Strings are taken as written (`node.value`), not as YAML 1.1 would resolve them, so
`sslmode: off` stays "off" and `user: 0755` stays "0755".
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

_NULL = "tag:yaml.org,2002:null"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"


@dataclass
class Doc:
    """One file being read: how it is named in problems and where they go.

    Entries are (file order, line, sequence, text) so a Tree can list them file by file,
    line by line, however the reading jumped around.
    """

    label: str
    entries: list[tuple[int, int, int, str]] = field(default_factory=list)
    order: int = 0

    def error(self, at: Node | int, message: str) -> None:
        line = at if isinstance(at, int) else at.start_mark.line + 1
        self._add(line, f"{self.label}:{line}: {message}")

    def whole(self, message: str) -> None:
        """A problem with the file itself (no line to point at)."""
        self._add(0, f"{self.label}: {message}")

    def _add(self, line: int, text: str) -> None:
        self.entries.append((self.order, line, len(self.entries), text))


class Tree:
    """A config file and the files it leads to, named in problems as the user named the config
    (so `file:line` is clickable from the cwd); their problems are listed together."""

    def __init__(self, path: Path) -> None:
        self.shown = path
        self.path = Path(os.path.normpath(path.absolute()))
        self.base = self.path.parent
        self.entries: list[tuple[int, int, int, str]] = []
        self._files = 0

    @property
    def problems(self) -> list[str]:
        return [text for *_, text in sorted(self.entries)]

    def doc(self, p: Path) -> Doc:
        try:
            label = str(self.shown.parent / p.relative_to(self.base))
        except ValueError:
            label = str(p)
        self._files += 1
        return Doc(label, self.entries, self._files)

    def relname(self, p: Path) -> str:
        """Path relative to the config folder where possible (for `source` fields)."""
        try:
            return p.relative_to(self.base).as_posix()
        except ValueError:
            return str(p)


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def suggest(word: str, choices: Iterable[str], prefix: str = "") -> str:
    """' (did you mean 'x'?)' for a near miss, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def compose(path: Path, doc: Doc) -> Node | None:
    """The file's node tree; an empty file is an empty mapping; None when unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        doc.whole(f"cannot read ({e.strerror})")
        return None
    except UnicodeDecodeError:
        doc.whole("not UTF-8 text")
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        # problem/context only: str(e) would quote the offending line, which may hold a secret
        what = e.problem or e.context or "invalid YAML"
        doc.error(mark.line + 1 if mark else 1, f"YAML syntax error: {what}")
        return None
    except yaml.YAMLError:
        doc.error(1, "YAML syntax error")
        return None
    return node if node is not None else yaml.compose("{}", Loader=yaml.SafeLoader)


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


class Section:
    """A YAML mapping with typed, problem-recording accessors.

    `prefix` names the mapping in messages ("slack." → "slack.token: …"); `allowed`
    None accepts any key (e.g. approver group names).
    """

    def __init__(
        self, doc: Doc, node: MappingNode, allowed: Sequence[str] | None, prefix: str = ""
    ) -> None:
        self.doc, self.node, self.prefix = doc, node, prefix
        self.values: dict[str, Node] = {}
        self.key_nodes: dict[str, Node] = {}
        for key, value in node.value:
            self._add(key, value, allowed)

    @classmethod
    def of(
        cls, doc: Doc, node: Node, allowed: Sequence[str] | None, name: str = "", prefix: str = ""
    ) -> Section | None:
        if not isinstance(node, MappingNode):
            doc.error(node, f"{name or 'document'}: expected a mapping")
            return None
        return cls(doc, node, allowed, prefix)

    def _add(self, key: Node, value: Node, allowed: Sequence[str] | None) -> None:
        if not isinstance(key, ScalarNode) or is_null(key):
            self.doc.error(key, f"{self.prefix or 'mapping'}: keys must be plain names")
            return
        name = key.value
        if name in self.values:
            first = line_of(self.key_nodes[name])
            self.doc.error(key, f"duplicate key '{self.name(name)}' (first at line {first})")
        elif allowed is not None and name not in allowed:
            hint = suggest(name, allowed, self.prefix)
            self.doc.error(key, f"unknown key '{self.name(name)}'{hint}")
        else:
            self.values[name], self.key_nodes[name] = value, key

    # -- plumbing -------------------------------------------------------------------

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def error(self, key: str, message: str) -> None:
        self.doc.error(self.values.get(key, self.node), f"{self.name(key)}: {message}")

    def get(self, key: str) -> Node | None:
        """The value node, or None when the key is absent or explicitly empty."""
        node = self.values.get(key)
        return None if node is None or is_null(node) else node

    def has(self, key: str) -> bool:
        return self.get(key) is not None

    def line(self, key: str) -> int:
        return line_of(self.values.get(key, self.node))

    def missing(self, key: str) -> None:
        if key in self.values:
            self.error(key, "expected a value")
        else:
            self.doc.error(self.node, f"missing required key '{self.name(key)}'")

    # -- typed accessors --------------------------------------------------------------

    def text(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        node = self.get(key)
        if node is None:
            if required:
                self.missing(key)
            return default
        if not isinstance(node, ScalarNode):
            self.error(key, "expected a string")
            return default
        if required and not node.value.strip():
            self.error(key, "must not be empty")
            return default
        return str(node.value)

    def choice(self, key: str, options: Sequence[str], default: str | None = None) -> str | None:
        value = self.text(key)
        if value is None:
            return default
        if value not in options:
            self.error(
                key, f"'{value}' is not one of {', '.join(options)}{suggest(value, options)}"
            )
            return default
        return value

    def integer(self, key: str, default: int, lo: int = 0, hi: int | None = None) -> int:
        node = self.get(key)
        if node is None:
            return default
        if not (isinstance(node, ScalarNode) and node.tag == _INT):
            self.error(key, "expected an integer")
            return default
        value = int(SafeConstructor().construct_yaml_int(node))
        if value < lo or (hi is not None and value > hi):
            self.error(
                key, f"must be between {lo} and {hi}" if hi is not None else f"must be ≥ {lo}"
            )
            return default
        return value

    def number(self, key: str, default: float, lo: float = 0.0) -> float:
        node = self.get(key)
        if node is None:
            return default
        if not (isinstance(node, ScalarNode) and node.tag in (_INT, _FLOAT)):
            self.error(key, "expected a number")
            return default
        c = SafeConstructor()
        value = float(
            c.construct_yaml_int(node) if node.tag == _INT else c.construct_yaml_float(node)
        )
        if not math.isfinite(value) or value < lo:
            self.error(key, f"must be a finite number ≥ {lo:g}")
            return default
        return value

    def boolean(self, key: str, default: bool) -> bool:
        node = self.get(key)
        if node is None:
            return default
        if not (isinstance(node, ScalarNode) and node.tag == _BOOL):
            self.error(key, "expected true or false")
            return default
        return bool(SafeConstructor().construct_yaml_bool(node))

    def string_items(self, key: str) -> list[tuple[str, Node]]:
        """A string or a list of strings, each with its node (for per-item line numbers)."""
        node = self.get(key)
        if node is None:
            return []
        items = node.value if isinstance(node, SequenceNode) else [node]
        out: list[tuple[str, Node]] = []
        for item in items:
            if not isinstance(item, ScalarNode) or is_null(item) or not item.value.strip():
                self.doc.error(item, f"{self.name(key)}: expected a string or a list of strings")
                continue
            out.append((str(item.value), item))
        return out

    def strings(self, key: str) -> tuple[str, ...]:
        return tuple(value for value, _ in self.string_items(key))

    def duration(self, key: str, default: float, zero_ok: bool = False) -> float:
        """Seconds from a number or '10m', '30s', '1h30m', '250ms', '2d'."""
        node = self.get(key)
        if node is None:
            return default
        value = parse_duration(node.value) if isinstance(node, ScalarNode) else None
        if value is None or (value == 0 and not zero_ok):
            self.error(key, "expected a duration such as 30s, 10m or 1h (or seconds)")
            return default
        return value

    def size(self, key: str, default: int) -> int:
        """Bytes from an integer or '64MiB', '1MB', '512KiB'."""
        node = self.get(key)
        if node is None:
            return default
        value = parse_size(node.value) if isinstance(node, ScalarNode) else None
        if value is None or value <= 0:
            self.error(key, "expected a size in bytes such as 1048576, 64MiB or 1MB")
            return default
        return value

    def url(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        text = self.text(key, default, required)
        if text is None or text == default:
            return text
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.error(key, "expected an http:// or https:// URL")
            return default
        return text

    def section(self, key: str, allowed: Sequence[str] | None) -> Section | None:
        node = self.get(key)
        if node is None:
            return None
        return Section.of(self.doc, node, allowed, self.name(key), f"{self.name(key)}.")


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float | None:
    text = text.strip().replace("_", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    if not text or not re.fullmatch(f"(?:{_DURATION_PART.pattern})+", text):
        return None
    return sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(b?)", re.IGNORECASE)
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}


def parse_size(text: str) -> int | None:
    """'64MiB' (binary), '1MB' / '1M' (decimal), '4096' or '4096B' (bytes)."""
    m = _SIZE.fullmatch(text.strip().replace("_", ""))
    if m is None or (m.group(3) and not m.group(2)):
        return None
    power = _SIZE_POWERS[m.group(2).lower()]
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base**power)


_HOST_PORT = re.compile(r"\[([^\[\]\s]+)\](?::(\d+))?|([^:\[\]\s/]+)(?::(\d+))?")


def parse_host_port(text: str, default_port: int | None = None) -> tuple[str, int] | None:
    """'host:port' or '[v6]:port' (port optional when a default is given)."""
    m = _HOST_PORT.fullmatch(text.strip())
    if m is None:
        return None
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if m.group(1):
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return None
    if port is None:
        return None if default_port is None else (host, default_port)
    return (host, int(port)) if int(port) <= 65535 else None


def resolve_path(base: Path, text: str) -> Path:
    """`text` relative to `base` (absolute paths and ~ as usual), normalised."""
    return Path(os.path.normpath(base / Path(text).expanduser()))


def yaml_files(folder: Path) -> list[Path]:
    """The *.yaml / *.yml files of a folder by name; dotfiles (editor droppings) skipped."""
    try:
        entries = list(folder.iterdir())
    except OSError:
        return []
    return sorted(
        p
        for p in entries
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.is_file()
    )


def unreadable(path: Path) -> str | None:
    """Why a file cannot be read, or None when it can."""
    try:
        with path.open("rb"):
            return None
    except OSError as e:
        return f"cannot read {path} ({e.strerror})"
