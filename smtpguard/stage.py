"""SMTP stages at which policy is evaluated, in session order."""

from __future__ import annotations

import enum


class Stage(enum.Enum):
    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # end of message: headers and body are known
    COMMAND = "command"  # VRFY, EXPN, HELP, ETRN, unknown verbs
    DISCONNECT = "disconnect"  # bookkeeping only; replies are impossible

    @property
    def order(self) -> int:
        return _ORDER[self]

    def facts_available_at(self, other: Stage) -> bool:
        """True when facts gathered at `self` are known when evaluating `other`."""
        if self is Stage.COMMAND or other is Stage.COMMAND:
            return self in (Stage.CONNECT, Stage.HELO, Stage.COMMAND)
        return self.order <= other.order


TRANSACTION_STAGES = frozenset({Stage.MAIL, Stage.RCPT, Stage.DATA})  # inside MAIL ... end of data

_ORDER = {
    Stage.CONNECT: 0,
    Stage.HELO: 1,
    Stage.COMMAND: 1,
    Stage.MAIL: 2,
    Stage.RCPT: 3,
    Stage.DATA: 4,
    Stage.DISCONNECT: 5,
}


class Scope(enum.Enum):
    """How often a check may run: once per connection, transaction or recipient."""

    CONNECTION = "connection"
    TRANSACTION = "transaction"
    RECIPIENT = "recipient"
