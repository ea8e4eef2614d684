"""Where a PostgreSQL session's unqualified table names may point: the session's one piece
of state that changes how policy reads later statements.

`Session` knows nothing of SQL; it asks its `scope` (session.CommandScope) to take in each
command and to place it before the policy reads it.  This is PostgreSQL's scope: a
`SET search_path` (or `set_config`, or a role change moving "$user") widens the schemas an
unqualified name may be in; it grows, never shrinks (a rollback or `SET LOCAL` may undo a
change, and hoopy need not know which), and becomes unknown (None) once set to what hoopy
cannot read, which makes rules on schema-qualified names treat every name as a match.
"""

from __future__ import annotations

from dataclasses import replace

from hoopy.policy import Command
from hoopy.protocols.postgres.lineagechecks import search_path_schemas

DEFAULT_SCHEMAS: tuple[str, ...] = ("public",)
# What may change where unqualified names point: search_path, and the role "$user" is
_PATH_KINDS = frozenset({"set_search_path", "set_role", "set_session_authorization"})
_PATH_FUNCTIONS = frozenset({"set_config", "pg_catalog.set_config"})


class SearchPath:
    """A session's search_path as policy needs it (Command.schemas / also_schemas)."""

    __slots__ = ("also_schemas", "schemas", "state", "user")

    def __init__(self, user: str) -> None:
        self.user = user  # the connector's role: "$user" in a search_path
        self.schemas: tuple[str, ...] | None = DEFAULT_SCHEMAS
        self.also_schemas: tuple[str, ...] = (user,)  # "$user" of the default search_path
        # Stable while nothing changes: caches keyed on it (approval grants, Bind gates)
        # compare it by identity.
        self.state: tuple[tuple[str, ...] | None, tuple[str, ...]] = (
            self.schemas,
            self.also_schemas,
        )

    def observe(self, command: Command) -> bool:
        """Take in what `command` changes; True when decisions made before may not hold."""
        if _PATH_KINDS.isdisjoint(command.kinds) and (
            not command.functions or _PATH_FUNCTIONS.isdisjoint(command.functions)
        ):
            return False  # inert(command), without its frame
        if self.schemas is None:
            return False
        new = self._schemas_set_by(command)
        if new is None:
            self.schemas = None
        elif not set(new) <= set(self.schemas):
            self.schemas = tuple(dict.fromkeys((*self.schemas, *new)))
        else:
            return False
        self.state = (self.schemas, self.also_schemas)
        return True

    def inert(self, command: Command) -> bool:
        """Whether `command` can never change the search path, in any state: `observe`
        returns False for it at once (Session.decide then skips asking)."""
        return _PATH_KINDS.isdisjoint(command.kinds) and (
            not command.functions or _PATH_FUNCTIONS.isdisjoint(command.functions)
        )

    def place(self, command: Command) -> Command:
        """`command` with where its unqualified names may point."""
        if command.schemas == self.schemas and command.also_schemas == self.also_schemas:
            return command
        return replace(command, schemas=self.schemas, also_schemas=self.also_schemas)

    def _schemas_set_by(self, command: Command) -> tuple[str, ...] | None:
        """The schemas `command` sets search_path to (None: cannot tell)."""
        found = search_path_schemas(command.text)
        return None if found is None else tuple(self.user if s == "$user" else s for s in found)
