"""Checks: named observers that turn facts into outcomes (see `base.py`)."""
