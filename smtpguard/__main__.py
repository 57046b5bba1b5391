"""`python -m smtpguard` is the same program as the `smtpguard` command."""

from __future__ import annotations

from smtpguard.cli import main

raise SystemExit(main())
