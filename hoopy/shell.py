"""Shell command lines read as the simple commands they would run (SSH, Kubernetes exec).

SKELETON: the interface is final; the reading is being deepened (see tests/test_shell.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tree_sitter_bash
from tree_sitter import Language, Node, Parser

from hoopy.policy import Command

_LANG = Language(tree_sitter_bash.language())


@dataclass(frozen=True)
class SimpleCommand:
    argv: tuple[str, ...]  # normalised: argv[0] is the bare program name

    @property
    def program(self) -> str:
        return self.argv[0] if self.argv else ""

    @property
    def line(self) -> str:
        return " ".join(self.argv)


@dataclass(frozen=True)
class ShellReading:
    text: str
    commands: tuple[SimpleCommand, ...]  # every simple command the line would run
    opaque: tuple[str, ...]  # why parts cannot be seen; () = fully visible


def read_line(line: str) -> ShellReading:
    parser = Parser(_LANG)
    tree = parser.parse(line.encode())
    cmds: list[SimpleCommand] = []
    opaque: list[str] = []
    if tree.root_node.has_error:
        opaque.append("unparseable")
    stack: list[Node] = [tree.root_node]
    while stack:
        n = stack.pop()
        if n.type == "command":
            words = [
                c for c in n.children if c.type not in ("variable_assignment", "file_redirect")
            ]
            argv = tuple(
                _text(w).strip("'\"").rsplit("/", 1)[-1] if i == 0 else _text(w)
                for i, w in enumerate(words)
            )
            if argv:
                cmds.append(SimpleCommand(argv))
        stack.extend(reversed(n.children))
    return ShellReading(line, tuple(cmds), tuple(opaque))


def read_argv(argv: Sequence[str]) -> ShellReading:
    if not argv:
        return ShellReading("", (), ("empty command",))
    argv0 = argv[0].rsplit("/", 1)[-1]
    return ShellReading(" ".join(argv), (SimpleCommand((argv0, *argv[1:])),), ())


def _text(n: Node) -> str:
    return (n.text or b"").decode(errors="replace")


def shell_command(protocol: str, connector: str, reading: ShellReading, **fields: Any) -> Command:
    """A policy Command for a shell reading: kinds={"exec"}, opaque kinds when unseen."""
    return Command(
        protocol,
        connector,
        text=fields.pop("text", reading.text),
        kinds=frozenset({"exec"}),
        opaque=frozenset({"shell_unparseable"}) if reading.opaque else frozenset(),
        command_line=reading.text,
        commands=tuple(c.line for c in reading.commands),
        **fields,
    )
