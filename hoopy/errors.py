"""Error types that carry the reply hint for each protocol (DESIGN §6).

A proxy turns any of these into its client's own error: PostgreSQL uses
`sqlstate`, Kubernetes `http_status`, SSH `ssh_exit`.  Messages are written for
the agent and must never contain secrets (tokens, backend credentials).
"""

from __future__ import annotations


class HoopyError(Exception):
    sqlstate = "XX000"
    http_status = 500
    ssh_exit = 1
    fatal = False  # True: the session cannot continue (PostgreSQL FATAL)

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AuthFailed(HoopyError):
    """Bad, expired or unverifiable token."""

    sqlstate = "28000"  # DESIGN §6: bad / expired token
    http_status = 401
    ssh_exit = 255
    fatal = True


class NotAdmitted(HoopyError):
    """A valid identity that may not use this connector."""

    sqlstate = "28000"
    http_status = 403
    ssh_exit = 255
    fatal = True


class TLSRequired(HoopyError):
    sqlstate = "28000"
    http_status = 403
    fatal = True


class StartupRefused(HoopyError):
    """A startup parameter hoopy will not pass on (a setting off the safe list)."""

    sqlstate = "42501"
    fatal = True


class UnknownConnector(HoopyError):
    sqlstate = "3D000"
    http_status = 404
    ssh_exit = 255
    fatal = True


class CommandDenied(HoopyError):
    """A policy denial; the session stays usable."""

    sqlstate = "42501"
    http_status = 403
    ssh_exit = 126

    def __init__(self, message: str, rule: str = "") -> None:
        super().__init__(message)
        self.rule = rule


class ApprovalRejected(CommandDenied):
    """An approval that was denied, expired or cancelled."""

    def __init__(self, message: str, approval_id: str, rule: str = "") -> None:
        super().__init__(message, rule)
        self.approval_id = approval_id


class QueryCanceled(CommandDenied):
    """The agent cancelled a command while hoopy held it (waiting for approval): answered
    as the server answers a cancelled statement; the session stays usable."""

    sqlstate = "57014"
    http_status = 499
    ssh_exit = 130

    def __init__(self, message: str = "canceling statement due to user request") -> None:
        super().__init__(message)


class UnparseableCommand(HoopyError):
    """A statement hoopy cannot read: refused, never forwarded.  Shaped like the server's
    own syntax error (its message, `position`: 1-based character index into the text) so
    clients print it as they would the server's; hoopy's words go in `detail`, after the
    grammar's own DETAIL line if it has one."""

    sqlstate = "42601"
    http_status = 400
    ssh_exit = 126

    def __init__(
        self,
        message: str,
        position: int | None = None,
        detail: str = "",
        hint: str | None = None,
        sqlstate: str | None = None,
    ) -> None:
        super().__init__(message)
        self.position = position
        self.detail = detail
        self.hint = hint  # the grammar's HINT (grammarerrors.py)
        if sqlstate is not None:  # the grammar's own SQLSTATE for this message
            self.sqlstate = sqlstate


class RecordingFailed(HoopyError):
    """The recorder cannot write: fail closed, the command is refused."""

    sqlstate = "58030"
    http_status = 503
    ssh_exit = 126


class BackendUnavailable(HoopyError):
    sqlstate = "08006"
    http_status = 502
    ssh_exit = 255
    fatal = True


class ProtocolError(HoopyError):
    sqlstate = "08P01"
    http_status = 400
    fatal = True
