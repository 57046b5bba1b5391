"""`acl_mail`: static lists at the MAIL stage, matching the client, HELO name and sender.

Outcomes: `acl_mail.<list>.match` for every named list that matches. Lists, syntax and
invariants: `smtpguard.acls`.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.acls import ACLCheckBase
from smtpguard.stage import Scope, Stage


class MailACLCheck(ACLCheckBase):
    name: ClassVar[str] = "acl_mail"
    stage: ClassVar[Stage] = Stage.MAIL
    scope: ClassVar[Scope] = Scope.TRANSACTION
    FACTS: ClassVar[frozenset[str]] = frozenset({"client_ip", "client_name", "helo", "sender", "sender_domain"})


CHECK = MailACLCheck
