"""The ONE table of default replies per (stage, action), plus the reply-class rules.

Invariants (tests/unit/test_policy_defaults.py):
- every (stage, action) pair that can reply has exactly one entry, and every entry is a valid
  `Reply` whose class matches `REPLY_CLASS[action]`;
- `disconnect` is always 421 (RFC 5321 §3.8: the server closes after it);
- the disconnect stage has no entries: nothing can be said to a client that has gone.
"""

from __future__ import annotations

from smtpguard.reply import Reply
from smtpguard.stage import Stage

# which reply codes an action may carry: reject 5xx, tempfail 4xx, disconnect exactly 421
REPLY_CLASS: dict[str, tuple[int, int]] = {
    "reject": (500, 599),
    "tempfail": (400, 499),
    "disconnect": (421, 421),
}

# the reply sent when evaluation itself failed (a bug or an unexpected exception)
INTERNAL_ERROR = Reply(451, "4.3.0", "Temporary policy error, please try again later")

_DISCONNECT = Reply(421, "4.7.0", "Closing connection")

DEFAULT_REPLIES: dict[tuple[Stage, str], Reply] = {
    (Stage.CONNECT, "reject"): Reply(554, "5.7.1", "Access denied"),
    (Stage.CONNECT, "tempfail"): Reply(421, "4.7.0", "Service temporarily unavailable, try again later"),
    (Stage.CONNECT, "disconnect"): _DISCONNECT,
    (Stage.HELO, "reject"): Reply(550, "5.7.1", "HELO/EHLO rejected"),
    (Stage.HELO, "tempfail"): Reply(450, "4.7.1", "HELO/EHLO temporarily rejected, try again later"),
    (Stage.HELO, "disconnect"): _DISCONNECT,
    (Stage.MAIL, "reject"): Reply(550, "5.7.1", "Sender rejected"),
    (Stage.MAIL, "tempfail"): Reply(451, "4.7.1", "Sender temporarily rejected, try again later"),
    (Stage.MAIL, "disconnect"): _DISCONNECT,
    (Stage.RCPT, "reject"): Reply(550, "5.7.1", "Recipient rejected"),
    (Stage.RCPT, "tempfail"): Reply(451, "4.7.1", "Recipient temporarily rejected, try again later"),
    (Stage.RCPT, "disconnect"): _DISCONNECT,
    (Stage.DATA, "reject"): Reply(550, "5.7.1", "Message rejected"),
    (Stage.DATA, "tempfail"): Reply(451, "4.7.1", "Message temporarily rejected, try again later"),
    (Stage.DATA, "disconnect"): _DISCONNECT,
    (Stage.COMMAND, "reject"): Reply(502, "5.5.1", "Command not permitted"),
    (Stage.COMMAND, "tempfail"): Reply(450, "4.7.1", "Command temporarily refused"),
    (Stage.COMMAND, "disconnect"): _DISCONNECT,
}

REPLYING_STAGES = frozenset(s for s, _ in DEFAULT_REPLIES)


def default_reply(stage: Stage, action: str) -> Reply:
    """The table entry; `KeyError` for a pair that cannot reply (the loader forbids those)."""
    return DEFAULT_REPLIES[(stage, action)]


def reply_class_problem(action: str, code: int) -> str | None:
    """Why `code` does not fit `action`, or None when it does."""
    low, high = REPLY_CLASS[action]
    if low <= code <= high:
        return None
    need = "421" if low == high else f"a {low // 100}xx code"
    return f"action {action} needs {need}, not {code}"
