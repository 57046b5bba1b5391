"""`acl`: static lists at the CONNECT stage, matching the client address and verified rDNS name.

Outcomes: `acl.<list>.match` for every named list that matches. Lists, syntax and
invariants: `smtpguard.acls`.
"""

from __future__ import annotations

from typing import ClassVar

from smtpguard.acls import ACLCheckBase
from smtpguard.stage import Scope, Stage


class ConnectACLCheck(ACLCheckBase):
    name: ClassVar[str] = "acl"
    stage: ClassVar[Stage] = Stage.CONNECT
    scope: ClassVar[Scope] = Scope.CONNECTION
    FACTS: ClassVar[frozenset[str]] = frozenset({"client_ip", "client_name"})


CHECK = ConnectACLCheck
