"""`acl_rcpt`: static lists at the RCPT stage, matching the client, HELO, sender and recipient.

Outcomes: `acl_rcpt.<list>.match` for every named list that matches. Lists, syntax and
invariants: `smtpguard.acls`.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.acls import ACLCheckBase
from smtpguard.stage import Scope, Stage


class RecipientACLCheck(ACLCheckBase):
    name: ClassVar[str] = "acl_rcpt"
    stage: ClassVar[Stage] = Stage.RCPT
    scope: ClassVar[Scope] = Scope.RECIPIENT
    FACTS: ClassVar[frozenset[str]] = frozenset({"client_ip", "client_name", "helo", "sender", "sender_domain",
                                                 "recipient", "recipient_domain"})


CHECK = RecipientACLCheck
