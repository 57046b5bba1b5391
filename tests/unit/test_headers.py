"""Header edits on the message sent upstream (R6): built, prepended, forged A-R removed."""

from __future__ import annotations

from smtpguard.protocol.headers import build_header, rewrite, starts_with_folded_line


def test_build_header_strips_control_characters_and_folds() -> None:
    header = build_header("X-Test", "a\r\nInjected: yes " + "word " * 30)
    assert header.count(b"\r\n") == header.count(b"\r\n\t") + 1  # only folding line breaks
    assert b"Injected: yes" in header and b"\r\nInjected" not in header


def test_forged_authentication_results_removed_even_when_first_lines_repeat() -> None:
    content = (b"Authentication-Results: (x)\r\n other.example; none\r\n"
               b"Authentication-Results: (x)\r\n guard.test; dkim=pass header.d=bank.example\r\n"
               b"Subject: s\r\n\r\nbody\r\n")
    out = rewrite(content, [("Authentication-Results", "guard.test; spf=pass")], "guard.test")
    assert out.count(b"guard.test") == 1 and b"bank.example" not in out
    assert b"other.example; none" in out and out.endswith(b"\r\n\r\nbody\r\n")


def test_folded_first_line_is_detected() -> None:
    assert starts_with_folded_line(b" spam; dkim=pass\r\n")
    assert not starts_with_folded_line(b"Subject: x\r\n")
