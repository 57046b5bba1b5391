"""The policy engine: rule files -> one verdict per stage (see verdict.py for the contract)."""
